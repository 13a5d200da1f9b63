"""Two services on one PostgreSQL database, in one process: instances spread over the nodes,
move when a node stops or joins, and one node leads."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from claude_hooks.core.domain import TaskState
from claude_hooks.service.runtime import Service
from claude_hooks.store.schema import nodes
from claude_hooks.store.sql import SqlStore
from tests.service.test_pool import request
from tests.support import GateRunner, make_config, wait_until

AGENTS = [{"name": f"dev-{c}", "type": "dev"} for c in "abcd"]


@asynccontextmanager
async def running(
    tmp_path: Path, pg_url: str, name: str, gate: GateRunner, capacity: int = 0
) -> AsyncIterator[Service]:
    config = make_config(
        tmp_path / name,
        agents=AGENTS,
        server={"database_url": pg_url, "node": name, "lease_seconds": 1.5, "capacity": capacity},
    )
    service = await Service.open(config, lambda _type: gate)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def _finished(service: Service, task_id: str) -> bool:
    task = await service.store.get_task(task_id)
    return task is not None and task.state is TaskState.SUCCEEDED


async def test_instances_spread_over_nodes_and_move_when_one_stops(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="claude_hooks")
    gate_one, gate_two = GateRunner(), GateRunner()
    async with running(tmp_path, pg_url, "one", gate_one) as one:
        assert set(one.pool.workers) == {"dev-a", "dev-b", "dev-c", "dev-d"}
        assert one.node.leading
        async with running(tmp_path, pg_url, "two", gate_two) as two:
            assert not two.node.leading
            await wait_until(lambda: len(two.pool.workers) == 2, timeout=5)
            await wait_until(lambda: len(one.pool.workers) == 2, timeout=5)
            assert set(one.pool.workers).isdisjoint(two.pool.workers)
            # Node one says what it let go and to whom each went, not that it was removed.
            for name in two.pool.workers:
                assert f"node one lets {name} go" in caplog.text
                assert f"agent {name} let go: it goes to the next node with room" in caplog.text
            assert "removed" not in caplog.text
            views = {v.name: v for v in await one.store.nodes.list_nodes(one.clock())}
            assert set(views["two"].instances) == set(two.pool.workers)
            assert views["one"].state == views["two"].state == "live"
            # Four tasks placed by node one, one an instance: each starts on the node holding
            # its instance (node two is woken through the database).
            tasks = [await one.pool.dispatch("dev", request(n)) for n in range(1, 5)]
            assert {t.agent for t in tasks} == {"dev-a", "dev-b", "dev-c", "dev-d"}
            mine = {t.id for t in tasks if t.agent in one.pool.workers}
            theirs = {t.id for t in tasks} - mine
            await wait_until(lambda: set(gate_one.started) == mine)
            await wait_until(lambda: set(gate_two.started) == theirs)
        # Node two stopped cleanly, handing its running tasks back to the heads of their queues:
        # node one adopts its instances with their queues within a beat or two, and runs them.
        await wait_until(lambda: len(one.pool.workers) == 4, timeout=5)
        assert "node two stops and lets go of dev-" in caplog.text
        views = {v.name: v for v in await one.store.nodes.list_nodes(one.clock())}
        assert views["two"].state == "stopped" and len(views["one"].instances) == 4
        await wait_until(lambda: set(gate_one.started) == {t.id for t in tasks}, timeout=5)
        gate_one.release_all()
        for task in tasks:
            await wait_until(lambda t=task: _finished(one, t.id))


async def test_capacity_leaves_an_instance_waiting_with_its_queue(
    tmp_path: Path, pg_url: str
) -> None:
    gate = GateRunner()
    async with running(tmp_path, pg_url, "one", gate, capacity=3) as one:
        assert len(one.pool.workers) == 3
        nodes = await one.store.instances()
        waiting = [i.name for i in nodes if i.node is None]
        assert len(waiting) == 1


async def test_a_node_declared_dead_stops_its_agents_and_loses_no_write(
    tmp_path: Path, pg_url: str
) -> None:
    """Another node rescued this one's task while it still ran (a pause longer than the
    lease): at its next beat it stops the agent, its late requeue is refused, and it joins
    again and runs the task, the lost run counted."""
    gate = GateRunner()
    async with running(tmp_path, pg_url, "one", gate) as one:
        task = await one.pool.dispatch("dev", request(1))
        await wait_until(lambda: gate.started == [task.id])
        other = await SqlStore.open(pg_url)
        try:
            with other.engine.begin() as conn:
                conn.execute(nodes.update().values(heartbeat_at=one.clock() - 60))
            rescued = await other.nodes.rescue(3, one.clock())
        finally:
            await other.close()
        assert [r.id for r in rescued] == [task.id]
        await wait_until(lambda: gate.cancelled == [task.id], timeout=5)
        await wait_until(lambda: gate.started == [task.id, task.id], timeout=5)
        again = await one.store.get_task(task.id)
        assert again is not None and again.state is TaskState.RUNNING and again.attempts == 2
        gate.release_all()
        await wait_until(lambda: _finished(one, task.id))


async def test_one_sqlite_host_does_not_claim_to_lead_a_cluster(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="claude_hooks")
    config = make_config(tmp_path, agents=AGENTS)
    service = await Service.open(config, lambda _type: GateRunner())
    await service.start()
    try:
        assert service.node.leading
    finally:
        await service.stop()
    assert "leads the cluster's duties" not in caplog.text
