"""Elastic instances in SQL: read a type's instances and waits under its cursor lock, ask the
pure rule (`core/elastic.decide`) and apply its verdict in the same transaction.

An instance added gets at once the queued tasks that waited longest (one key's tasks each, as
`stealing` takes them), whatever the type's `rebalance`: a new instance must get the waiting
work. It has no node yet: a node with room takes it at its next look (a signal is written, so
every node looks at once), and until one has room it waits, as any instance does. An instance
is retired only idle with an empty queue: under the cursor lock no task can be placed on it
meanwhile, and a claim takes only from its own queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import sqlalchemy as sa

from claude_hooks.core.domain import TaskState
from claude_hooks.core.elastic import Act, Scaling, Seat, Verdict, decide, waits_wanted
from claude_hooks.store import stealing, wakeups
from claude_hooks.store.placing import lock_cursor
from claude_hooks.store.schema import agents, instance_changes, signals, tasks

# The signal every node acts on by taking and letting go of instances and syncing its workers.
SIGNAL_AGENTS = "agents"
CHANGES_KEPT = 1000  # the newest changes kept per type; older ones are deleted as new come

_QUEUED = TaskState.QUEUED.value
_RUNNING = TaskState.RUNNING.value


@dataclass(frozen=True, slots=True)
class InstanceChange:
    """One change the rule made, as recorded."""

    id: int
    type: str
    at: float
    node: str | None
    act: str  # "add" or "retire"
    names: tuple[str, ...]
    reason: str
    wait_seconds: float
    moved: int  # queued tasks moved to the added instances


@dataclass(frozen=True, slots=True)
class Scaled:
    """What one pass did for a type: the verdict and, when it added, the tasks moved."""

    verdict: Verdict
    moved: dict[str, tuple[str, ...]] = field(default_factory=dict)  # new name -> task ids


class ElasticStore(Protocol):
    async def scale(
        self, agent_type: str, scaling: Scaling, now: float, node: str | None
    ) -> Scaled: ...
    async def changes(self, limit: int, agent_type: str | None = None) -> list[InstanceChange]: ...


def _seats(conn: sa.Connection, agent_type: str) -> list[Seat]:
    active = (
        sa.select(tasks.c.agent, tasks.c.state, sa.func.count())
        .join(agents, agents.c.name == tasks.c.agent)
        .where(agents.c.type == agent_type, tasks.c.state.in_([_QUEUED, _RUNNING]))
        .group_by(tasks.c.agent, tasks.c.state)
    )
    running: set[str] = set()
    queued: dict[str, int] = {}
    for agent, state, count in conn.execute(active):
        if state == _RUNNING:
            running.add(agent)
        else:
            queued[agent] = int(count)
    rows = conn.execute(
        sa.select(agents.c.name, agents.c.auto, agents.c.enabled, agents.c.created_at)
        .where(agents.c.type == agent_type)
        .order_by(agents.c.name)
    ).all()
    seats = []
    for name, auto, enabled, created_at in rows:
        idle_since = float(created_at)
        if auto and name not in running and not queued.get(name):
            # Only an added instance may be retired: its last end is looked up, not every one's.
            ended = conn.scalar(
                sa.select(sa.func.max(tasks.c.finished_at)).where(
                    tasks.c.agent == name, tasks.c.finished_at >= created_at
                )
            )
            idle_since = max(idle_since, float(ended or 0.0))
        seats.append(
            Seat(name, bool(auto), bool(enabled), name in running, queued.get(name, 0), idle_since)
        )
    return seats


def _waits(
    conn: sa.Connection, agent_type: str, scaling: Scaling, wanted: int, now: float
) -> list[float]:
    """Up to `wanted` waits of the type's queued tasks that another instance could start now
    (`stealing.TAKEABLE`: behind other work on its instance, its key free) and that waited
    `scale_up_wait` (the only ones the rule counts), the first in queue order: ordered by
    wait, every queued task would be looked at (69 s with 20,000 queued on SQLite)."""
    if wanted <= 0:
        return []
    query = (
        sa.select(tasks.c.enqueued_at)
        .where(
            tasks.c.type == agent_type,
            tasks.c.enqueued_at <= now - scaling.scale_up_wait,
            *stealing.TAKEABLE,
        )
        .order_by(tasks.c.seq)  # as `stealing`: the queue's order walks an index and stops
        .limit(wanted)
    )
    return [now - float(at) for at in conn.scalars(query)]


def _apply(
    conn: sa.Connection, agent_type: str, verdict: Verdict, now: float
) -> dict[str, tuple[str, ...]]:
    moved: dict[str, tuple[str, ...]] = {}
    if verdict.act is Act.ADD:
        for name in verdict.names:
            conn.execute(
                agents.insert().values(
                    name=name, type=agent_type, enabled=True, created_at=now, auto=True
                )
            )
            theft = stealing.take(conn, name, agent_type, now)
            if theft is not None:
                moved[name] = theft.task_ids
                wakeups.notify(conn, wakeups.TASK, theft.source)
    elif verdict.act is Act.RETIRE:
        busy = sa.exists().where(
            tasks.c.agent == agents.c.name, tasks.c.state.in_([_QUEUED, _RUNNING])
        )
        conn.execute(
            agents.delete().where(
                agents.c.name.in_(verdict.names), agents.c.auto == sa.true(), ~busy
            )
        )
    return moved


def _record(
    conn: sa.Connection,
    agent_type: str,
    verdict: Verdict,
    moved: int,
    now: float,
    node: str | None,
) -> None:
    conn.execute(
        instance_changes.insert().values(
            type=agent_type,
            at=now,
            node=node,
            act=verdict.act.value,
            names=",".join(verdict.names),
            reason=verdict.reason,
            wait_seconds=verdict.wait,
            moved=moved,
        )
    )
    oldest_kept = (
        sa.select(instance_changes.c.id)
        .where(instance_changes.c.type == agent_type)
        .order_by(instance_changes.c.id.desc())
        .offset(CHANGES_KEPT)
        .limit(1)
        .scalar_subquery()
    )
    conn.execute(
        instance_changes.delete().where(
            instance_changes.c.type == agent_type, instance_changes.c.id <= oldest_kept
        )
    )
    conn.execute(signals.insert().values(kind=SIGNAL_AGENTS, target=agent_type, created_at=now))
    wakeups.notify(conn, wakeups.SIGNAL)


def _change(row: sa.Row[tuple[object, ...]]) -> InstanceChange:
    m = row._mapping
    return InstanceChange(
        id=int(m["id"]),
        type=m["type"],
        at=float(m["at"]),
        node=m["node"],
        act=m["act"],
        names=tuple(name for name in m["names"].split(",") if name),
        reason=m["reason"],
        wait_seconds=float(m["wait_seconds"]),
        moved=int(m["moved"]),
    )


class SqlElastic:
    """`ElasticStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def scale(
        self, agent_type: str, scaling: Scaling, now: float, node: str | None
    ) -> Scaled:
        """One pass of the rule for a type, read, decided and applied in one transaction under
        the type's cursor lock (placing and stealing take it too); `node` is recorded as the
        one that decided."""
        with self.engine.begin() as conn:
            lock_cursor(conn, agent_type)
            seats = _seats(conn, agent_type)
            waits = _waits(conn, agent_type, scaling, waits_wanted(scaling, seats), now)
            taken: Sequence[str] = conn.scalars(sa.select(agents.c.name)).all()
            verdict = decide(agent_type, scaling, seats, waits, now, taken)
            if verdict.act is Act.NOTHING:
                return Scaled(verdict)
            moved = _apply(conn, agent_type, verdict, now)
            _record(conn, agent_type, verdict, sum(map(len, moved.values())), now, node)
        return Scaled(verdict, moved)

    async def changes(self, limit: int, agent_type: str | None = None) -> list[InstanceChange]:
        """The newest changes first."""
        query = sa.select(instance_changes).order_by(instance_changes.c.id.desc()).limit(limit)
        if agent_type is not None:
            query = query.where(instance_changes.c.type == agent_type)
        with self.reader.connect() as conn:
            return [_change(row) for row in conn.execute(query)]
