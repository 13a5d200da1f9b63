"""Nodes on one database: membership and heartbeats, instance leases, the rescue of dead
nodes' work, and the leader of the background duties.

A node is live while `heartbeat_at + lease_seconds >= now` and it has neither stopped nor been
declared dead. An instance is held by at most one node (`agents.node`); a worker claims work
only on an instance its node holds (see `SqlStore.claim_next`), and every task records the node
running it, so a node declared dead can no longer change its tasks once they are rescued.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from claude_hooks.core.domain import TaskState
from claude_hooks.core.node_share import Lease, Member, Moves, moves
from claude_hooks.errors import ConflictError
from claude_hooks.store.runs import RunOutcome, close_run
from claude_hooks.store.schema import agents, leaders, nodes, queue_lengths, tasks
from claude_hooks.store.upsert import upsert

_RUNNING = TaskState.RUNNING.value


@dataclass(frozen=True, slots=True)
class Recovered:
    """A task found running at start-up, and what recovery did with it."""

    id: str
    agent: str
    state: TaskState
    pid: int | None
    pid_start: int | None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node says of itself when it joins."""

    name: str
    incarnation: str  # new at every start: tells a restarted node from the one before
    host: str
    pid: int
    url: str | None
    capacity: int
    lease_seconds: float
    types: frozenset[str] = frozenset()  # the types its configuration runs; empty: all


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    state: str  # live, dead or stopped
    host: str
    pid: int
    url: str | None
    capacity: int
    lease_seconds: float
    started_at: float
    heartbeat_at: float
    instances: tuple[str, ...]
    spooled: int = 0  # deliveries in its spool, not yet in the database


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """The work on a node now: the tasks it runs, and those queued on the instances it holds."""

    running: int
    queued: int


class NodeStore(Protocol):
    async def join(self, node: NodeInfo, now: float) -> None: ...
    async def heartbeat(self, node: NodeInfo, now: float, spooled: int = 0) -> bool: ...
    async def leave(self, node: NodeInfo, now: float) -> list[str]: ...
    async def rescue(self, max_attempts: int, now: float) -> list[Recovered]: ...
    async def rebalance(self, node: NodeInfo, now: float) -> Moves: ...
    async def lead(self, duty: str, node: NodeInfo, now: float) -> bool: ...
    async def resign(self, duty: str, node: NodeInfo) -> None: ...
    async def list_nodes(self, now: float) -> list[NodeView]: ...
    async def load(self, name: str) -> NodeLoad: ...


def _live(now: float) -> sa.ColumnElement[bool]:
    return sa.and_(
        nodes.c.stopped_at.is_(None),
        nodes.c.dead_at.is_(None),
        nodes.c.heartbeat_at + nodes.c.lease_seconds >= now,
    )


def _state(row: Any, now: float) -> str:
    if row.stopped_at is not None:
        return "stopped"
    if row.dead_at is not None or row.heartbeat_at + row.lease_seconds < now:
        return "dead"
    return "live"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def settle_running(
    conn: sa.Connection, where: sa.ColumnElement[bool], max_attempts: int, now: float, why: str
) -> list[Recovered]:
    """Tasks found running whose process is gone: back to the head of their queue with the
    attempt counted, cancelled if that was asked, failed once `max_attempts` runs were lost;
    their runs recorded as lost `why`."""
    recovered: list[Recovered] = []
    rows = conn.execute(
        sa.select(
            tasks.c.id,
            tasks.c.agent,
            tasks.c.attempts,
            tasks.c.cancel_requested,
            tasks.c.seq,
            tasks.c.pid,
            tasks.c.pid_start,
        )
        .where(tasks.c.state == _RUNNING, where)
        .order_by(tasks.c.seq)
    ).all()
    for task_id, agent, attempts, cancel_requested, seq, pid, pid_start in rows:
        values: dict[str, Any] = {"pid": None, "pid_start": None, "node": None}
        if cancel_requested:
            state = TaskState.CANCELLED
            values.update(finished_at=now, error=f"cancelled while {why}")
        elif attempts >= max_attempts:
            state = TaskState.FAILED
            values.update(
                finished_at=now,
                error=f"gave up after {attempts} attempts: {why} while the task was running "
                "each time",
            )
        else:
            state = TaskState.QUEUED
            values.update(started_at=None, seq=head_seq(conn, agent, seq))
        conn.execute(
            tasks.update().where(tasks.c.id == task_id).values(state=state.value, **values)
        )
        recovered.append(Recovered(task_id, agent, state, pid, pid_start))
    close_run(conn, [r.id for r in recovered], RunOutcome.LOST, now, why)
    return recovered


