"""On PostgreSQL every store call leaves the event loop: each part of the SQL store with
coroutines is offloaded, so a hung database holds a thread, never the loop (a part left out ran
its queries on the loop: a finished task's egress read froze a node behind a partition)."""

from __future__ import annotations

import inspect
from pathlib import Path

from claude_hooks.store.offload import PARTS
from claude_hooks.store.sql import SqlStore


async def test_every_part_with_store_calls_is_offloaded(tmp_path: Path) -> None:
    store = await SqlStore.open(f"sqlite:///{tmp_path}/parts.db")
    try:
        parts = {
            name
            for name, part in vars(store).items()
            if any(inspect.iscoroutinefunction(member) for _, member in inspect.getmembers(part))
        }
    finally:
        await store.close()
    assert parts, "the store has parts with store calls"
    assert parts == set(PARTS), parts ^ set(PARTS)
