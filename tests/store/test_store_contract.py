"""The store contract: every `Store` method, run over every backend (SQLite and PostgreSQL).

Each test gets an empty database of its backend (`database_url` in conftest.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from claude_hooks.core.decision import CiWatch, Decision, ForgeComment, PullLink, Reset, Trip
from claude_hooks.core.domain import Task, TaskKind, TaskState, new_task_id, session_key
from claude_hooks.core.elastic import Act, Scaling
from claude_hooks.errors import ConflictError, NoInstanceError, UnknownAgentError
from claude_hooks.store import spend
from claude_hooks.store.base import Outcome, Placement, Store, TaskFilter
from claude_hooks.store.decisions import Cause
from claude_hooks.store.intake import AheadView, DeliveryRecord
from claude_hooks.store.runs import RunOutcome, log_end
from claude_hooks.store.schema import queue_lengths, tasks
from claude_hooks.store.spend import BreakerState
from claude_hooks.store.sql import SqlStore

NOW = 1_800_000_000.0
CAUSE = Cause("a test", None, NOW)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(database_url)
    yield opened
    await opened.close()


def new_task(number: int, agent_type: str = "dev", kind: TaskKind = TaskKind.WORK_ISSUE) -> Task:
    return Task(
        id=new_task_id(),
        type=agent_type,
        agent="",
        kind=kind,
        session_key=session_key(agent_type, "acme/widget", number),
        repo="acme/widget",
        number=number,
        state=TaskState.QUEUED,
        seq=0,
        enqueued_at=NOW + number,
        payload={"number": number},
        delivery_id=f"d-{number}",
    )


async def agents(store: Store, *names: str, agent_type: str = "dev") -> None:
    await store.seed_agents([(name, agent_type) for name in names], NOW)


async def test_agents_are_added_listed_disabled_and_removed(store: Store) -> None:
    assert await store.seed_agents([("dev-b", "dev"), ("dev-a", "dev")], NOW) == ["dev-b", "dev-a"]
    assert await store.seed_agents([("dev-a", "dev"), ("rev-a", "reviewer")], NOW) == ["rev-a"]
    added = await store.add_agent("dev-c", "dev", NOW)
    assert added.name == "dev-c" and added.enabled
    with pytest.raises(ConflictError, match="already exists"):
        await store.add_agent("dev-c", "dev", NOW)
    assert [a.name for a in await store.list_agents()] == ["dev-a", "dev-b", "dev-c", "rev-a"]
    await store.set_agent_enabled("dev-b", False)
    found = await store.get_agent("dev-b")
    assert found is not None and not found.enabled and found.type == "dev"
    await store.remove_agent("dev-c")
    assert await store.get_agent("dev-c") is None
    with pytest.raises(UnknownAgentError):
        await store.remove_agent("dev-c")
    with pytest.raises(UnknownAgentError):
        await store.set_agent_enabled("dev-zulu", True)


async def test_dispatch_follows_the_rule_and_moves_the_cursor(store: Store) -> None:
    with pytest.raises(NoInstanceError, match="'dev'"):
        await store.dispatch(new_task(1))
    await agents(store, "dev-b", "dev-a", "dev-c")
    placed = [await store.dispatch(new_task(n)) for n in range(1, 5)]
    # Idle first, round-robin from the cursor; then the shortest queue from the cursor.
    assert [p.task.agent for p in placed] == ["dev-a", "dev-b", "dev-c", "dev-a"]
    assert [p.busy for p in placed] == [False, False, False, True]
    assert [p.position for p in placed] == [1, 1, 1, 2]
    assert await store.load_cursors() == {"dev": 1}
    # The instance holding a session key gets its next task, and the cursor stays.
    follow_up = await store.dispatch(new_task(2, kind=TaskKind.FIX_CI))
    assert follow_up.task.agent == "dev-b"
    assert await store.load_cursors() == {"dev": 1}
    stored = await store.get_task(follow_up.task.id)
    assert stored is not None and stored.agent == "dev-b" and stored.seq == follow_up.task.seq
    assert stored.payload == {"number": 2} and stored.state is TaskState.QUEUED


async def test_claim_takes_the_head_once_and_respects_session_keys(store: Store) -> None:
    await agents(store, "dev-a", "dev-b")
    first = (await store.dispatch(new_task(1))).task
    second = (await store.dispatch(new_task(2))).task
    third = (await store.dispatch(new_task(1, kind=TaskKind.FIX_CI))).task  # holder: dev-a
    assert third.agent == "dev-a"
    claim = await store.claim_next("dev-a", NOW)
    assert claim.task is not None and claim.task.id == first.id
    assert claim.task.state is TaskState.RUNNING and claim.task.attempts == 1
    # The instance runs one task at a time: the head is taken only when it is queued.
    again = await store.claim_next("dev-a", NOW)
    assert again.task is None and again.blocked  # issue 1 still runs
    assert (await store.claim_next("dev-b", NOW)).task is not None
    empty = await store.claim_next("dev-b", NOW)
    assert empty.task is None and not empty.blocked
    assert await store.finish_task(first.id, Outcome(TaskState.SUCCEEDED, exit_code=0), NOW)
    assert not await store.finish_task(first.id, Outcome(TaskState.FAILED), NOW)
    follow = await store.claim_next("dev-a", NOW + 1)
    assert follow.task is not None and follow.task.id == third.id
    done = await store.get_task(first.id)
    assert done is not None and done.state is TaskState.SUCCEEDED and done.exit_code == 0
    assert second.agent == "dev-b"


async def test_a_claim_for_a_named_head_starts_only_that_task(store: Store) -> None:
    """The worker's policy looked at one task; if another is the head by the claim (the
    looked-at one cancelled, or none looked at), nothing starts: no task runs unchecked."""
    await agents(store, "dev-a")
    first = (await store.dispatch(new_task(1))).task
    second = (await store.dispatch(new_task(2))).task
    other = await store.claim_next("dev-a", NOW, head=second.id)
    assert other.task is None and other.blocked  # the head is the first, not the one named
    cause = Cause("a test", None, NOW)
    assert (await store.cancel_tasks([first.id], cause)).cancelled
    stale = await store.claim_next("dev-a", NOW, head=first.id)
    assert stale.task is None and stale.blocked
    assert (await store.get_task(second.id)).state is TaskState.QUEUED  # type: ignore[union-attr]
    named = await store.claim_next("dev-a", NOW, head=second.id)
    assert named.task is not None and named.task.id == second.id
    assert (await store.claim_next("dev-a", NOW, head=second.id)).task is None


async def test_a_disabled_instance_claims_nothing_and_its_tasks_move(store: Store) -> None:
    await agents(store, "dev-a", "dev-b")
    running = (await store.dispatch(new_task(1))).task  # dev-a
    await store.claim_next("dev-a", NOW)
    await store.dispatch(new_task(2))  # dev-b, idle
    await store.claim_next("dev-b", NOW)
    queued = (await store.dispatch(new_task(3))).task
    assert queued.agent == "dev-a"
    await store.set_agent_enabled("dev-a", False)
    assert (await store.claim_next("dev-a", NOW)).task is None
    orphans = await store.orphaned_tasks()
    assert [(o.id, o.agent, o.type) for o in orphans] == [(queued.id, "dev-a", "dev")]
    moved = await store.reassign_task(queued.id)
    assert moved is not None and moved.agent == "dev-b" and moved.seq > queued.seq
    assert await store.orphaned_tasks() == []
    assert await store.reassign_task(running.id) is None  # running: not moved
    await store.set_agent_enabled("dev-b", False)
    with pytest.raises(NoInstanceError):
        await store.reassign_task(queued.id)


async def test_cancel_fail_and_requeue(store: Store) -> None:
    await agents(store, "dev-a")
    ids = [(await store.dispatch(new_task(n))).task.id for n in range(1, 5)]
    assert (await store.cancel_tasks([ids[3]], CAUSE)).cancelled == [ids[3]]
    assert (await store.cancel_tasks([ids[3]], CAUSE)).cancelled == []
    assert await store.fail_queued(ids[2], "no instance left", NOW)
    await store.claim_next("dev-a", NOW)
    await store.set_process(ids[0], 4242, 99)
    running = await store.get_task(ids[0])
    assert running is not None and running.pid == 4242 and running.pid_start == 99
    # Stopped on purpose: back to the head, the run does not count.
    assert await store.requeue_interrupted(ids[0], NOW, "a stop")
    back = await store.get_task(ids[0])
    assert back is not None and back.state is TaskState.QUEUED and back.attempts == 0
    assert back.pid is None
    assert await store.queue_positions(ids) == {ids[0]: 1, ids[1]: 2}
    await store.claim_next("dev-a", NOW)
    assert (await store.cancel_tasks([ids[0]], CAUSE)).stopping == [ids[0]]
    assert await store.requeue_interrupted(ids[0], NOW, "a stop")
    cancelled = await store.get_task(ids[0])
    assert cancelled is not None and cancelled.state is TaskState.CANCELLED
    failed = await store.get_task(ids[2])
    assert failed is not None and failed.state is TaskState.FAILED
    assert failed.error == "no instance left"


async def test_every_run_is_recorded_in_the_transactions_that_start_and_end_it(
    store: Store,
) -> None:
    """A run returned to the queue, a failed one, a cancelled one, one lost with the service:
    each recorded with its instance, times, outcome, error, and where its output begins."""
    await agents(store, "dev-a")
    task = (await store.dispatch(new_task(1))).task
    other = (await store.dispatch(new_task(2))).task
    sizes = {task.id: 0}
    await store.claim_next("dev-a", NOW, log_size=sizes.__getitem__)
    [run] = await store.runs.of_task(task.id)
    assert (run.run, run.agent, run.started_at, run.log_offset) == (1, "dev-a", NOW, 0)
    assert run.outcome is None and run.finished_at is None
    assert await store.requeue_interrupted(task.id, NOW + 1, "the API breaker")
    sizes[task.id] = 120  # the first run's output
    await store.claim_next("dev-a", NOW + 2, log_size=sizes.__getitem__)
    failed = Outcome(TaskState.FAILED, exit_code=3, error="exit code 3")
    assert await store.finish_task(task.id, failed, NOW + 5)
    assert not await store.finish_task(task.id, Outcome(TaskState.SUCCEEDED), NOW + 6)
    first, second = await store.runs.of_task(task.id)
    assert (first.outcome, first.error, first.finished_at) == (
        RunOutcome.RETURNED,
        "the API breaker",
        NOW + 1,
    )
    assert (second.run, second.log_offset, second.outcome, second.error) == (
        2,
        120,
        RunOutcome.FAILED,
        "exit code 3",
    )
    assert second.duration_s == 3
    # The first run's output ends where the second's begins; the last one's, at the end.
    assert log_end([first, second], first) == 120 and log_end([first, second], second) is None
    # Cancelled while running, and lost when the service stopped under it.
    await store.claim_next("dev-a", NOW + 7)
    await store.cancel_tasks([other.id], CAUSE)
    assert await store.requeue_interrupted(other.id, NOW + 8, "the service stopped")
    retried = (await store.dispatch(new_task(3))).task
    await store.claim_next("dev-a", NOW + 9)
    await store.recover(max_attempts=3, now=NOW + 10)
    [cancelled] = await store.runs.of_task(other.id)
    assert cancelled.outcome is RunOutcome.CANCELLED
    [lost] = await store.runs.of_task(retried.id)
    assert (lost.outcome, lost.error) == (RunOutcome.LOST, "the service stopped")
    assert await store.runs.of_task("0000000000000000") == []


async def test_recover_requeues_at_the_head_and_gives_up_after_max_attempts(
    store: Store,
) -> None:
    await agents(store, "dev-a", "dev-b")
    first = (await store.dispatch(new_task(1))).task.id  # dev-a
    second = (await store.dispatch(new_task(2))).task.id  # dev-b
    behind = (await store.dispatch(new_task(3))).task.id  # dev-a, behind first
    cancelled = (await store.dispatch(new_task(4))).task.id  # dev-b
    await store.claim_next("dev-a", NOW)
    await store.set_process(first, 1234, 5)
    await store.claim_next("dev-b", NOW)
    assert await store.requeue_interrupted(second, NOW, "a stop")
    await store.claim_next("dev-b", NOW)  # second again
    await store.cancel_tasks([second], CAUSE)
    recovered = {r.id: r for r in await store.recover(max_attempts=3, now=NOW)}
    assert recovered[first].state is TaskState.QUEUED and recovered[first].pid == 1234
    assert recovered[second].state is TaskState.CANCELLED
    assert await store.queue_positions([first, behind, cancelled]) == {
        first: 1,
        behind: 2,
        cancelled: 1,
    }
    # A task that was running at each of max_attempts stops fails for good.
    claim = await store.claim_next("dev-a", NOW)
    assert claim.task is not None and claim.task.id == first and claim.task.attempts == 2
    await store.recover(max_attempts=3, now=NOW)
    await store.claim_next("dev-a", NOW)
    [gave_up] = await store.recover(max_attempts=3, now=NOW)
    assert gave_up.id == first and gave_up.state is TaskState.FAILED
    task = await store.get_task(first)
    assert task is not None and task.attempts == 3 and "gave up after 3 attempts" in str(task.error)


async def test_a_queued_task_whose_cancel_was_asked_is_cancelled_at_claim(store: Store) -> None:
    await agents(store, "dev-a")
    task_id = (await store.dispatch(new_task(1))).task.id
    await store.claim_next("dev-a", NOW)
    await store.cancel_tasks([task_id], CAUSE)
    await store.recover(max_attempts=3, now=NOW)  # the cancel wins over a requeue
    after = await store.get_task(task_id)
    assert after is not None and after.state is TaskState.CANCELLED
    assert (await store.claim_next("dev-a", NOW)).task is None


async def test_read_model_lists_and_counts(store: Store) -> None:
    await agents(store, "dev-a", "dev-b")
    await agents(store, "rev-a", agent_type="reviewer")
    ids = [(await store.dispatch(new_task(n))).task.id for n in range(1, 4)]
    review = (await store.dispatch(new_task(9, agent_type="reviewer"))).task.id
    await store.claim_next("dev-a", NOW)
    await store.set_agent_enabled("rev-a", False)
    views = {v.name: v for v in await store.instances()}
    assert views["dev-a"].state == "busy" and views["dev-a"].running == ids[0]
    assert views["dev-a"].queue == (ids[2],)
    assert views["dev-b"].state == "idle" and views["dev-b"].queue == (ids[1],)
    assert views["rev-a"].state == "disabled" and views["rev-a"].queue == (review,)
    assert await store.count_tasks(TaskFilter(type="dev")) == 3
    assert await store.count_tasks(TaskFilter(state=TaskState.RUNNING)) == 1
    listed = await store.list_tasks(TaskFilter(agent="dev-a"), 10, 0)
    assert [t.id for t in listed] == [ids[2], ids[0]]  # newest first
    assert [t.id for t in await store.list_tasks(TaskFilter(delivery_id="d-2"), 10, 0)] == [ids[1]]
    assert len(await store.list_tasks(TaskFilter(), 2, 1)) == 2
    assert await store.queue_positions([*ids, "nope"]) == {ids[1]: 1, ids[2]: 1}


async def test_summaries(store: Store) -> None:
    await agents(store, "dev-a")
    ids = [(await store.dispatch(new_task(n))).task.id for n in range(1, 4)]
    await store.intake.add_delivery(delivery("d-1", NOW - 2))
    await store.claim_next("dev-a", NOW)
    await store.finish_task(ids[0], Outcome(TaskState.SUCCEEDED, cost_usd=0.5), NOW + 10)
    await store.claim_next("dev-a", NOW + 10)
    await store.finish_task(ids[1], Outcome(TaskState.FAILED, cost_usd=0.25), NOW + 100)
    await store.cancel_tasks([ids[2]], Cause("a test", None, NOW + 101))
    tallies = {t.state: t for t in await store.task_tallies()}
    assert tallies["succeeded"].count == 1 and tallies["succeeded"].run_seconds == 10.0
    assert tallies["failed"].cost_usd == 0.25 and tallies["failed"].runs == 1
    assert tallies["cancelled"].runs == 0
    assert [t.state for t in await store.task_tallies(since=NOW + 50)] == ["cancelled", "failed"]
    assert [(d.outcome, d.count) for d in await store.delivery_tallies()] == [("queued", 1)]
    assert await store.delivery_tallies(since=NOW) == []
    assert await store.cost_by_agent() == {("dev", "dev-a"): 0.75}
    [durations] = await store.run_durations([5.0, 60.0])
    assert durations.labels == ("dev", "work_issue") and durations.count == 2
    assert durations.buckets == (0, 1) and durations.total == 100.0
    [latency] = await store.start_latencies([1.0, 5.0])
    assert latency.labels == ("dev",) and latency.count == 1 and latency.buckets == (0, 1)
    assert [t.id for t in await store.recently_finished(2)] == [ids[2], ids[1]]


async def test_sessions_and_signals(store: Store) -> None:
    key = session_key("dev", "acme/widget", 1)
    assert await store.get_session(key) is None
    await store.put_session(key, "claude-1", 0.5, NOW)
    await store.put_session(key, "claude-2", 0.75, NOW + 1)
    found = await store.get_session(key)
    assert found is not None and (found.claude_session_id, found.total_cost_usd) == (
        "claude-2",
        0.75,
    )
    await store.forget_session(key)
    assert await store.get_session(key) is None
    assert await store.last_signal_id() == 0
    await store.emit_signal("agents", "dev-a", NOW)
    await store.emit_signal("cancel", "task-1", NOW)
    found_signals = await store.signals_after(0)
    assert [(s.kind, s.target) for s in found_signals] == [
        ("agents", "dev-a"),
        ("cancel", "task-1"),
    ]
    assert await store.last_signal_id() == found_signals[-1].id
    assert await store.signals_after(found_signals[-1].id) == []


def delivery(delivery_id: str, received_at: float) -> DeliveryRecord:
    return DeliveryRecord(
        id=delivery_id,
        flavor="forgejo",
        event="issues",
        event_type="issues",
        received_at=received_at,
        body="{}",
        repo="acme/widget",
        number=1,
        task_ids=["t1"],
    )


async def test_intake_store(store: Store) -> None:
    intake = store.intake
    assert await intake.add_delivery(delivery("d-1", NOW), ("acme/widget", 1, frozenset({"dev"})))
    assert not await intake.add_delivery(delivery("d-1", NOW))  # the id decides
    assert await intake.add_delivery(delivery("d-2", NOW + 1))
    assert await intake.has_delivery("d-1") and not await intake.has_delivery("d-9")
    found = await intake.get_delivery("d-1")
    assert found is not None and found.task_ids == ["t1"]
    assert [d.id for d in await intake.list_deliveries(10, 0)] == ["d-2", "d-1"]
    assert await intake.count_deliveries("queued") == 2 and await intake.count_deliveries() == 2
    assert await intake.assigned_types("acme/widget", 1) == {"dev"}
    await intake.set_assigned_types("acme/widget", 1, ["reviewer", "dev"])
    assert await intake.assigned_types("acme/widget", 1) == {"dev", "reviewer"}
    link = PullLink("acme/widget", 5, "dev", 1, "abc", True)
    await write(store, Decision(links=[link], watch=CiWatch("acme/widget", 5, "abc", NOW)))
    newer = PullLink("acme/widget", 5, "dev", 1, "def", True)
    attempt = ("acme/widget", 5, "def")
    watch = CiWatch("acme/widget", 5, "def", NOW + 1)
    await write(store, Decision(links=[newer], fix_attempts=[attempt], watch=watch))
    assert await intake.pull_link("acme/widget", 5) == newer
    assert await intake.pull_link_for_head("acme/widget", "def") is not None
    assert await intake.pull_link_for_head("acme/widget", "abc") is None
    await write(store, Decision(fix_attempts=[attempt, attempt]))
    assert await intake.fix_attempts(*attempt) == 3
    assert await intake.fix_attempts("acme/widget", 5, "xyz") == 0
    assert await intake.ci_watches() == [watch]
    await write(store, Decision(unwatch=[("acme/widget", 5)]))
    assert await intake.ci_watches() == []
    await intake.drop_ci_watch("acme/widget", 5)
    await agents(store, "dev-a")
    task_id = (await store.dispatch(new_task(1))).task.id
    key = session_key("dev", "acme/widget", 1)
    newer_task = dataclasses.replace(new_task(1), payload={"newer": True})
    done = await store.dispatch_all([newer_task], None)
    assert done.placements == [] and [t.id for t in done.merged] == [task_id]
    merged = await store.get_task(task_id)
    assert merged is not None and merged.payload == {"newer": True}
    assert await intake.active_tasks([key, "dev:acme/widget:99"]) == [task_id]
    await store.claim_next("dev-a", NOW)
    # Running now: a newer event's task is queued behind it, not merged.
    late = await store.dispatch_all([dataclasses.replace(new_task(1), payload={"late": 1})], None)
    assert late.merged == [] and len(late.placements) == 1


async def write(store: Store, decision: Decision) -> None:
    """Apply a decision with no tasks and no delivery, as a CI poll's is."""
    assert (await store.dispatch_all([], None, decision, Cause("a test", None, NOW))).recorded


