"""Group commit: deliveries applied together in one transaction; a failing one alone.

PostgreSQL only: SQLite applies each delivery inline, on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Sequence

import pytest
import sqlalchemy as sa

from claude_hooks.core.decision import Decision, Reset
from claude_hooks.core.domain import Task, TaskKind, TaskState
from claude_hooks.core.outcomes import Intervention, OutcomeFact, SessionSeen
from claude_hooks.errors import NoInstanceError
from claude_hooks.store import batch, wakeups
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


def _answer(dispatched: Dispatched) -> tuple[object, ...]:
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
    assert [_answer(d) for d in together] == [_answer(d) for d in alone]
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


# What a run leaves in the database, table by table (the columns a delivery writes).
_STATE = {
    "tasks": "SELECT id, type, agent, kind, session_key, number, payload::text, state, seq,"
    " attempts, enqueued_at, delivery_id FROM tasks ORDER BY seq",
    "deliveries": "SELECT id, flavor, event, event_type, action, repo, number, sender,"
    " received_at, outcome, reason, task_ids::text, body, replay_of, pruned_at"
    " FROM deliveries ORDER BY id",
    "assignments": "SELECT * FROM assignments ORDER BY repo, number, type",
    "issue_guards": "SELECT * FROM issue_guards ORDER BY repo, number",
    "outcome_sessions": "SELECT * FROM outcome_sessions ORDER BY session_key",
    "queue_lengths": "SELECT * FROM queue_lengths ORDER BY agent",
    "cursors": "SELECT * FROM cursors ORDER BY type",
}


def _state(conn: sa.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {name: [tuple(r) for r in conn.execute(sa.text(q))] for name, q in _STATE.items()}


def _rich(
    delivery_id: str,
    assigned: tuple[str, int, frozenset[str]] | None = None,
    resets: Sequence[Reset] = (),
) -> Settle:
    """Record `delivery_id` with every field of its record set, its assignment and resets."""

    def settle(
        placements: list[Placement],
        merged: list[Task],
        _cancelled: list[str],
        failure: NoInstanceError | None,
    ) -> tuple[DeliveryRecord, tuple[str, int, frozenset[str]] | None, list[Reset]]:
        number = int(delivery_id.rsplit("-", 1)[1])
        record = DeliveryRecord(
            id=delivery_id,
            flavor="forgejo",
            event="issues",
            event_type=f"issues-{number}",
            # One as an int (a time may come as one): the arrays of floats take it too.
            received_at=NOW + number / 10 if number != 5 else int(NOW) + 5,
            body=f'{{"n": {number}}}',
            action="assigned" if number % 2 else None,
            repo="acme/widget",
            number=number,
            sender=f"user-{number}",
            outcome="queued" if failure is None else "failed",
            reason=str(failure) if failure is not None else None,
            task_ids=[p.task.id for p in placements] + [t.id for t in merged],
            replay_of="d-0" if number == 3 else None,
        )
        return record, assigned, list(resets)

    return settle


def _seen(key: str, at: float, assigned: bool, variant: str) -> SessionSeen:
    return SessionSeen(key, "dev", "acme/widget", 1, at, assigned, variant, "model-x")


async def test_a_run_writes_what_one_at_a_time_writes(store: SqlStore) -> None:
    """Every row a run writes in one statement per kind (tasks, merges, records,
    assignments, resets, outcome sessions, cursors) is the row one at a time writes: merges
    into a queued twin and into the run's own task (twice into one: the last payload), an
    issue assigned and reset twice in the run (the last state), a session seen three times
    with an intervention between (the first sighting's fields, `assigned_at` filled in),
    several types, and a type with no instance stopping its delivery's placing."""
    await agents(store, "dev-a", "dev-b", "dev-c")
    await agents(store, "rev-a", agent_type="reviewer")
    assert (await store.dispatch_all([new_task(7, "reviewer")], None)).placements
    await store.set_agent_enabled("rev-a", False)
    await agents(store, "ops-a", "ops-b", agent_type="ops")
    assert (await store.dispatch_all([new_task(7, "ops")], None)).placements
    queued_twin = new_task(9)
    assert (await store.dispatch_all([queued_twin], recording("d-90"))).recorded
    key = queued_twin.session_key

    def merging(number: int, version: int) -> Task:
        task = new_task(number)
        return dataclasses.replace(task, payload={"number": number, "version": version})

    def call(
        tasks: list[Task], settle: Settle, *outcomes: OutcomeFact, separate: bool = False
    ) -> DispatchCall:
        decision = Decision(outcomes=list(outcomes))
        return DispatchCall(
            tasks, settle, decision, separate=frozenset(t.id for t in tasks if separate)
        )

    issue = ("acme/widget", 1)
    calls = [
        call(
            [new_task(1), new_task(2, "ops")],
            _rich("d-1", (*issue, frozenset({"dev"})), [(*issue, NOW + 1)]),
            _seen(key, NOW + 1, False, "v1"),
        ),
        call(
            [merging(9, 2), new_task(3, "ops")],
            _rich("d-2", (*issue, frozenset({"dev", "ops"})), [(*issue, NOW + 2)]),
            _seen(key, NOW + 2, False, "v2"),
            Intervention("commands", "acme/widget", 1, key),
        ),
        call(
            [merging(1, 3), merging(9, 3), new_task(4)],
            _rich("d-3", ("acme/widget", 3, frozenset()), [("acme/widget", 3, NOW + 3)]),
            _seen(key, NOW + 3, True, "v3"),
            _seen("dev:acme/widget#4", NOW + 3, True, "v1"),
        ),
        call(
            [new_task(5), new_task(8, "reviewer"), new_task(6)],
            _rich("d-5"),
            _seen(key, NOW + 5, True, "v5"),
        ),
        call([new_task(1)], _rich("d-6", (*issue, frozenset({"reviewer"}))), separate=True),
        call([], _rich("d-7", None, [(*issue, NOW + 7)])),
    ]
    with store.engine.connect() as conn:
        transaction = conn.begin()
        try:
            together = batch.apply(conn, calls)
            written = _state(conn)
        finally:
            transaction.rollback()
    alone = [
        await store.dispatch_all(c.tasks, c.settle, c.decision, separate=c.separate) for c in calls
    ]
    with store.engine.connect() as conn:
        assert written == _state(conn)
    assert [_answer(d) for d in together] == [_answer(d) for d in alone]
    # What the comparison rests on: each kind of row is there, and more than one of it.
    assert len(written["tasks"]) == 9 and len(written["deliveries"]) == 7
    payloads = {row[0]: row[6] for row in written["tasks"]}
    assert payloads[queued_twin.id] == '{"number": 9, "version": 3}'
    assert len(alone[3].placements) == 1  # #5 placed, then the reviewer stops it
    assert isinstance(alone[3].failure, NoInstanceError)
    assert written["assignments"] == [("acme/widget", 1, "reviewer")]
    assert [row[:3] for row in written["issue_guards"]] == [
        ("acme/widget", 1, NOW + 7),
        ("acme/widget", 3, NOW + 3),
    ]
    session = next(r for r in written["outcome_sessions"] if r[0] == key)
    assert (session[4], session[6], session[7], session[8]) == ("v1", NOW + 1, NOW + 3, 1)


async def test_a_delivery_twice_in_one_run_is_recorded_once(store: SqlStore) -> None:
    """Two deliveries of one id in a batch: the run's one insert of the records fails, and
    one at a time the first is recorded with its task and the second left out."""
    await agents(store, "dev-a")
    assert (await store.dispatch_all([new_task(9)], None)).placements
    calls = [
        DispatchCall([new_task(1)], recording("d-1")),
        DispatchCall([new_task(2)], recording("d-1")),
        DispatchCall([new_task(3)], recording("d-3")),
    ]
    with pytest.raises(sa.exc.IntegrityError), store.engine.connect() as conn, conn.begin():
        batch.apply(conn, calls)
    first, again, third = store.dispatch_batch(calls)
    assert isinstance(first, Dispatched) and first.recorded and len(first.placements) == 1
    assert isinstance(again, Dispatched) and not again.recorded
    assert isinstance(third, Dispatched) and third.recorded
    tasks = await store.list_tasks(TaskFilter(), 10, 0)
    assert sorted(t.number for t in tasks) == [1, 3, 9]


async def test_a_runs_wake_ups_are_sent_in_one_statement_in_order(store: SqlStore) -> None:
    with store.engine.connect() as listener:
        listener.execute(sa.text(f"LISTEN {wakeups.CHANNEL}"))
        listener.commit()
        with store.engine.begin() as conn:
            wakeups.notify_all(
                conn, [wakeups.Wake(wakeups.TASK, "dev-b"), wakeups.Wake(wakeups.BUSY, "dev")]
            )
        raw = listener.connection.dbapi_connection
        assert raw is not None
        heard = [n.payload for n in raw.notifies(timeout=2, stop_after=2)]  # type: ignore[attr-defined]
    assert heard == ["task:dev-b", "busy:dev"]
