"""A group commit's deliveries applied together: their look-ups in one round trip, their writes
in one more.

One at a time (`sql._apply`), each delivery of a batch costs two round trips on the batch's
connection, one after another: its look-ups (a queued twin per task, the type's cursor lock,
the candidates), then its writes. Here the look-ups of every delivery of a run are sent at
once, the choices are made from what they read, each adjusted by the run's own earlier
placements as the one-by-one path would have read them under the same cursor lock (the queue a
placement lengthened, the session it now holds, the task a later one merges into), and then
every write is sent at once. What only the one-by-one path settles exactly raises `Unsettled`
and the caller applies the run again one delivery at a time: a type's first placement (no
cursor row yet), a task held because its session is paused, a twin claimed between its
look-up and the merge, and any error (a duplicate id above all: which delivery failed is
not known once the statements are pipelined).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import DBAPICursor

from claude_hooks.core.domain import Task, TaskState
from claude_hooks.core.scheduler import Candidate, choose
from claude_hooks.errors import NoInstanceError
from claude_hooks.store import placing, wakeups
from claude_hooks.store.base import Dispatched
from claude_hooks.store.decisions import writes_first
from claude_hooks.store.group_commit import DispatchCall
from claude_hooks.store.intake import ask_twin, insert_delivery, send_merge
from claude_hooks.store.labels import write_labels
from claude_hooks.store.outcomes import write_outcomes
from claude_hooks.store.prepared import pipelined
from claude_hooks.store.queueing import Sent, queue


class Unsettled(Exception):
    """The run met what only the one-by-one path settles exactly."""


def fits(call: DispatchCall) -> bool:
    """Whether `call` may join a run: it writes nothing before its tasks (those writes read
    what they changed) and settles no pending delivery (that reads what it deleted)."""
    return not call.pending and (call.decision is None or not writes_first(call.decision))


class _Run:
    """What the run has placed so far, as the next placement's look-ups would have read it."""

    def __init__(self, positions: dict[str, int]) -> None:
        self.start = positions  # type -> its cursor, as locked
        self.positions = dict(positions)  # type -> its cursor now
        self.added: Counter[str] = Counter()  # instance -> tasks the run queued on it
        self.holding: dict[str, set[str]] = {}  # session key -> instances with its new tasks
        self.twins: dict[tuple[str, str], str] = {}  # (session key, kind) -> first task queued
        self.woken: set[str] = set()  # instances with new tasks
        self.busy: set[str] = set()  # types with a new task waiting behind another

    def choose(self, task: Task, rows: Sequence[Any]) -> placing.Spot:
        """The instance for `task` from its candidates' rows, read before the run placed any."""
        if not rows:
            raise NoInstanceError(task.type)
        read, _ = placing.candidates(rows)
        snapshot = [Candidate(c.name, c.running, c.queued + self.added[c.name]) for c in read]
        mine = self.holding.get(task.session_key, set())
        holder = next((row[0] for row in rows if row[3] or row[0] in mine), None)
        choice = choose(snapshot, self.positions[task.type], holder)
        self.positions[task.type] = choice.cursor
        chosen = snapshot[choice.index]
        return placing.Spot(chosen.name, chosen.queued, chosen.running)

    def placed(self, sent: Sent) -> None:
        task = sent.task
        self.added[task.agent] += 1
        self.holding.setdefault(task.session_key, set()).add(task.agent)
        self.woken.add(task.agent)
        if sent.busy:
            self.busy.add(task.type)

    def twin(self, task: Task) -> str | None:
        """The first task of `task`'s session and kind an earlier delivery of the run queued."""
        return self.twins.get((task.session_key, task.kind.value))

    def delivered(self, sent: Sequence[Sent]) -> None:
        """A delivery's tasks are queued: later deliveries' tasks merge into them."""
        for placed in sent:
            self.twins.setdefault((placed.task.session_key, placed.task.kind.value), placed.task.id)

    def finish(self, conn: sa.Connection) -> None:
        """Move the cursors the run moved, and wake the workers and thieves it concerns."""
        for agent_type, position in self.positions.items():
            if position != self.start[agent_type]:
                placing.move_cursor(conn, agent_type, position)
        for agent in sorted(self.woken):
            wakeups.notify(conn, wakeups.TASK, agent)
        for agent_type in sorted(self.busy):
            wakeups.notify(conn, wakeups.BUSY, agent_type)