async def test_a_decision_cancels_its_sessions_tasks_in_its_transaction(store: Store) -> None:
    await agents(store, "dev-a", "dev-b")
    running = (await store.dispatch(new_task(1))).task
    assert (await store.claim_next(running.agent, NOW)).task is not None
    queued = (await store.dispatch(new_task(1))).task
    other = (await store.dispatch(new_task(2))).task
    last = await store.last_signal_id()
    cause = Cause("forge event issues closed", "d-9", NOW)
    key = session_key("dev", "acme/widget", 1)
    done = await store.dispatch_all([], None, Decision(cancel=[key]), cause)
    assert done.written.cancelled == [queued.id] and done.written.stopping == [running.id]
    ended = await store.get_task(queued.id)
    assert ended is not None and ended.state is TaskState.CANCELLED
    asked = await store.get_task(running.id)
    assert asked is not None and asked.state is TaskState.RUNNING
    assert [(s.kind, s.target) for s in await store.signals_after(last)] == [("cancel", running.id)]
    assert await store.notes.cancelled_by_delivery("d-9") == sorted([queued.id, running.id])
    untouched = await store.get_task(other.id)
    assert untouched is not None and untouched.state is TaskState.QUEUED


async def test_issue_guard_counts_the_issue_and_its_agent_pull_requests(store: Store) -> None:
    spend, view = store.spend, store.intake
    await agents(store, "dev-a")
    for number in (1, 5, 7):  # 5 is an agent's pull request for issue 1; 7 is unrelated
        await store.dispatch(new_task(number))
    await write(store, Decision(links=[PullLink("acme/widget", 5, "dev", 1, "abc", True)]))
    assert await view.issue_usage("acme/widget", 1, 0.0) == (2, 0.0)
    assert await view.issue_usage("acme/widget", 1, NOW + 2) == (1, 0.0)  # since: only #5
    assert await view.issue_usage("acme/widget", 7, 0.0) == (1, 0.0)
    # A link of a number to itself counts its tasks once, as the number's own.
    await write(store, Decision(links=[PullLink("acme/widget", 7, "dev", 7, "def", True)]))
    assert await view.issue_usage("acme/widget", 7, 0.0) == (1, 0.0)
    assert await view.guard("acme/widget", 1) is None
    comment = ForgeComment("dev", "acme/widget", 1, "a human is needed")
    trip = Trip("acme/widget", 1, "too many", NOW, comment)
    await write(store, Decision(review_rounds=[("acme/widget", 1)], trips=[trip]))
    tripped = await view.guard("acme/widget", 1)
    assert tripped is not None and (tripped.review_rounds, tripped.reason) == (1, "too many")
    assert [letter.body for letter in await store.outbox.waiting(10)] == ["a human is needed"]
    # Tripped already: a second trip asks no one again.
    await write(store, Decision(trips=[trip]))
    assert len(await store.outbox.waiting(10)) == 1
    assert [g.number for g in await spend.tripped()] == [1]
    resets: list[Reset] = [("acme/widget", 1, NOW + 10), ("acme/widget", 2, NOW + 11)]
    assert await store.intake.add_delivery(delivery("d-reset", NOW), None, resets)
    reset = await view.guard("acme/widget", 1)
    assert reset is not None and (reset.since, reset.review_rounds) == (NOW + 10, 0)
    assert reset.tripped_at is None and reset.reason is None
    fresh = await view.guard("acme/widget", 2)
    assert fresh is not None and fresh.since == NOW + 11


