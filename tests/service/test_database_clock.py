"""Leases counted on the database's clock: two nodes whose own clocks are ten minutes apart
share one PostgreSQL database, and neither takes the other for dead."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from claude_hooks.service.runtime import Service
from claude_hooks.store.sql import SqlStore
from tests.support import GateRunner, make_config, wait_until

SKEW = 600.0


def _service(tmp_path: Path, pg_url: str, name: str, skew: float, store: SqlStore) -> Service:
    config = make_config(
        tmp_path / name,
        agents=[{"name": "dev-a", "type": "dev"}, {"name": "dev-b", "type": "dev"}],
        server={"database_url": pg_url, "node": name, "lease_seconds": 1.5},
    )
    return Service(
        config, store, clock=lambda: time.time() + skew, runner_for=lambda _t: GateRunner()
    )


async def test_nodes_with_skewed_clocks_keep_their_leases_on_the_databases_clock(
    tmp_path: Path, pg_url: str
) -> None:
    ahead = _service(tmp_path, pg_url, "ahead", SKEW, await SqlStore.open(pg_url, node="ahead"))
    behind = _service(tmp_path, pg_url, "behind", -SKEW, await SqlStore.open(pg_url, node="behind"))
    await ahead.start()
    await behind.start()
    try:
        # Several leases long: a node counting on its own clock would declare the other dead
        # (ahead sees behind's heartbeats 20 minutes old) or never expire (behind).
        await wait_until(lambda: ahead.pool.workers and behind.pool.workers, timeout=5)
        started = time.monotonic()
        while time.monotonic() - started < 4.5:
            views = await ahead.store.nodes.list_nodes(ahead.node.now())
            assert {v.name: v.state for v in views} == {"ahead": "live", "behind": "live"}
            for view in views:
                assert abs(view.heartbeat_at - time.time()) < 5  # the database's clock
            await asyncio.sleep(0.1)  # sampling the states over several leases
    finally:
        await behind.stop()
        await ahead.stop()