def head_seq(conn: sa.Connection, agent: str, seq: int) -> int:
    """A `seq` that puts a task back at the head of `agent`'s queue."""
    head = conn.scalar(
        sa.select(sa.func.min(tasks.c.seq)).where(
            tasks.c.agent == agent, tasks.c.state == TaskState.QUEUED.value
        )
    )
    return seq if head is None or seq < head else int(head) - 1


class SqlNodes:
    """`NodeStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def join(self, node: NodeInfo, now: float) -> None:
        """Register this node, refusing a live namesake and, on SQLite, any other live node."""
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(nodes).where(_live(now)).with_for_update()).all()
            others = [r for r in rows if not (r.name == node.name and _restarted(r, node))]
            if others and conn.dialect.name == "sqlite":
                raise ConflictError(
                    f"node {others[0].name!r} (pid {others[0].pid} on {others[0].host}) is live "
                    "on this SQLite database, which serves one node: stop it, or point every "
                    'node at one PostgreSQL database (server.database_url = "postgresql://...")'
                )
            namesake = next((r for r in others if r.name == node.name), None)
            if namesake is not None:
                raise ConflictError(
                    f"a live node named {node.name!r} already uses this database (pid "
                    f"{namesake.pid} on {namesake.host}, heartbeat "
                    f"{now - namesake.heartbeat_at:.1f} s ago): give this one another "
                    "server.node, or stop that one"
                )
            upsert(
                conn,
                nodes,
                {
                    "name": node.name,
                    "incarnation": node.incarnation,
                    "host": node.host,
                    "pid": node.pid,
                    "url": node.url,
                    "capacity": node.capacity,
                    "lease_seconds": node.lease_seconds,
                    "started_at": now,
                    "heartbeat_at": now,
                    "stopped_at": None,
                    "dead_at": None,
                },
            )

    async def heartbeat(self, node: NodeInfo, now: float, spooled: int = 0) -> bool:
        """Renew the lease, telling how many deliveries wait in the node's spool; False if
        this node was declared dead (its work went elsewhere)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                nodes.update()
                .where(
                    nodes.c.name == node.name,
                    nodes.c.incarnation == node.incarnation,
                    nodes.c.dead_at.is_(None),
                    nodes.c.stopped_at.is_(None),
                )
                .values(heartbeat_at=now, spooled=spooled)
            )
            return result.rowcount > 0

    async def leave(self, node: NodeInfo, now: float) -> list[str]:
        """A clean stop: let go of every instance and every duty; the instances let go."""
        with self.engine.begin() as conn:
            held = sorted(
                conn.scalars(
                    sa.select(agents.c.name).where(agents.c.node == node.name).with_for_update()
                ).all()
            )
            conn.execute(
                agents.update()
                .where(agents.c.name.in_(held), agents.c.node == node.name)
                .values(node=None)
            )
            conn.execute(leaders.delete().where(leaders.c.incarnation == node.incarnation))
            conn.execute(
                nodes.update()
                .where(nodes.c.name == node.name, nodes.c.incarnation == node.incarnation)
                .values(stopped_at=now)
            )
        return held

    async def rescue(self, max_attempts: int, now: float) -> list[Recovered]:
        """Declare nodes whose lease ran out dead; requeue their tasks, free their instances."""
        with self.engine.begin() as conn:
            expired = list(
                conn.scalars(
                    sa.select(nodes.c.name)
                    .where(
                        nodes.c.stopped_at.is_(None),
                        nodes.c.dead_at.is_(None),
                        nodes.c.heartbeat_at + nodes.c.lease_seconds < now,
                    )
                    .with_for_update()
                ).all()
            )
            if not expired:
                return []
            conn.execute(nodes.update().where(nodes.c.name.in_(expired)).values(dead_at=now))
            conn.execute(agents.update().where(agents.c.node.in_(expired)).values(node=None))
            return settle_running(
                conn, tasks.c.node.in_(expired), max_attempts, now, "its node died"
            )

    async def rebalance(self, node: NodeInfo, now: float) -> Moves:
        """Take and let go of instances by `node_share.moves`, each move fenced in SQL."""
        with self.engine.begin() as conn:
            members = [
                Member(row.name, row.capacity)
                for row in conn.execute(sa.select(nodes.c.name, nodes.c.capacity).where(_live(now)))
            ]
            if node.name not in {m.name for m in members}:
                return Moves((), ())
            running = set(
                conn.scalars(sa.select(tasks.c.agent).where(tasks.c.state == _RUNNING)).all()
            )
            queued = set(
                conn.scalars(
                    sa.select(queue_lengths.c.agent).where(queue_lengths.c.queued > 0)
                ).all()
            )
            # An instance of a type this node's configuration lacks is, to this node, one it
            # cannot run: it never takes one and lets go of any it holds.
            leases = [
                Lease(
                    row.name,
                    bool(row.enabled) and (not node.types or row.type in node.types),
                    row.node,
                    row.pinned_node,
                    row.name in running,
                    row.name in queued,
                )
                for row in conn.execute(
                    sa.select(
                        agents.c.name,
                        agents.c.type,
                        agents.c.enabled,
                        agents.c.node,
                        agents.c.pinned_node,
                    )
                )
            ]
            me = next(m for m in members if m.name == node.name)
            wanted = moves(me, members, _live_holders(leases, members))
            taken = [name for name in wanted.take if _take(conn, name, node.name)]
            released = [name for name in wanted.release if _release(conn, name, node.name)]
        return Moves(tuple(taken), tuple(released))

    async def lead(self, duty: str, node: NodeInfo, now: float) -> bool:
        """Hold or take the lead of `duty` for a lease; True while this node holds it."""
        until = now + node.lease_seconds
        with self.engine.begin() as conn:
            result = conn.execute(
                leaders.update()
                .where(
                    leaders.c.duty == duty,
                    sa.or_(leaders.c.incarnation == node.incarnation, leaders.c.expires_at < now),
                )
                .values(node=node.name, incarnation=node.incarnation, expires_at=until)
            )
            if result.rowcount > 0:
                return True
            exists = conn.scalar(sa.select(leaders.c.duty).where(leaders.c.duty == duty))
            if exists is not None:
                return False
            inserted = conn.execute(
                _insert_leader(conn)
                .values(duty=duty, node=node.name, incarnation=node.incarnation, expires_at=until)
                .returning(leaders.c.duty)
            )
            return inserted.first() is not None

    async def resign(self, duty: str, node: NodeInfo) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                leaders.delete().where(
                    leaders.c.duty == duty, leaders.c.incarnation == node.incarnation
                )
            )

    async def list_nodes(self, now: float) -> list[NodeView]:
        with self.reader.connect() as conn:
            held: dict[str, list[str]] = {}
            for name, holder in conn.execute(
                sa.select(agents.c.name, agents.c.node)
                .where(agents.c.node.is_not(None))
                .order_by(agents.c.name)
            ):
                held.setdefault(holder, []).append(name)
            rows = conn.execute(sa.select(nodes).order_by(nodes.c.name)).all()
        return [
            NodeView(
                name=row.name,
                state=_state(row, now),
                host=row.host,
                pid=row.pid,
                url=row.url,
                capacity=row.capacity,
                lease_seconds=row.lease_seconds,
                started_at=row.started_at,
                heartbeat_at=row.heartbeat_at,
                instances=tuple(held.get(row.name, ())) if _state(row, now) == "live" else (),
                spooled=row.spooled,
            )
            for row in rows
        ]

    async def load(self, name: str) -> NodeLoad:
        with self.reader.connect() as conn:
            running = conn.scalar(
                sa.select(sa.func.count())
                .select_from(tasks)
                .where(tasks.c.state == _RUNNING, tasks.c.node == name)
            )
            queued = conn.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(queue_lengths.c.queued), 0))
                .select_from(queue_lengths.join(agents, agents.c.name == queue_lengths.c.agent))
                .where(agents.c.node == name)
            )
        return NodeLoad(running=int(running or 0), queued=int(queued or 0))


