"""A delivery's decision written in the caller's transaction: the one place it is applied.

`Store.dispatch_all` calls `write_decision` before it places the tasks and records the
delivery, in one transaction: a duplicate id (the delivery's primary key) or a failure rolls
every write back with it. Counters are written as increments, so two different deliveries
that read the same count both count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from claude_hooks.core.decision import Decision, Label
from claude_hooks.core.domain import TaskState
from claude_hooks.core.outcomes import Intervention
from claude_hooks.store import wakeups
from claude_hooks.store.intake import (
    drop_ci_watch,
    retarget_review,
    write_ci_watch,
    write_fix_attempt,
    write_pull_link,
)
from claude_hooks.store.notes import write_cancelled_by
from claude_hooks.store.outbox import write_letter
from claude_hooks.store.outcomes import write_outcomes
from claude_hooks.store.policy_faults import write_policy_fault
from claude_hooks.store.schema import signals, tasks
from claude_hooks.store.spend import write_review_round, write_trip

SIGNAL_CANCEL = "cancel"  # a task's cancel was asked for: the node running it stops it
_WAITING = (TaskState.QUEUED.value, TaskState.HELD.value)  # held: its session is paused
_ACTIVE = (*_WAITING, TaskState.RUNNING.value)


@dataclass(frozen=True, slots=True)
class Cause:
    """Who or what a decision acts for, as recorded on what it cancels, and when."""

    by: str
    delivery_id: str | None
    now: float
    reason: str = "cancelled while queued"  # the error a queued task ends with


@dataclass(slots=True)
class Written:
    """What applying a decision did that its caller acts on once committed."""

    cancelled: list[str] = field(default_factory=list)  # queued (or held) tasks now cancelled
    stopping: list[str] = field(default_factory=list)  # running tasks asked to stop
    labels: list[Label] = field(default_factory=list)  # of the trips that were new


def cancel_sessions(conn: sa.Connection, keys: list[str], cause: Cause) -> Written:
    """Cancel the queued and running tasks of the session keys `keys` (see `cancel`)."""
    if not keys:
        return Written()
    return cancel(conn, tasks.c.session_key.in_(sorted(set(keys))), cause)


def cancel(conn: sa.Connection, which: sa.ColumnElement[bool], cause: Cause) -> Written:
    """Cancel the queued and running tasks `which` selects, noting who asked, within the
    caller's transaction: the one place a task is cancelled. Queued ones end now; running
    ones get their cancel asked for and a signal for the node that runs them."""
    written = Written()
    rows = conn.execute(
        sa.select(tasks.c.id, tasks.c.state)
        .where(which, tasks.c.state.in_(_ACTIVE))
        .order_by(tasks.c.seq)
    ).all()
    for task_id, state in rows:
        write_cancelled_by(conn, task_id, cause.by, cause.delivery_id)
        if state in _WAITING:
            ended = conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id, tasks.c.state.in_(_WAITING))
                .values(
                    state=TaskState.CANCELLED.value,
                    finished_at=cause.now,
                    error=cause.reason,
                )
                .returning(tasks.c.id)
            ).first()
            if ended is not None:
                written.cancelled.append(task_id)
                continue
            # Claimed since it was read (PostgreSQL: the update waited for the claim's row
            # lock and then found it running): ask the run to stop instead.
        asked = conn.execute(
            tasks.update()
            .where(tasks.c.id == task_id, tasks.c.state == TaskState.RUNNING.value)
            .values(cancel_requested=True)
            .returning(tasks.c.id)
        ).first()
        if asked is not None:
            conn.execute(
                signals.insert().values(kind=SIGNAL_CANCEL, target=task_id, created_at=cause.now)
            )
            wakeups.notify(conn, wakeups.SIGNAL)
            written.stopping.append(task_id)
    return written


def writes_first(decision: Decision) -> bool:
    """Whether `write_decision` writes anything for `decision` (most deliveries' decisions
    write only their tasks, their record and what travels with them)."""
    d = decision
    return bool(
        d.cancel
        or d.stop
        or d.links
        or d.fix_attempts
        or d.review_rounds
        or d.trips
        or d.policy_faults
        or d.retarget
        or d.unwatch
        or d.watch is not None
        or d.comments
    )


def write_decision(conn: sa.Connection, decision: Decision, cause: Cause) -> Written:
    """Every write of `decision` but its tasks, its outcome facts (pipelined with the tasks:
    nothing reads their results) and its delivery's record, in a fixed order (rows locked
    in the same order by every delivery cannot deadlock)."""
    written = cancel_sessions(conn, decision.cancel, cause)
    if decision.stop:
        # Running tasks a new event supersedes (`core.new_event`): stopped for the new one.
        ids = sorted({task_id for task_id, _ in decision.stop})
        superseded = cancel(conn, tasks.c.id.in_(ids), cause)
        written.cancelled += superseded.cancelled
        written.stopping += [t for t in superseded.stopping if t not in written.stopping]
    for link in decision.links:
        write_pull_link(conn, link, cause.now)
    for attempt in decision.fix_attempts:
        write_fix_attempt(conn, attempt)
    for repo, number in decision.review_rounds:
        write_review_round(conn, repo, number)
    letters = list(decision.comments)
    for trip in decision.trips:
        # The humans are asked once: only by the delivery whose trip is new.
        if write_trip(conn, trip.repo, trip.number, trip.reason, trip.at):
            write_outcomes(conn, [Intervention("escalations", trip.repo, trip.number, None)])
            if trip.comment is not None:
                letters.append(trip.comment)
            if trip.label is not None:
                written.labels.append(trip.label)
    for fault in decision.policy_faults:
        if write_policy_fault(conn, fault.repo, fault.file_sha, cause.now):
            letters.append(fault.comment)
    for key, fields in decision.retarget:
        retarget_review(conn, key, fields)
    for repo, pr_number in decision.unwatch:
        drop_ci_watch(conn, repo, pr_number)
    if decision.watch is not None:
        write_ci_watch(conn, decision.watch)
    for comment in letters:
        write_letter(conn, comment.as_type, comment.repo, comment.number, comment.body, cause.now)
    return written
