"""Placing a task on an instance inside one transaction, with the database as the truth.

Every backend serialises the placements of one type: PostgreSQL by a row lock on the type's
cursor row (`SELECT ... FOR UPDATE`), SQLite because its writer begins IMMEDIATE. Under that
lock the candidates' state is read from the tasks table and handed to the pure
`scheduler.choose`, so processes sharing one database make the choices a single one would make,
in commit order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPICursor

from claude_hooks.core.domain import TaskState
from claude_hooks.core.scheduler import Candidate, choose
from claude_hooks.errors import NoInstanceError
from claude_hooks.store.prepared import Prepared
from claude_hooks.store.schema import agents, cursors, queue_lengths, tasks

_QUEUED = TaskState.QUEUED.value
_RUNNING = TaskState.RUNNING.value

_CURSOR = Prepared(
    sa.select(cursors.c.position).where(cursors.c.type == sa.bindparam("b_type")).with_for_update()
)
_NEW_CURSOR = {
    "postgresql": postgresql.insert(cursors).on_conflict_do_nothing(index_elements=["type"]),
    "sqlite": sqlite.insert(cursors).on_conflict_do_nothing(index_elements=["type"]),
}
_MOVE_CURSOR = Prepared(
    cursors.update()
    .where(cursors.c.type == sa.bindparam("b_type"))
    .values(position=sa.bindparam("b_position"))
)
# Per candidate, in one statement: whether it runs a task (a lookup in the (agent, state, seq)
# index), its queue length as the triggers of migration 0011 keep it (so placing costs the same
# with 20,000 tasks queued as with none), and whether it holds the session's queued or running
# work (a lookup in the (session_key, state, ...) index).
_RUNS = (
    sa.select(sa.literal(1))
    .where(tasks.c.agent == agents.c.name, tasks.c.state == _RUNNING)
    .exists()
)
# Not correlated: a correlated form let SQLite walk the candidate's whole queue by its agent.
_HOLDS = agents.c.name.in_(
    sa.select(tasks.c.agent).where(
        tasks.c.session_key == sa.bindparam("b_key"),
        sa.or_(tasks.c.state == _QUEUED, tasks.c.state == _RUNNING),
    )
)
_CANDIDATES = Prepared(
    sa.select(agents.c.name, _RUNS, sa.func.coalesce(queue_lengths.c.queued, 0), _HOLDS)
    .select_from(agents.outerjoin(queue_lengths, queue_lengths.c.agent == agents.c.name))
    .where(agents.c.type == sa.bindparam("b_type"), agents.c.enabled == sa.true())
    .order_by(agents.c.name)
)


# A run's look-ups and cursor moves (`batch`, PostgreSQL), in one statement each: the
# candidates of each (type, session key), their rows tagged with its place (from 1) and in the
# order `_CANDIDATES` gives them; the cursors of every type the run moved.
_ALL_CANDIDATES = Prepared(
    sa.text(
        "SELECT k.ord, a.name,"
        " EXISTS (SELECT 1 FROM tasks t WHERE t.agent = a.name"
        f" AND t.state = '{_RUNNING}'),"
        " coalesce(q.queued, 0),"
        " a.name IN (SELECT t.agent FROM tasks t WHERE t.session_key = k.key"
        f" AND (t.state = '{_QUEUED}' OR t.state = '{_RUNNING}'))"
        " FROM unnest(CAST(:b_types AS text[]), CAST(:b_keys AS text[]))"
        " WITH ORDINALITY AS k(type, key, ord)"
        " JOIN agents a ON a.type = k.type AND a.enabled = true"
        " LEFT OUTER JOIN queue_lengths q ON q.agent = a.name"
        " ORDER BY k.ord, a.name"
    ),
    binary=True,
)
_MOVE_CURSORS = Prepared(
    sa.text(
        "UPDATE cursors SET position = m.position FROM unnest(CAST(:b_types AS text[]),"
        " CAST(:b_positions AS bigint[])) AS m(type, position) WHERE cursors.type = m.type"
    ),
    binary=True,
)


@dataclass(frozen=True, slots=True)
class Spot:
    """The instance chosen for a task, and what it was doing when it was chosen."""

    agent: str
    queued: int
    running: bool


def _make_cursor(conn: sa.Connection, agent_type: str) -> None:
    """The type's cursor row, made on its first use (an insert that yields to a concurrent one)."""
    conn.execute(_NEW_CURSOR[conn.dialect.name], {"type": agent_type, "position": 0})


