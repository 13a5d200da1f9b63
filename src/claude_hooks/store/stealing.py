"""Work stealing: an idle instance with an empty queue takes queued work from a peer of its type.

The rule is the simulator's `steal` policy (claude_hooks.capacity): take the oldest queued task
of another enabled instance whose session key is neither running nor queued ahead of it
anywhere, together with the later tasks of that key on the same instance, so a key stays on one
instance and in order. The head of an idle instance's queue stays: it is about to start there.
It runs under the type's cursor lock, like `placing.place`, so two
processes sharing the database never take the same task.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from claude_hooks.core.domain import TaskState
from claude_hooks.store.placing import lock_cursor
from claude_hooks.store.schema import agents, task_notes, tasks

_QUEUED = TaskState.QUEUED.value
_RUNNING = TaskState.RUNNING.value

_THIEF = sa.select(agents.c.type).where(
    agents.c.name == sa.bindparam("b_agent"), agents.c.enabled == sa.true()
)
_OCCUPIED = (
    sa.select(sa.literal(1))
    .where(tasks.c.agent == sa.bindparam("b_agent"), tasks.c.state.in_([_QUEUED, _RUNNING]))
    .exists()
)
_OTHER = tasks.alias("other")
_PEER = tasks.alias("peer")
# A queued task another instance could start now: its key neither runs nor waits ahead of it
# anywhere, and it is not the head of an idle instance's queue (that one starts there at once;
# it may have just been stolen by that instance).
# Each EXISTS is one probe of an index by its full prefix (`ix_tasks_agent_state_seq`,
# `ix_tasks_session_state`): with an OR inside one EXISTS, PostgreSQL planned a join over the
# whole queue (14 s for the oldest takeable task with 20,000 queued).
TAKEABLE = (
    tasks.c.state == _QUEUED,
    tasks.c.cancel_requested == sa.false(),
    sa.or_(
        sa.exists().where(_PEER.c.agent == tasks.c.agent, _PEER.c.state == _RUNNING),
        sa.exists().where(
            _PEER.c.agent == tasks.c.agent,
            _PEER.c.state == _QUEUED,
            _PEER.c.seq < tasks.c.seq,
        ),
    ),
    ~sa.exists().where(_OTHER.c.session_key == tasks.c.session_key, _OTHER.c.state == _RUNNING),
    ~sa.exists().where(
        _OTHER.c.session_key == tasks.c.session_key,
        _OTHER.c.state == _QUEUED,
        _OTHER.c.seq < tasks.c.seq,
    ),
)
_VICTIM = (
    sa.select(tasks.c.id, tasks.c.agent, tasks.c.session_key, tasks.c.seq)
    .join(agents, agents.c.name == tasks.c.agent)
    .where(
        tasks.c.type == sa.bindparam("b_type"),
        tasks.c.agent != sa.bindparam("b_agent"),
        agents.c.enabled == sa.true(),
        *TAKEABLE,
    )
    .order_by(tasks.c.seq)
    .limit(1)
)
_IDLE = agents.alias("idle")
_WAITING_BESIDE_IDLE = (
    sa.select(tasks.c.type, sa.func.count())
    .where(
        *TAKEABLE,
        sa.exists().where(
            _IDLE.c.type == tasks.c.type,
            _IDLE.c.enabled == sa.true(),
            ~sa.exists().where(
                _PEER.c.agent == _IDLE.c.name, _PEER.c.state.in_([_QUEUED, _RUNNING])
            ),
        ),
    )
    .group_by(tasks.c.type)
)
_FOLLOWERS = (
    sa.select(tasks.c.id)
    .where(
        tasks.c.agent == sa.bindparam("b_from"),
        tasks.c.session_key == sa.bindparam("b_key"),
        tasks.c.state == _QUEUED,
        tasks.c.seq >= sa.bindparam("b_seq"),
    )
    .order_by(tasks.c.seq)
)
_NEXT_SEQ = sa.select(sa.func.coalesce(sa.func.max(tasks.c.seq), 0) + 1).scalar_subquery()
_MOVE = (
    tasks.update()
    .where(tasks.c.id == sa.bindparam("b_id"), tasks.c.state == _QUEUED)
    .values(agent=sa.bindparam("b_agent"), seq=_NEXT_SEQ)
)


@dataclass(frozen=True, slots=True)
class Theft:
    """Tasks moved to an idle instance, in their new queue order, and where they were."""

    source: str
    task_ids: tuple[str, ...]


def worth_trying(conn: sa.Connection, agent: str) -> bool:
    """A lock-free look: is `agent` free, and is there a task it could take? Idle workers ask
    twice a second, so the common "no" must not take the writer's lock."""
    agent_type = conn.execute(_THIEF, {"b_agent": agent}).scalar()
    if agent_type is None or conn.execute(sa.select(_OCCUPIED), {"b_agent": agent}).scalar():
        return False
    found = conn.execute(_VICTIM, {"b_type": agent_type, "b_agent": agent}).first()
    return found is not None


def waiting_beside_idle(conn: sa.Connection) -> dict[str, int]:
    """Per type, the queued tasks that could start now while an instance of their type sits
    idle with an empty queue: what `steal` takes (0 under it, but for a moment)."""
    return {agent_type: int(count) for agent_type, count in conn.execute(_WAITING_BESIDE_IDLE)}


def steal(conn: sa.Connection, agent: str, now: float) -> Theft | None:
    """Move work to `agent` under its type's cursor lock; the caller's transaction commits it."""
    agent_type = conn.execute(_THIEF, {"b_agent": agent}).scalar()
    if agent_type is None:
        return None
    lock_cursor(conn, agent_type)
    # Looked at again under the lock: the elastic rule may have retired the thief meanwhile.
    if conn.execute(_THIEF, {"b_agent": agent}).scalar() is None:
        return None
    if conn.execute(sa.select(_OCCUPIED), {"b_agent": agent}).scalar():
        return None
    return take(conn, agent, agent_type, now)


def take(conn: sa.Connection, agent: str, agent_type: str, now: float) -> Theft | None:
    """Move the oldest takeable task of a peer (with its key's later tasks there) to the tail
    of `agent`'s queue; the caller holds the type's cursor lock and commits."""
    victim = conn.execute(_VICTIM, {"b_type": agent_type, "b_agent": agent}).first()
    if victim is None:
        return None
    moved = tuple(
        conn.scalars(
            _FOLLOWERS,
            {"b_from": victim.agent, "b_key": victim.session_key, "b_seq": victim.seq},
        ).all()
    )
    for task_id in moved:
        conn.execute(_MOVE, {"b_id": task_id, "b_agent": agent})
        _note(conn, task_id, victim.agent, now)
    return Theft(victim.agent, moved)


def _note(conn: sa.Connection, task_id: str, source: str, now: float) -> None:
    values = {"moved_from": source, "moved_at": now}
    updated = conn.execute(
        task_notes.update().where(task_notes.c.task_id == task_id).values(**values)
    )
    if updated.rowcount == 0:
        conn.execute(task_notes.insert().values(task_id=task_id, **values))
