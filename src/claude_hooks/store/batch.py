"""A group commit's deliveries applied together: their look-ups in one round trip, their writes
in one more, each kind of statement once for the whole run (PostgreSQL only).

One at a time (`sql._apply`), each delivery of a batch costs two round trips on the batch's
connection, one after another: its look-ups (a queued twin per task, the type's cursor lock,
the candidates), then its writes. Here the look-ups of every delivery of a run are sent at
once, the choices are made from what they read, each adjusted by the run's own earlier
placements as the one-by-one path would have read them under the same cursor lock (the queue a
placement lengthened, the session it now holds, the task a later one merges into), and then
every write is sent at once. Each kind of look-up and write is one statement for the run, its
rows' values in arrays (`unnest`), not one a row: a statement costs the server a parse, a plan
and an executor start, and psycopg a send and its parameters' dumping, whatever its rows, and
these were 8 of a delivery's 12. The writes keep what one at a time leaves: the tasks in order
(their `seq`), then the merges (into a task of the run too), of several writes of one row the
last (an issue's assignment and loop guard, a twin's payload) or, for a session's outcome
record, the first with what later ones fill in. What only the one-by-one path settles
exactly raises `Unsettled` and the caller applies the run again one delivery at a time: a
type's first placement (no cursor row yet), a task held because its session is paused, a twin
claimed between its look-up and the merge, and any error (a duplicate id above all: which
delivery failed is not known once the statements are pipelined).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import DBAPICursor

from claude_hooks.core.domain import Task, TaskState
from claude_hooks.core.outcomes import OutcomeFact
from claude_hooks.core.scheduler import Candidate, choose
from claude_hooks.errors import NoInstanceError
from claude_hooks.store import placing, wakeups
from claude_hooks.store.base import Dispatched, Placement
from claude_hooks.store.decisions import writes_first
from claude_hooks.store.group_commit import DispatchCall
from claude_hooks.store.intake import Settled, ask_twins, insert_deliveries, send_merges
from claude_hooks.store.labels import write_labels
from claude_hooks.store.outcomes import write_all_outcomes
from claude_hooks.store.prepared import pipelined
from claude_hooks.store.queueing import queue_all


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

    def placed(self, placement: Placement) -> None:
        task = placement.task
        self.added[task.agent] += 1
        self.holding.setdefault(task.session_key, set()).add(task.agent)
        self.woken.add(task.agent)
        if placement.busy:
            self.busy.add(task.type)

    def twin(self, task: Task) -> str | None:
        """The first task of `task`'s session and kind an earlier delivery of the run queued."""
        return self.twins.get((task.session_key, task.kind.value))

    def delivered(self, placements: Sequence[Placement]) -> None:
        """A delivery's tasks are queued: later deliveries' tasks merge into them."""
        for placement in placements:
            task = placement.task
            self.twins.setdefault((task.session_key, task.kind.value), task.id)

    def finish(self, conn: sa.Connection) -> None:
        """Move the cursors the run moved, and wake the workers and thieves it concerns."""
        moved = {t: p for t, p in self.positions.items() if p != self.start[t]}
        if moved:
            placing.move_cursors(conn, moved)
        wakes = [wakeups.Wake(wakeups.TASK, agent) for agent in sorted(self.woken)]
        wakes += [wakeups.Wake(wakeups.BUSY, agent_type) for agent_type in sorted(self.busy)]
        wakeups.notify_all(conn, wakes)


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