async def test_a_look_ahead_reads_an_issue_as_the_reads_one_by_one(store: Store) -> None:
    """On PostgreSQL in one round trip; on SQLite only whether the id was seen (the reads are
    made as needed). Through `AheadView` the decide phase reads the same either way."""
    view = store.intake
    await agents(store, "dev-a")
    for number in (1, 5):  # 5 is an agent's pull request for issue 1
        await store.dispatch(new_task(number))
    await write(store, Decision(links=[PullLink("acme/widget", 5, "dev", 1, "abc", True)]))
    assigned = ("acme/widget", 1, frozenset({"dev", "reviewer"}))
    assert await view.add_delivery(delivery("d-1", NOW), assigned, [("acme/widget", 1, NOW + 2)])
    assert not (await view.look_ahead("d-2", None)).seen
    assert not (await view.look_ahead("d-2", ("acme/widget", 1), False)).seen
    issues = (("acme/widget", 1), ("acme/widget", 5), ("acme/widget", 9))
    for issue, guarded in [(issue, guarded) for issue in issues for guarded in (True, False)]:
        ahead = await view.look_ahead("d-1", issue, guarded)
        assert ahead.guarded == (guarded and store.shared)
        assert ahead.seen
        assert ahead.issue == (issue if store.shared else None)
        through = AheadView(ahead, view)
        guard = await view.guard(*issue)
        assert await through.guard(*issue) == guard
        assert await through.assigned_types(*issue) == await view.assigned_types(*issue)
        assert await through.pull_link(*issue) == await view.pull_link(*issue)
        for since in {0.0, NOW + 2, guard.since if guard is not None else 0.0}:
            usage = await view.issue_usage(*issue, since)
            assert await through.issue_usage(*issue, since) == usage
    read = await view.look_ahead("d-1", ("acme/widget", 1))
    if store.shared:
        # since NOW + 2: only #5's task
        expected = (frozenset({"dev", "reviewer"}), None, (1, 0.0))
        assert (read.assigned, read.link, read.usage) == expected
        assert read.guard is not None and read.guard.since == NOW + 2