def _lock(conn: sa.Connection, calls: Sequence[DispatchCall]) -> list[tuple[str, DBAPICursor]]:
    """Send the cursor locks of every type the run places, in name order (as every run
    takes them). Sent before the look-ups: the server runs them in order, so under READ
    COMMITTED each look-up takes its snapshot once the locks are held."""
    types = sorted({task.type for call in calls for task in call.tasks})
    return [(agent_type, placing.ask_lock(conn, agent_type)) for agent_type in types]


def _positions(locked: list[tuple[str, DBAPICursor]]) -> dict[str, int]:
    positions: dict[str, int] = {}
    for agent_type, cursor in locked:
        row = cursor.fetchone()
        if row is None:
            raise Unsettled(f"type {agent_type!r} has no cursor row yet")
        positions[agent_type] = int(row[0])
    return positions


def apply(conn: sa.Connection, calls: Sequence[DispatchCall]) -> list[Dispatched]:
    """Apply `calls` (each `fits`) in order within the caller's transaction; raises
    `Unsettled` (or the error met) if the caller must apply them one at a time instead."""
    merges: list[DBAPICursor] = []
    sent_by_call: list[list[Sent]] = []
    answers: list[tuple[list[Task], NoInstanceError | None]] = []
    with pipelined(conn):
        locked = _lock(conn, calls)
        twins = [
            [None if t.id in call.separate else ask_twin(conn, t) for t in call.tasks]
            for call in calls
        ]
        asked = [
            [placing.ask_candidates(conn, t.type, t.session_key) for t in call.tasks]
            for call in calls
        ]
        run = _Run(_positions(locked))  # the first read: every look-up's round trip
        for call, call_twins, call_asked in zip(calls, twins, asked, strict=True):
            merged: list[Task] = []
            sent: list[Sent] = []
            failure: NoInstanceError | None = None
            for task, looked_up, candidates in zip(call.tasks, call_twins, call_asked, strict=True):
                rows = candidates.fetchall()
                if looked_up is not None:
                    row = looked_up.fetchone()
                    twin = row[0] if row is not None else run.twin(task)
                    if twin is not None:
                        merges.append(send_merge(conn, twin, task))
                        merged.append(dataclasses.replace(task, id=twin))
                        continue
                if failure is not None:
                    continue  # as one at a time: placing stops at a type with no instance
                try:
                    spot = run.choose(task, rows)
                except NoInstanceError as exc:
                    failure = exc
                    continue
                sent.append(queue(conn, task, spot))
                run.placed(sent[-1])
            run.delivered(sent)
            decision = call.decision
            if decision is not None:
                write_outcomes(conn, decision.outcomes)
                if decision.labels is not None and failure is None:
                    write_labels(conn, *decision.labels)
            unread = [s.placement(read=False) for s in sent]
            record = call.settle(unread, merged, [], failure) if call.settle is not None else None
            if record is not None:
                insert_delivery(conn, *record)
            sent_by_call.append(sent)
            answers.append((merged, failure))
        run.finish(conn)
    if any(merge.fetchone() is None for merge in merges):
        raise Unsettled("a twin was claimed between its look-up and the merge")
    dispatched = []
    for sent, (merged, failure) in zip(sent_by_call, answers, strict=True):
        placements = [s.placement() for s in sent]
        if any(p.task.state is not TaskState.QUEUED for p in placements):
            raise Unsettled("a task was held: its session is paused")
        dispatched.append(Dispatched(placements, failure, recorded=True, merged=merged))
    return dispatched