class _Asked:
    """The run's look-ups, sent in one statement each: the twins of the tasks that may merge,
    and the candidates of each (type, session key) once."""

    def __init__(self, conn: sa.Connection, calls: Sequence[DispatchCall]) -> None:
        merging = [t for call in calls for t in call.tasks if t.id not in call.separate]
        self._twins = ask_twins(conn, merging) if merging else None
        keys = list(dict.fromkeys((t.type, t.session_key) for c in calls for t in c.tasks))
        self._keys = keys
        self._candidates = placing.ask_all_candidates(conn, keys) if keys else None

    def read(self) -> tuple[list[str | None], dict[tuple[str, str], list[Any]]]:
        """The twins' ids (None: none), in order; the candidates' rows by (type, session key)."""
        twins = [row[0] for row in self._twins.fetchall()] if self._twins is not None else []
        rows: defaultdict[int, list[Any]] = defaultdict(list)
        if self._candidates is not None:
            for row in self._candidates.fetchall():
                rows[int(row[0])].append(row[1:])
        return twins, {key: rows[place] for place, key in enumerate(self._keys, 1)}


def apply(conn: sa.Connection, calls: Sequence[DispatchCall]) -> list[Dispatched]:
    """Apply `calls` (each `fits`) in order within the caller's transaction; raises
    `Unsettled` (or the error met) if the caller must apply them one at a time instead."""
    merges: list[tuple[str, Task]] = []  # (twin, task merged into it), in order
    queued: list[Placement] = []  # every placement of the run, in order, not read yet
    facts: list[OutcomeFact] = []
    settled: list[Settled] = []
    answers: list[tuple[list[Placement], list[Task], NoInstanceError | None]] = []
    with pipelined(conn):
        locked = _lock(conn, calls)
        asked = _Asked(conn, calls)
        run = _Run(_positions(locked))  # the first read: every look-up's round trip
        twins, candidates = asked.read()
        looked_up = iter(twins)
        for call in calls:
            merged: list[Task] = []
            placements: list[Placement] = []
            failure: NoInstanceError | None = None
            for task in call.tasks:
                if task.id not in call.separate:
                    twin = next(looked_up) or run.twin(task)
                    if twin is not None:
                        merges.append((twin, task))
                        merged.append(dataclasses.replace(task, id=twin))
                        continue
                if failure is not None:
                    continue  # as one at a time: placing stops at a type with no instance
                try:
                    spot = run.choose(task, candidates[task.type, task.session_key])
                except NoInstanceError as exc:
                    failure = exc
                    continue
                busy = spot.running or spot.queued > 0
                on = dataclasses.replace(task, agent=spot.agent)
                placements.append(Placement(on, spot.queued + 1, busy))
                run.placed(placements[-1])
            run.delivered(placements)
            queued.extend(placements)
            decision = call.decision
            if decision is not None:
                facts.extend(decision.outcomes)
                if decision.labels is not None and failure is None:
                    write_labels(conn, *decision.labels)
            # The record names the tasks; their `seq` and state are read after the pipeline.
            settle = call.settle
            record = settle(list(placements), merged, [], failure) if settle is not None else None
            if record is not None:
                settled.append(record)
            answers.append((placements, merged, failure))
        # The writes, one statement each: the tasks before the merges (into them too).
        inserted = queue_all(conn, [p.task for p in queued]) if queued else None
        merging = send_merges(conn, merges) if merges else None
        write_all_outcomes(conn, facts)
        if settled:
            insert_deliveries(conn, settled)
        run.finish(conn)
    if merging is not None and len(merging[0].fetchall()) != merging[1]:
        raise Unsettled("a twin was claimed between its look-up and the merge")
    rows = {row[0]: (int(row[1]), row[2]) for row in inserted.fetchall()} if inserted else {}
    if any(state != TaskState.QUEUED.value for _, state in rows.values()):
        raise Unsettled("a task was held: its session is paused")
    return [
        Dispatched(
            [_read(p, rows[p.task.id][0]) for p in placements],
            failure,
            recorded=True,
            merged=merged,
        )
        for placements, merged, failure in answers
    ]


def _read(placement: Placement, seq: int) -> Placement:
    """`placement` with its task's `seq` as inserted (and queued: a held one is unsettled)."""
    task = dataclasses.replace(placement.task, seq=seq, state=TaskState.QUEUED)
    return Placement(task, placement.position, placement.busy)