async def test_dispatch_all_records_the_delivery_with_its_tasks(store: Store) -> None:
    await agents(store, "dev-a")
    seen: list[tuple[list[str], str | None]] = []

    def settle(
        placements: list[Placement],
        merged: list[Task],
        cancelled: list[str],
        failure: NoInstanceError | None,
    ) -> tuple[DeliveryRecord, tuple[str, int, frozenset[str]] | None, list[Reset]]:
        record = delivery("d-1", NOW)
        record.task_ids = [p.task.id for p in placements]
        record.outcome = "error" if failure else "queued"
        seen.append((record.task_ids, str(failure) if failure else None))
        since = NOW + len(seen)
        return record, ("acme/widget", 1, frozenset({"dev"})), [("acme/widget", 1, since)]

    done = await store.dispatch_all([new_task(1), new_task(2, agent_type="nobody")], settle)
    assert done.recorded and len(done.placements) == 1 and done.failure is not None
    stored = await store.intake.get_delivery("d-1")
    assert stored is not None and stored.outcome == "error"
    assert stored.task_ids == [done.placements[0].task.id] == seen[0][0]
    assert await store.intake.assigned_types("acme/widget", 1) == {"dev"}
    guard = await store.intake.guard("acme/widget", 1)
    assert guard is not None and guard.since == NOW + 1
    # The same id again: nothing is placed, nothing is recorded twice, no guard is reset,
    # and nothing else the decision carries is written.
    key = session_key("dev", "acme/widget", 1)
    writes = Decision(
        cancel=[key],
        links=[PullLink("acme/widget", 5, "dev", 1, "abc", True)],
        fix_attempts=[("acme/widget", 5, "abc")],
        review_rounds=[("acme/widget", 1)],
        trips=[Trip("acme/widget", 1, "too many", NOW, ForgeComment("dev", "acme/widget", 1, "!"))],
        watch=CiWatch("acme/widget", 5, "abc", NOW),
        comments=[ForgeComment("dev", "acme/widget", 1, "hello")],
    )
    again = await store.dispatch_all([new_task(3)], settle, writes, Cause("test", "d-1", NOW))
    assert not again.recorded and again.placements == []
    assert await store.count_tasks(TaskFilter()) == 1
    assert await store.count_tasks(TaskFilter(state=TaskState.QUEUED)) == 1
    guard = await store.intake.guard("acme/widget", 1)
    assert guard is not None and guard.since == NOW + 1
    assert (guard.review_rounds, guard.tripped_at) == (0, None)
    assert await store.intake.pull_link("acme/widget", 5) is None
    assert await store.intake.fix_attempts("acme/widget", 5, "abc") == 0
    assert await store.intake.ci_watches() == []
    assert await store.outbox.waiting(10) == []


