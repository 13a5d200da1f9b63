"""Group commit: deliveries applied together in one transaction; a failing one alone.

PostgreSQL only: SQLite applies each delivery inline, on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence

import pytest

from claude_hooks.core.decision import Reset
from claude_hooks.core.domain import Task
from claude_hooks.errors import NoInstanceError
from claude_hooks.store.base import Dispatched, Placement, Settle, TaskFilter
from claude_hooks.store.group_commit import DispatchCall, GroupCommit
from claude_hooks.store.intake import DeliveryRecord
from claude_hooks.store.sql import SqlStore
from tests.store.test_store_contract import NOW, agents, delivery, new_task
from tests.support import wait_until


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(pg_url)
    yield opened
    await opened.close()


def recording(delivery_id: str, fail: bool = False) -> Settle:
    """Record `delivery_id` with the tasks placed or merged; `fail`: raise instead."""

    def settle(
        placements: list[Placement],
        merged: list[Task],
        _cancelled: list[str],
        _failure: NoInstanceError | None,
    ) -> tuple[DeliveryRecord, None, list[Reset]]:
        if fail:
            raise RuntimeError("a fault of ours")
        record = delivery(delivery_id, NOW)
        record.task_ids = [p.task.id for p in placements] + [t.id for t in merged]
        return record, None, []

    return settle


async def test_a_batch_keeps_each_delivery_apart(store: SqlStore) -> None:
    """A duplicate and a failed delivery leave nothing; the others commit together, and a
    later one sees what an earlier one of the same batch wrote (it merges into its task)."""
    await agents(store, "dev-a", "dev-b")
    first = await store.dispatch_all([new_task(9)], recording("d-old"))
    assert first.recorded
    twin = new_task(1)
    answers = store.dispatch_batch(
        [
            DispatchCall([new_task(1)], recording("d-1")),
            DispatchCall([new_task(2)], recording("d-old")),  # recorded before: a duplicate
            DispatchCall([new_task(3)], recording("d-3", fail=True)),
            DispatchCall([twin], recording("d-4")),
            DispatchCall([new_task(5)], recording("d-5")),
        ]
    )
    placed, duplicate, failed, merged, last = answers
    assert isinstance(placed, Dispatched) and placed.recorded
    assert isinstance(duplicate, Dispatched) and not duplicate.recorded
    assert isinstance(failed, RuntimeError)
    assert isinstance(merged, Dispatched) and merged.recorded and merged.placements == []
    assert [t.id for t in merged.merged] == [placed.placements[0].task.id]
    assert isinstance(last, Dispatched) and last.recorded
    assert [p.task.seq > 0 for p in placed.placements + last.placements] == [True, True]
    assert await store.intake.get_delivery("d-3") is None
    stored = await store.intake.get_delivery("d-4")
    assert stored is not None and stored.task_ids == [placed.placements[0].task.id]
    tasks = await store.list_tasks(TaskFilter(), 10, 0)
    assert sorted(t.number for t in tasks) == [1, 5, 9]
    # Round robin over the batch as over single deliveries: 9 on a, 1 on b, 5 on a.
    assert {t.number: t.agent for t in tasks} == {9: "dev-a", 1: "dev-b", 5: "dev-a"}


async def test_deliveries_at_once_are_all_committed_in_order(store: SqlStore) -> None:
    await agents(store, "dev-a", "dev-b")
    done = await asyncio.gather(
        *(store.dispatch_all([new_task(n)], recording(f"d-{n}")) for n in range(1, 41))
    )
    assert all(d.recorded and len(d.placements) == 1 for d in done)
    tasks = await store.list_tasks(TaskFilter(), 100, 0)
    by_agent = [t.agent for t in sorted(tasks, key=lambda t: t.seq)]
    assert by_agent.count("dev-a") == by_agent.count("dev-b") == 20
    assert len({t.seq for t in tasks}) == 40


async def test_calls_waiting_while_a_batch_runs_form_the_next_batch() -> None:
    release = threading.Event()
    batches: list[int] = []

    def apply(calls: Sequence[DispatchCall]) -> list[Dispatched | Exception]:
        batches.append(len(calls))
        release.wait(5)
        return [Dispatched([], None, recorded=True) for _ in calls]

    group = GroupCommit(apply)
    try:
        first = asyncio.ensure_future(group.submit(DispatchCall([], None)))
        await wait_until(lambda: batches == [1])
        rest = [asyncio.ensure_future(group.submit(DispatchCall([], None))) for _ in range(5)]
        await asyncio.sleep(0.01)
        release.set()
        assert all(d.recorded for d in await asyncio.gather(first, *rest))
        assert batches == [1, 5]
    finally:
        group.stop()


async def test_a_failed_transaction_fails_every_waiter_of_its_batch() -> None:
    def apply(_calls: Sequence[DispatchCall]) -> list[Dispatched | Exception]:
        raise OSError("the connection broke")

    group = GroupCommit(apply)
    try:
        with pytest.raises(OSError, match="broke"):
            await group.submit(DispatchCall([], None))
    finally:
        group.stop()
