"""Paused sessions and refusals of forge commands, over SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from claude_hooks.core.domain import Task, TaskKind, TaskState, new_task_id, session_key
from claude_hooks.store.decisions import Cause
from claude_hooks.store.schema import queue_lengths
from claude_hooks.store.sql import SqlStore

NOW = 1_800_000_000.0
KEY = session_key("dev", "acme/widget", 17)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(database_url)
    await opened.seed_agents([("dev-a", "dev")], NOW)
    yield opened
    await opened.close()


def task(number: int) -> Task:
    return Task(
        id=new_task_id(),
        type="dev",
        agent="",
        kind=TaskKind.WORK_ISSUE,
        session_key=session_key("dev", "acme/widget", number),
        repo="acme/widget",
        number=number,
        state=TaskState.QUEUED,
        seq=0,
        enqueued_at=NOW,
    )


def queued_count(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(sa.select(queue_lengths.c.queued)) or 0)


async def test_a_paused_session_holds_its_queued_and_new_tasks_until_resumed(
    store: SqlStore,
) -> None:
    before = await store.dispatch(task(17))
    other = await store.dispatch(task(30))
    assert await store.commands.pause(KEY, "alice", NOW) == [before.task.id]
    assert await store.commands.pause(KEY, "bob", NOW) is None  # once is enough
    after = await store.dispatch(task(17))
    assert after.task.state is TaskState.HELD
    for held in (before.task.id, after.task.id):
        found = await store.get_task(held)
        assert found is not None and found.state is TaskState.HELD
    # Held tasks are out of the queue: the instance's queue and its count hold the other only.
    [instance] = await store.instances()
    assert instance.queue == (other.task.id,)
    assert queued_count(store) == 1
    [paused] = await store.commands.paused()
    assert (paused.session_key, paused.paused_by, paused.paused_at) == (KEY, "alice", NOW)

    assert await store.commands.resume(KEY) == ["dev-a"]
    assert await store.commands.resume(KEY) is None
    [instance] = await store.instances()
    # Back in their places: the first one is ahead of the other session's task again.
    assert instance.queue == (before.task.id, other.task.id, after.task.id)
    assert queued_count(store) == 3
    assert await store.commands.paused() == []


async def test_a_held_task_can_be_cancelled(store: SqlStore) -> None:
    await store.commands.pause(KEY, "alice", NOW)
    held = await store.dispatch(task(17))
    written = await store.cancel_tasks([held.task.id], Cause("alice", None, NOW))
    assert written.cancelled == [held.task.id]
    found = await store.get_task(held.task.id)
    assert found is not None and found.state is TaskState.CANCELLED
    assert await store.intake.active_tasks([KEY]) == []


async def test_a_refusal_is_due_once_an_hour_per_sender_and_issue(store: SqlStore) -> None:
    due = store.commands.refusal_due
    assert await due("acme/widget", 17, "mallory", NOW, 3600)
    assert not await due("acme/widget", 17, "Mallory", NOW + 10, 3600)
    assert await due("acme/widget", 18, "mallory", NOW + 10, 3600)
    assert await due("acme/widget", 17, "eve", NOW + 10, 3600)
    assert await due("acme/widget", 17, "mallory", NOW + 3600, 3600)
    assert not await due("acme/widget", 17, "mallory", NOW + 3601, 3600)


async def test_a_steer_reaches_only_a_running_task_and_is_taken_once(store: SqlStore) -> None:
    payload = {"comment_body": "also X", "sender": "alice"}
    assert await store.steering.steer(KEY, "alice", "also X", 7, payload, NOW) is None
    placed = await store.dispatch(task(17))
    assert await store.steering.steer(KEY, "alice", "also X", 7, payload, NOW) is None  # queued
    store.node = None
    claim = await store.claim_next("dev-a", NOW)
    assert claim.task is not None and claim.task.id == placed.task.id
    assert await store.steering.steer(KEY, "alice", "also X", 7, payload, NOW + 1) == placed.task.id
    assert await store.steering.steer(KEY, "bob", "and Y", None, {}, NOW + 2) == placed.task.id
    first = await store.steering.take(placed.task.id, NOW + 3)
    assert [(s.sender, s.body, s.comment_id) for s in first] == [
        ("alice", "also X", 7),
        ("bob", "and Y", None),
    ]
    assert await store.steering.take(placed.task.id, NOW + 4) == []
    assert await store.steering.leftovers(placed.task.id) == []
    assert await store.steering.steer(KEY, "carol", "Z", 9, payload, NOW + 5) == placed.task.id
    [left] = await store.steering.leftovers(placed.task.id)
    assert left.payload == payload
    await store.steering.followed_up(left.id, NOW + 6)
    assert await store.steering.leftovers(placed.task.id) == []
    assert len(await store.steering.of_task(placed.task.id)) == 3


async def test_old_comment_state_goes_with_retention(store: SqlStore) -> None:
    await store.outbox.put_living("t-old", "dev", "acme/widget", 17, "v1", NOW, 10)
    [letter] = await store.outbox.waiting(10)
    await store.outbox.written(letter, 555, NOW, 10)
    await store.outbox.put_living("t-busy", "dev", "acme/widget", 18, "v1", NOW, 10)
    [busy] = await store.outbox.waiting(10)
    await store.outbox.written(busy, 556, NOW, 10)
    await store.outbox.put_living("t-busy", "dev", "acme/widget", 18, "v2", NOW + 1, 10)
    [edit] = await store.outbox.waiting(10)
    assert (edit.comment_id, edit.next_at, edit.body) == (556, NOW + 10, "v2")
    assert await store.commands.refusal_due("acme/widget", 17, "mallory", NOW, 3600)
    assert await store.retention.drop_comment_state(NOW + 100) == 2  # t-old and the refusal
    [kept] = await store.outbox.waiting(10)
    assert kept.comment_id == 556  # its letter still edits the comment it made