async def test_breaker_states_are_kept_replaced_and_cleared(store: Store) -> None:
    spend = store.spend
    assert await spend.breaker_states() == []
    counting = BreakerState("dev", 1, 0, None, "overloaded", "HTTP 529")
    await spend.put_breaker(counting)
    opened = BreakerState("dev", 2, 1, 1_800_000_000.5, "usage_limit", "5-hour limit")
    await spend.put_breaker(opened)
    other = BreakerState("reviewer", 1, 0, None, "network", "ECONNREFUSED")
    await spend.put_breaker(other)
    assert sorted(await spend.breaker_states(), key=lambda s: s.type) == [opened, other]
    await spend.clear_breaker("dev")
    assert await spend.breaker_states() == [other]


def test_processes_dispatching_at_once_make_the_choices_one_would(database_url: str) -> None:
    """Four stores (separate engines, as separate processes have) dispatch 25 tasks each at
    once onto 10 idle instances: every instance gets exactly 10, and the type's cursor has
    ended after the last instance."""

    async def seed() -> None:
        store = await SqlStore.open(database_url)
        await agents(store, *(f"dev-{i:02d}" for i in range(10)))
        await store.close()

    asyncio.run(seed())
    errors: list[BaseException] = []
    placed: list[str] = []

    def dispatcher(offset: int) -> None:
        async def run() -> None:
            store = await SqlStore.open(database_url)
            try:
                for n in range(25):
                    placed.append((await store.dispatch(new_task(offset + n))).task.agent)
            finally:
                await store.close()

        try:
            asyncio.run(run())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher, args=(100 * i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Counter(placed) == {f"dev-{i:02d}": 10 for i in range(10)}

    async def cursor() -> dict[str, int]:
        store = await SqlStore.open(database_url)
        try:
            return await store.load_cursors()
        finally:
            await store.close()

    assert asyncio.run(cursor()) == {"dev": 10}  # dev-09 took the last one


async def test_steal_takes_the_oldest_free_key_with_its_later_tasks(store: Store) -> None:
    await agents(store, "dev-a", "dev-b")
    await store.set_agent_enabled("dev-b", False)
    running = (await store.dispatch(new_task(1))).task
    await store.claim_next("dev-a", NOW)
    key_1 = (await store.dispatch(new_task(1, kind=TaskKind.FIX_CI))).task  # its key runs
    key_2 = (await store.dispatch(new_task(2))).task
    key_3 = (await store.dispatch(new_task(3))).task
    key_2_later = (await store.dispatch(new_task(2, kind=TaskKind.FIX_CI))).task
    assert {t.agent for t in (key_1, key_2, key_3, key_2_later)} == {"dev-a"}
    assert await store.steal("dev-b", NOW) is None  # disabled instances take nothing
    assert await store.waiting_beside_idle() == {}  # dev-b is disabled
    await store.set_agent_enabled("dev-b", True)
    # Keys 2 and 3 could start on dev-b; key 1 runs, and key 2's second task waits for it.
    assert await store.waiting_beside_idle() == {"dev": 2}
    assert await store.steal("dev-a", NOW) is None  # it runs a task
    stolen = await store.steal("dev-b", NOW + 5)
    assert stolen is not None and stolen.source == "dev-a"
    assert [t.id for t in stolen.tasks] == [key_2.id, key_2_later.id]
    assert [t.agent for t in stolen.tasks] == ["dev-b", "dev-b"]
    assert stolen.tasks[0].seq < stolen.tasks[1].seq
    note = await store.notes.get_note(key_2.id)
    assert note.moved_from == "dev-a" and note.moved_at == NOW + 5
    assert (await store.notes.get_note(key_3.id)).moved_from is None
    assert await store.steal("dev-b", NOW) is None  # its queue is not empty
    assert await store.waiting_beside_idle() == {}  # no instance is idle with an empty queue
    claim = await store.claim_next("dev-b", NOW + 6)
    assert claim.task is not None and claim.task.id == key_2.id
    await agents(store, "dev-c")
    # Key 1 runs on dev-a and key 2 on dev-b: only key 3 is free to take.
    third = await store.steal("dev-c", NOW + 7)
    assert third is not None and [t.id for t in third.tasks] == [key_3.id]
    assert await store.steal("dev-c", NOW + 8) is None
    await store.finish_task(running.id, Outcome(TaskState.SUCCEEDED), NOW + 9)
    head = await store.claim_next("dev-a", NOW + 9)
    assert head.task is not None and head.task.id == key_1.id  # order kept on dev-a
    waits = {h.labels: h for h in await store.queue_waits([5.0, 10.0])}
    # Waits: the long task -1 s (claimed at NOW, enqueued at NOW + 1), key 2 4 s, key 1 8 s.
    assert waits[("dev",)].count == 3
    assert waits[("dev",)].total == pytest.approx(0 - 1 + 4 + 8)
    assert waits[("dev",)].buckets == (2, 3)


def test_stores_stealing_at_once_never_take_the_same_task(database_url: str) -> None:
    """Eight stores (separate engines) steal for eight idle instances at once from one busy
    instance with five queued tasks of distinct keys: each task moves exactly once."""

    async def seed() -> list[str]:
        store = await SqlStore.open(database_url)
        try:
            await agents(store, "dev-busy", *(f"dev-t{i}" for i in range(8)))
            for i in range(8):
                await store.set_agent_enabled(f"dev-t{i}", False)
            await store.dispatch(new_task(100))
            await store.claim_next("dev-busy", NOW)
            queued = [(await store.dispatch(new_task(n))).task.id for n in range(1, 6)]
            for i in range(8):
                await store.set_agent_enabled(f"dev-t{i}", True)
            return queued
        finally:
            await store.close()

    queued = asyncio.run(seed())
    errors: list[BaseException] = []
    taken: dict[str, list[str]] = {}
    start = threading.Barrier(8)

    def thief(name: str) -> None:
        async def run() -> None:
            store = await SqlStore.open(database_url)
            try:
                start.wait()
                stolen = await store.steal(name, NOW)
                taken[name] = [] if stolen is None else [t.id for t in stolen.tasks]
            finally:
                await store.close()

        try:
            asyncio.run(run())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thief, args=(f"dev-t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    moved = [task_id for ids in taken.values() for task_id in ids]
    assert sorted(moved) == sorted(queued)  # every task once, none twice
    assert sorted(len(ids) for ids in taken.values()) == [0, 0, 0, 1, 1, 1, 1, 1]

    async def owners() -> dict[str, str]:
        store = await SqlStore.open(database_url)
        try:
            found = [await store.get_task(task_id) for task_id in queued]
            return {task.id: task.agent for task in found if task is not None}
        finally:
            await store.close()

    assert asyncio.run(owners()) == {ids[0]: name for name, ids in taken.items() if ids}


async def test_the_outbox_keeps_comments_in_order_until_removed(store: Store) -> None:
    first = await store.outbox.put("dev", "acme/widget", 17, "queued", NOW)
    second = await store.outbox.put("dev", "acme/widget", 17, "started", NOW + 1)
    other = await store.outbox.put("boss", "acme/gadget", 3, "moved", NOW + 2)
    waiting = await store.outbox.waiting(10)
    assert [(w.id, w.body, w.attempts, w.next_at) for w in waiting] == [
        (first, "queued", 0, NOW),
        (second, "started", 0, NOW + 1),
        (other, "moved", 0, NOW + 2),
    ]
    assert (waiting[2].as_type, waiting[2].repo, waiting[2].number) == ("boss", "acme/gadget", 3)
    await store.outbox.retry_at(first, NOW + 60, "forge down")
    await store.outbox.retry_at(first, NOW + 120, "forge down")
    await store.outbox.remove(second)
    again = await store.outbox.waiting(1)
    assert [(w.id, w.attempts, w.next_at) for w in again] == [(first, 2, NOW + 120)]
    assert [w.id for w in await store.outbox.waiting(10)] == [first, other]


async def test_queue_lengths_follow_every_change_of_a_queue(store: SqlStore) -> None:
    """Placing reads the queue lengths the triggers keep: they must equal a count of the
    queues after dispatches, claims, cancels, requeues, moves and ends."""

    def kept_and_counted() -> tuple[dict[str, int], dict[str, int]]:
        with store.engine.connect() as conn:
            kept = {a: n for a, n in conn.execute(sa.select(queue_lengths)) if n}
            counted = dict(
                conn.execute(
                    sa.select(tasks.c.agent, sa.func.count())
                    .where(tasks.c.state == TaskState.QUEUED.value)
                    .group_by(tasks.c.agent)
                ).all()
            )
        return kept, counted

    await agents(store, "dev-a", "dev-b")
    placed = [(await store.dispatch(new_task(n))).task for n in range(1, 8)]
    kept, counted = kept_and_counted()
    assert kept == counted and sum(kept.values()) == 7
    first = (await store.claim_next("dev-a", NOW)).task
    assert first is not None
    await store.cancel_tasks([placed[-1].id], CAUSE)
    await store.requeue_interrupted(first.id, NOW, "a stop")
    await store.set_agent_enabled("dev-b", False)
    for entry in await store.orphaned_tasks():
        await store.reassign_task(entry.id)
    again = (await store.claim_next("dev-a", NOW)).task
    assert again is not None
    await store.finish_task(again.id, Outcome(TaskState.SUCCEEDED), NOW + 1)
    kept, counted = kept_and_counted()
    assert kept == counted == {"dev-a": 5}


async def test_an_issues_usage_looks_its_tasks_up_by_repo_and_number(store: SqlStore) -> None:
    """Whatever the plan, PostgreSQL's generic plan included (made while the tables were small
    and kept by the prepared statement), the loop guard's usage query finds an issue's tasks
    through the full (repo, number) index: reading every task of the repository instead made
    each delivery slower than the one before."""
    statement = spend._USAGE.statement
    values = {"b_repo": "acme/widget", "b_number": 7, "b_since": 0.0}
    with store.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            compiled = statement.compile(dialect=conn.dialect)
            args = {**compiled.params, **values}
            positional = tuple(args[name] for name in compiled.positiontup or ())
            raw = conn.connection.dbapi_connection
            assert raw is not None
            rows = raw.execute(f"EXPLAIN QUERY PLAN {compiled}", positional).fetchall()
            steps = [str(row[3]) for row in rows]
            on_tasks = [step for step in steps if " tasks " in f"{step} "]
            assert on_tasks and all("(repo=? AND number=?)" in step for step in on_tasks), steps
        else:
            compiled = statement.compile(dialect=postgresql.asyncpg.dialect())
            args = {**compiled.params, **values}
            literal = ", ".join(
                repr(args[name]).replace('"', "'") for name in compiled.positiontup or ()
            )
            conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            conn.exec_driver_sql(f"PREPARE usage_plan AS {compiled}")
            plan = [
                row[0] for row in conn.exec_driver_sql(f"EXPLAIN EXECUTE usage_plan({literal})")
            ]
            text = "\n".join(plan)
            assert "Merge Join" not in text and "Seq Scan on tasks" not in text, text
            conditions = [line for line in plan if "Index Cond" in line and "number" in line]
            scans = [line for line in plan if " on tasks" in line]
            assert scans and len(conditions) >= len(scans), text


async def test_elastic_adds_instances_with_the_longest_waits_and_retires_them_idle(
    store: Store,
) -> None:
    """One pass of the elastic rule, read and applied in one transaction (`store/elastic.py`)."""
    rule = Scaling(low=1, high=3, scale_up_wait=60, scale_down_idle=900)
    await agents(store, "dev-a")
    first = (await store.dispatch(new_task(1))).task
    await store.claim_next("dev-a", NOW)
    second = (await store.dispatch(new_task(2))).task
    third = (await store.dispatch(new_task(3))).task
    fourth = (await store.dispatch(new_task(4))).task
    assert (await store.elastic.scale("dev", rule, NOW + 50, "node-1")).verdict.act is Act.NOTHING
    scaled = await store.elastic.scale("dev", rule, NOW + 64, "node-1")
    # Keys 2 and 3 waited 62 and 61 s, key 4 60 s: two instances, each with one of the two.
    assert scaled.verdict.names == ("dev-auto-1", "dev-auto-2")
    assert scaled.moved == {"dev-auto-1": (second.id,), "dev-auto-2": (third.id,)}
    added = await store.get_agent("dev-auto-1")
    assert added is not None and added.auto and added.node is None
    assert not (await store.get_agent("dev-a")).auto  # type: ignore[union-attr]
    assert (await store.notes.get_note(second.id)).moved_from == "dev-a"
    # The added instances run nothing yet (no node holds them): nothing more is added.
    assert (await store.elastic.scale("dev", rule, NOW + 500, "node-1")).verdict.act is Act.NOTHING
    for name, task in (("dev-auto-1", second), ("dev-auto-2", third)):
        claim = await store.claim_next(name, NOW + 500)
        assert claim.task is not None and claim.task.id == task.id
        await store.finish_task(task.id, Outcome(TaskState.SUCCEEDED), NOW + 600)
    await store.finish_task(first.id, Outcome(TaskState.SUCCEEDED), NOW + 600)
    await store.claim_next("dev-a", NOW + 600)
    await store.finish_task(fourth.id, Outcome(TaskState.SUCCEEDED), NOW + 700)
    assert (await store.elastic.scale("dev", rule, NOW + 1499, "n")).verdict.act is Act.NOTHING
    retired = await store.elastic.scale("dev", rule, NOW + 1500, "node-2")
    assert retired.verdict.act is Act.RETIRE
    assert retired.verdict.names == ("dev-auto-1", "dev-auto-2")
    assert [a.name for a in await store.list_agents()] == ["dev-a"]
    changes = await store.elastic.changes(10)
    assert [(c.act, c.names, c.node, c.moved) for c in changes] == [
        ("retire", ("dev-auto-1", "dev-auto-2"), "node-2", 0),
        ("add", ("dev-auto-1", "dev-auto-2"), "node-1", 2),
    ]
    assert changes[1].wait_seconds == 62
    assert "while all 1 instance(s) were busy" in changes[1].reason
    assert changes[0].wait_seconds == 900
    assert await store.elastic.changes(10, "reviewer") == []


def test_two_leaders_scaling_at_once_add_the_range_once(database_url: str) -> None:
    """A leader that has not yet seen it lost the lead runs a pass beside the new one: the
    passes take the type's cursor lock in turn, so the second sees the first's instances."""
    rule = Scaling(low=1, high=3, scale_up_wait=60, scale_down_idle=900)

    async def seed() -> None:
        store = await SqlStore.open(database_url)
        try:
            await agents(store, "dev-a")
            await store.dispatch(new_task(100))
            await store.claim_next("dev-a", NOW)
            for n in range(1, 6):
                await store.dispatch(new_task(n))
        finally:
            await store.close()

    asyncio.run(seed())
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def leader(name: str) -> None:
        async def run() -> None:
            store = await SqlStore.open(database_url)
            try:
                start.wait()
                await store.elastic.scale("dev", rule, NOW + 100, name)
            finally:
                await store.close()

        try:
            asyncio.run(run())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=leader, args=(f"node-{i}",)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    async def read() -> tuple[list[str], int]:
        store = await SqlStore.open(database_url)
        try:
            names = [a.name for a in await store.list_agents()]
            return names, len(await store.elastic.changes(10))
        finally:
            await store.close()

    assert asyncio.run(read()) == (["dev-a", "dev-auto-1", "dev-auto-2"], 1)
