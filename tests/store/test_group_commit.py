"""Group commit: deliveries applied together in one transaction; a failing one alone.

PostgreSQL only: SQLite applies each delivery inline, on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence

import pytest
import sqlalchemy as sa

from claude_hooks.core.decision import Reset
from claude_hooks.core.domain import Task, TaskKind, TaskState
from claude_hooks.errors import NoInstanceError
from claude_hooks.store import batch
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


def _seen(dispatched: Dispatched) -> tuple[object, ...]:
    """What a caller sees of `dispatched` (the failure by its message: errors compare by id)."""
    failure = str(dispatched.failure) if dispatched.failure is not None else None
    return dispatched.placements, dispatched.merged, failure, dispatched.recorded


def _together(store: SqlStore, calls: list[DispatchCall]) -> list[Dispatched]:
    """`calls` applied as one run (`batch.apply`), then rolled back."""
    with store.engine.connect() as conn:
        transaction = conn.begin()
        try:
            return batch.apply(conn, calls)
        finally:
            transaction.rollback()


async def test_a_run_applied_together_places_as_one_at_a_time(store: SqlStore) -> None:
    """Each choice of a run sees the run's earlier placements: the queues they lengthened, the
    sessions they hold, the tasks later requests merge into; a type without an instance stops
    its delivery's placing."""
    await agents(store, "dev-a", "dev-b", "dev-c")
    await agents(store, "rev-a", agent_type="reviewer")
    assert (await store.dispatch_all([new_task(7, "reviewer")], None)).placements
    await store.set_agent_enabled("rev-a", False)
    assert (await store.dispatch_all([new_task(9)], recording("d-9"))).recorded  # dev-a
    review_of_9 = new_task(9, kind=TaskKind.REVIEW_PR)  # to dev-a, which holds the session
    calls = [
        DispatchCall([new_task(1)], recording("d-1")),
        DispatchCall([review_of_9, new_task(2)], recording("d-2")),
        DispatchCall([new_task(1)], recording("d-3")),  # merged into the run's task for #1
        DispatchCall([new_task(3), new_task(3, kind=TaskKind.REVIEW_PR)], recording("d-4")),
        DispatchCall([new_task(4), new_task(8, "reviewer"), new_task(5)], recording("d-5")),
        DispatchCall([new_task(6)], recording("d-6")),
    ]
    together = _together(store, calls)
    alone = [await store.dispatch_all(call.tasks, call.settle) for call in calls]
    assert [_seen(d) for d in together] == [_seen(d) for d in alone]
    assert [[p.task.agent for p in d.placements] for d in alone] == [
        ["dev-b"],
        ["dev-a", "dev-c"],
        [],
        ["dev-b", "dev-b"],  # the review to the instance its work went to
        ["dev-c"],
        ["dev-a"],
    ]
    assert [t.id for t in alone[2].merged] == [alone[0].placements[0].task.id]
    assert isinstance(alone[4].failure, NoInstanceError) and alone[5].failure is None


async def test_what_a_run_cannot_settle_is_applied_one_at_a_time(store: SqlStore) -> None:
    """A task held (its session paused), a type's first placement and a duplicate id each
    stop a run; the batch is then applied one delivery at a time, each answered as alone."""
    await agents(store, "dev-a", "dev-b")
    await agents(store, "rev-a", agent_type="reviewer")
    assert (await store.dispatch_all([new_task(9)], recording("d-old"))).recorded
    paused = new_task(2)
    await store.commands.pause(paused.session_key, "alice", NOW)
    held = [DispatchCall([new_task(1)], recording("d-1")), DispatchCall([paused], recording("d-2"))]
    with pytest.raises(batch.Unsettled, match="paused"):
        _together(store, held)
    first = [DispatchCall([new_task(3, "reviewer")], None), DispatchCall([new_task(4)], None)]
    with pytest.raises(batch.Unsettled, match="no cursor row"):
        _together(store, first)
    again = [DispatchCall([new_task(5)], recording("d-5")), DispatchCall([], recording("d-old"))]
    with pytest.raises(sa.exc.IntegrityError):
        _together(store, again)
    answers = store.dispatch_batch(held + first + again)
    assert all(isinstance(a, Dispatched) for a in answers)
    states = [[p.task.state for p in a.placements] for a in answers if isinstance(a, Dispatched)]
    assert states == [[TaskState.QUEUED], [TaskState.HELD], [TaskState.QUEUED]] + [
        [TaskState.QUEUED]
    ] * 2 + [[]]
    assert [a.recorded for a in answers if isinstance(a, Dispatched)] == [True] * 5 + [False]


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