def _restarted(row: Any, node: NodeInfo) -> bool:
    """The live-looking row is this process (joining again after it was fenced) or its
    previous run on this host, which crashed."""
    return bool(row.host == node.host and (row.pid == node.pid or not _process_alive(row.pid)))


def _live_holders(leases: Sequence[Lease], members: Sequence[Member]) -> list[Lease]:
    """Instances held by a node that is not live count as unheld (rescue frees them)."""
    live = {m.name for m in members}
    return [
        lease if lease.holder is None or lease.holder in live else _unheld(lease)
        for lease in leases
    ]


def _unheld(lease: Lease) -> Lease:
    return replace(lease, holder=None)


def _insert_leader(conn: sa.Connection) -> Any:
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(leaders).on_conflict_do_nothing(index_elements=["duty"])


def _take(conn: sa.Connection, name: str, node: str) -> bool:
    result = conn.execute(
        agents.update().where(agents.c.name == name, agents.c.node.is_(None)).values(node=node)
    )
    return result.rowcount > 0


def _release(conn: sa.Connection, name: str, node: str) -> bool:
    """Let go of an instance unless it runs a task: its row locked first, so a claim on it
    either commits before (and it stays) or sees it gone."""
    holder = conn.scalar(sa.select(agents.c.node).where(agents.c.name == name).with_for_update())
    if holder != node:
        return False
    if conn.scalar(
        sa.select(tasks.c.id).where(tasks.c.agent == name, tasks.c.state == _RUNNING).limit(1)
    ):
        return False
    conn.execute(agents.update().where(agents.c.name == name).values(node=None))
    return True
