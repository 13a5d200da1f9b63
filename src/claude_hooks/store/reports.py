"""Read-only summaries over tasks and deliveries: the pool's read model, tallies, histograms.

The dashboard, the metrics endpoint, the API and the CLI read these through the `Store`, so
every backend answers them with the same SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from claude_hooks.core.domain import TaskState
from claude_hooks.store.base import DeliveryTally, Histogram, InstanceView, TaskTally
from claude_hooks.store.schema import agents, deliveries, tasks

FINISHED = [state.value for state in TaskState if state.finished]
_ACTIVE = [TaskState.QUEUED.value, TaskState.RUNNING.value]


def instances(conn: sa.Connection) -> list[InstanceView]:
    rows = conn.execute(
        sa.select(tasks.c.agent, tasks.c.id, tasks.c.state)
        .where(tasks.c.state.in_(_ACTIVE))
        .order_by(tasks.c.agent, tasks.c.seq)
    ).all()
    running: dict[str, str] = {}
    queued: dict[str, list[str]] = {}
    for agent, task_id, state in rows:
        if state == TaskState.RUNNING.value:
            running[agent] = task_id
        else:
            queued.setdefault(agent, []).append(task_id)
    return [
        InstanceView(
            name,
            agent_type,
            bool(enabled),
            running.get(name),
            tuple(queued.get(name, ())),
            node,
            pinned_node,
            bool(auto),
        )
        for name, agent_type, enabled, node, pinned_node, auto in conn.execute(
            sa.select(
                agents.c.name,
                agents.c.type,
                agents.c.enabled,
                agents.c.node,
                agents.c.pinned_node,
                agents.c.auto,
            ).order_by(agents.c.name)
        )
    ]


def queue_positions(conn: sa.Connection, task_ids: Iterable[str]) -> dict[str, int]:
    """1-based place of each queued task in its instance's queue; others are left out."""
    ids = list(set(task_ids))
    if not ids:
        return {}
    ahead = tasks.alias("ahead")
    position = (
        sa.select(sa.func.count())
        .where(
            ahead.c.agent == tasks.c.agent,
            ahead.c.state == TaskState.QUEUED.value,
            ahead.c.seq <= tasks.c.seq,
        )
        .scalar_subquery()
    )
    rows = conn.execute(
        sa.select(tasks.c.id, position).where(
            tasks.c.id.in_(ids), tasks.c.state == TaskState.QUEUED.value
        )
    )
    return {task_id: int(place) for task_id, place in rows}


def task_tallies(conn: sa.Connection, since: float | None) -> list[TaskTally]:
    run = tasks.c.finished_at - tasks.c.started_at
    query = (
        sa.select(
            tasks.c.type,
            tasks.c.kind,
            tasks.c.state,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(tasks.c.cost_usd), 0.0),
            sa.func.coalesce(sa.func.sum(run), 0.0),
            sa.func.count(tasks.c.started_at),
        )
        .where(tasks.c.state.in_(FINISHED))
        .group_by(tasks.c.type, tasks.c.kind, tasks.c.state)
        .order_by(tasks.c.type, tasks.c.kind, tasks.c.state)
    )
    if since is not None:
        query = query.where(tasks.c.finished_at >= since)
    return [
        TaskTally(t, k, s, int(n), float(cost), float(seconds), int(runs))
        for t, k, s, n, cost, seconds, runs in conn.execute(query)
    ]


def delivery_tallies(conn: sa.Connection, since: float | None) -> list[DeliveryTally]:
    query = (
        sa.select(deliveries.c.event_type, deliveries.c.outcome, sa.func.count())
        .where(deliveries.c.outcome != "received")
        .group_by(deliveries.c.event_type, deliveries.c.outcome)
        .order_by(deliveries.c.event_type, deliveries.c.outcome)
    )
    if since is not None:
        query = query.where(deliveries.c.received_at >= since)
    return [DeliveryTally(e, o, int(n)) for e, o, n in conn.execute(query)]


def cost_by_agent(conn: sa.Connection) -> dict[tuple[str, str], float]:
    rows = conn.execute(
        sa.select(tasks.c.type, tasks.c.agent, sa.func.sum(tasks.c.cost_usd))
        .where(tasks.c.cost_usd.is_not(None))
        .group_by(tasks.c.type, tasks.c.agent)
        .order_by(tasks.c.type, tasks.c.agent)
    )
    return {(agent_type, agent): float(total) for agent_type, agent, total in rows}


def _histograms(
    conn: sa.Connection, query: sa.Select[Any], value: Any, labels: int, bounds: Sequence[float]
) -> list[Histogram]:
    counted = query.add_columns(
        sa.func.count(),
        sa.func.sum(value),
        *(sa.func.sum(sa.case((value <= bound, 1), else_=0)) for bound in bounds),
    )
    found: list[Histogram] = []
    for row in conn.execute(counted):
        count, total, *buckets = row[labels:]
        found.append(
            Histogram(
                tuple(row[:labels]),
                int(count),
                float(total or 0.0),
                tuple(int(b or 0) for b in buckets),
            )
        )
    return found


def run_durations(conn: sa.Connection, bounds: Sequence[float]) -> list[Histogram]:
    """Run time of finished tasks by (type, kind)."""
    query = (
        sa.select(tasks.c.type, tasks.c.kind)
        .where(tasks.c.state.in_(FINISHED), tasks.c.started_at.is_not(None))
        .group_by(tasks.c.type, tasks.c.kind)
        .order_by(tasks.c.type, tasks.c.kind)
    )
    return _histograms(conn, query, tasks.c.finished_at - tasks.c.started_at, 2, bounds)


def start_latencies(conn: sa.Connection, bounds: Sequence[float]) -> list[Histogram]:
    """Time from a delivery's arrival to the start of a task it created, by type."""
    query = (
        sa.select(tasks.c.type)
        .select_from(tasks.join(deliveries, tasks.c.delivery_id == deliveries.c.id))
        .where(tasks.c.started_at.is_not(None))
        .group_by(tasks.c.type)
        .order_by(tasks.c.type)
    )
    return _histograms(conn, query, tasks.c.started_at - deliveries.c.received_at, 1, bounds)


def queue_waits(conn: sa.Connection, bounds: Sequence[float]) -> list[Histogram]:
    """Time started tasks waited in a queue, from enqueued to started, by type."""
    query = (
        sa.select(tasks.c.type)
        .where(tasks.c.started_at.is_not(None))
        .group_by(tasks.c.type)
        .order_by(tasks.c.type)
    )
    return _histograms(conn, query, tasks.c.started_at - tasks.c.enqueued_at, 1, bounds)