def lock_cursor(conn: sa.Connection, agent_type: str) -> int:
    """The type's cursor, locked until the transaction ends."""
    params = {"b_type": agent_type}
    position = _CURSOR.scalar(conn, params)
    if position is None:
        _make_cursor(conn, agent_type)
        position = _CURSOR.scalar(conn, params)
    return int(position)


@dataclass(frozen=True, slots=True)
class Asked:
    """The cursor lock and the candidates of a placement, sent and not read yet."""

    agent_type: str
    session_key: str
    locked: DBAPICursor
    candidates: DBAPICursor


def ask(conn: sa.Connection, agent_type: str, session_key: str) -> Asked:
    """Send the type's cursor lock and its candidates; `place` reads them. Under psycopg's
    pipeline (see `prepared`) both travel with whatever else was sent before a read, in one
    round trip. The candidates are still read under the lock: the server runs the two in
    order, and under READ COMMITTED the second one takes its snapshot once the first holds
    the lock."""
    return Asked(
        agent_type,
        session_key,
        ask_lock(conn, agent_type),
        ask_candidates(conn, agent_type, session_key),
    )


def ask_lock(conn: sa.Connection, agent_type: str) -> DBAPICursor:
    """Send the type's cursor lock; its row is the cursor's position (none: not made yet)."""
    return _CURSOR.run(conn, {"b_type": agent_type})


def ask_candidates(conn: sa.Connection, agent_type: str, session_key: str) -> DBAPICursor:
    """Send the look-up of the type's candidates for a task of `session_key`; its rows are
    (name, running, queued, holds the session), in name order (see `candidates`)."""
    return _CANDIDATES.run(conn, {"b_type": agent_type, "b_key": session_key})


def ask_all_candidates(conn: sa.Connection, asked: Sequence[tuple[str, str]]) -> DBAPICursor:
    """PostgreSQL: send `ask_candidates` for each (type, session key) of `asked` in one
    statement, read in one snapshot; its rows are `ask_candidates`'s, each after the place
    in `asked` (from 1) it answers (a type with no instance: none)."""
    return _ALL_CANDIDATES.run(
        conn, {"b_types": [t for t, _ in asked], "b_keys": [k for _, k in asked]}
    )


def candidates(rows: Sequence[Any]) -> tuple[list[Candidate], str | None]:
    """The snapshot `choose` takes, and the instance holding the session, from the rows of
    `ask_candidates`."""
    snapshot = [Candidate(name, bool(running), int(queued)) for name, running, queued, _ in rows]
    return snapshot, next((row[0] for row in rows if row[3]), None)


def move_cursor(conn: sa.Connection, agent_type: str, position: int) -> None:
    _MOVE_CURSOR.run(conn, {"b_type": agent_type, "b_position": position})


def move_cursors(conn: sa.Connection, positions: dict[str, int]) -> None:
    """PostgreSQL: `move_cursor` for each type of `positions`, in one statement."""
    _MOVE_CURSORS.run(conn, {"b_types": list(positions), "b_positions": list(positions.values())})


def place(
    conn: sa.Connection, agent_type: str, session_key: str, asked: Asked | None = None
) -> Spot:
    """Choose the instance of `agent_type` for a task of `session_key` and move the cursor;
    the caller writes the task in the same transaction. `asked`: sent already (`ask`)."""
    if asked is None or (asked.agent_type, asked.session_key) != (agent_type, session_key):
        asked = ask(conn, agent_type, session_key)
    position = asked.locked.fetchone()
    rows = asked.candidates.fetchall()
    if position is None:  # the type's first placement: make its cursor, then read under it
        _make_cursor(conn, agent_type)
        return place(conn, agent_type, session_key)
    cursor = int(position[0])
    if not rows:
        raise NoInstanceError(agent_type)
    snapshot, holder = candidates(rows)
    choice = choose(snapshot, cursor, holder)
    if choice.cursor != cursor:
        move_cursor(conn, agent_type, choice.cursor)
    chosen = snapshot[choice.index]
    return Spot(chosen.name, chosen.queued, chosen.running)
