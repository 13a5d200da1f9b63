"""Writing a task into the queue of the instance chosen for it, within the caller's transaction.

The insert (held if its session is paused) is sent without waiting, and what it returns (its
`seq`, whether it was held) is read later, so that under psycopg's pipeline it travels
with the delivery's last statements; the caller sends the wake-ups (`wakeups.placed`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import DBAPICursor

from claude_hooks.core.domain import Task, TaskState
from claude_hooks.store.base import Placement
from claude_hooks.store.placing import Spot
from claude_hooks.store.prepared import Prepared, floats
from claude_hooks.store.schema import paused_sessions, tasks

NEXT_SEQ = sa.select(sa.func.coalesce(sa.func.max(tasks.c.seq), 0) + 1).scalar_subquery()

# A task of a paused session (see `commands`) waits as held from the start: one statement,
# where an insert and an update were. On the webhook path, built once: building a statement
# costs more than running it.
_PAUSED = sa.exists().where(paused_sessions.c.session_key == sa.bindparam("b_key"))
_INSERT_TASK = Prepared(
    tasks.insert()
    .values(
        seq=NEXT_SEQ,
        state=sa.case((_PAUSED, TaskState.HELD.value), else_=TaskState.QUEUED.value),
    )
    .returning(tasks.c.seq, tasks.c.state)
)


_QUEUED, _HELD = TaskState.QUEUED.value, TaskState.HELD.value
# A run's tasks (`batch`, PostgreSQL), in one statement however many: the same rows as
# `_INSERT_TASK` once per task, in order (`seq` the table's last plus the row's place).
_INSERT_TASKS = Prepared(
    sa.text(
        "INSERT INTO tasks (id, type, agent, kind, session_key, repo, number, payload, state,"
        " seq, attempts, enqueued_at, delivery_id)"
        " SELECT t.id, t.type, t.agent, t.kind, t.session_key, t.repo, t.number,"
        " CAST(t.payload AS json),"
        " CASE WHEN EXISTS (SELECT 1 FROM paused_sessions p WHERE p.session_key = t.session_key)"
        f" THEN '{_HELD}' ELSE '{_QUEUED}' END,"
        " (SELECT coalesce(max(seq), 0) FROM tasks) + t.ord, t.attempts, t.enqueued_at,"
        " t.delivery_id"
        " FROM unnest(CAST(:id AS text[]), CAST(:type AS text[]), CAST(:agent AS text[]),"
        " CAST(:kind AS text[]), CAST(:session_key AS text[]), CAST(:repo AS text[]),"
        " CAST(:number AS int[]), CAST(:payload AS text[]), CAST(:attempts AS int[]),"
        " CAST(:enqueued_at AS float8[]), CAST(:delivery_id AS text[]))"
        " WITH ORDINALITY AS t(id, type, agent, kind, session_key, repo, number, payload,"
        " attempts, enqueued_at, delivery_id, ord)"
        " ORDER BY t.ord"
        " RETURNING id, seq, state"
    ),
    binary=True,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Sent:
    """A task sent to its instance's queue; its `seq` and whether it was held are read later."""

    task: Task  # on its instance
    spot: Spot
    inserted: DBAPICursor  # (seq, state)

    @property
    def busy(self) -> bool:
        """The instance was running or had a queue: the task does not start at once."""
        return self.spot.running or self.spot.queued > 0

    def placement(self, read: bool = True) -> Placement:
        """The placement; `read` False: without reading (`seq` 0, state queued)."""
        task = self.task
        if read:
            seq, state = self.inserted.fetchone() or (0, TaskState.QUEUED.value)
            task = dataclasses.replace(task, seq=int(seq), state=TaskState(state))
        return Placement(task, self.spot.queued + 1, self.busy)

    def close(self) -> None:
        """Let the statements go unread (SQLite commits nothing with one in progress)."""
        self.inserted.close()


def queue(conn: sa.Connection, task: Task, spot: Spot) -> Sent:
    """Insert `task` at the tail of `spot`'s queue, held if its session is paused."""
    inserted = _INSERT_TASK.run(
        conn,
        {
            "b_key": task.session_key,
            "id": task.id,
            "type": task.type,
            "agent": spot.agent,
            "kind": task.kind.value,
            "session_key": task.session_key,
            "repo": task.repo,
            "number": task.number,
            "payload": task.payload,
            "attempts": task.attempts,
            "enqueued_at": task.enqueued_at,
            "delivery_id": task.delivery_id,
        },
    )
    return Sent(dataclasses.replace(task, agent=spot.agent), spot, inserted)


def queue_all(conn: sa.Connection, queued: Sequence[Task]) -> DBAPICursor:
    """PostgreSQL: insert each task at the tail of its instance's (`agent`) queue, in order,
    held if its session is paused, in one statement; its rows are (id, seq, state), one a
    task."""
    return _INSERT_TASKS.run(
        conn,
        {
            "id": [task.id for task in queued],
            "type": [task.type for task in queued],
            "agent": [task.agent for task in queued],
            "kind": [task.kind.value for task in queued],
            "session_key": [task.session_key for task in queued],
            "repo": [task.repo for task in queued],
            "number": [task.number for task in queued],
            # As the JSON column's own binding serialises it (psycopg's `Json`: `json.dumps`).
            "payload": [json.dumps(task.payload) for task in queued],
            "attempts": [task.attempts for task in queued],
            "enqueued_at": floats(task.enqueued_at for task in queued),
            "delivery_id": [task.delivery_id for task in queued],
        },
    )
