"""`GET /metrics`: Prometheus text format, behind the api token like the rest of the API.

Everything is read at scrape time: gauges from the pool in memory, counters and histograms from
the database (deliveries and tasks are all kept there), so the series survive a restart and no
event can be missed between scrapes. Only rejected webhooks, which are not stored, are counted
in memory since the service started.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from claude_hooks.domain import TaskState
from claude_hooks.forgejo import event_types
from claude_hooks.service import Service
from claude_hooks.store.schema import deliveries, tasks
from claude_hooks.store.sql import SqlStore
from claude_hooks.web.auth import require_token

router = APIRouter(dependencies=[Depends(require_token)])

DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
LATENCY_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0)
FINISHED = [state.value for state in TaskState if state.finished]

T = TypeVar("T")


def sql_read(service: Service, query: Callable[[sa.Connection], T]) -> T:
    """Run aggregate queries the store's interface has no method for, on its read engine."""
    store = service.store
    if not isinstance(store, SqlStore):
        raise TypeError("the dashboard's and metrics' summaries are SQL: they need SqlStore")
    with store.reader.connect() as conn:
        return query(conn)


class _Snapshot:
    """A collector that hands over families computed before the scrape was rendered."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _buckets(value: Any, bounds: Sequence[float]) -> list[Any]:
    return [sa.func.sum(sa.case((value <= bound, 1), else_=0)) for bound in bounds]


def _bound(value: float) -> str:
    """A bucket's `le` label as prometheus-client writes it (1.0, 2.5, 3600.0)."""
    return repr(float(value))


def _histogram_row(
    family: HistogramMetricFamily,
    labels: list[str],
    bounds: Sequence[float],
    row: Sequence[Any],
) -> None:
    """A row of (count, sum, bucket counts...) into a labelled histogram."""
    count, total, *cumulative = row
    buckets = [(_bound(b), float(n or 0)) for b, n in zip(bounds, cumulative, strict=True)]
    buckets.append(("+Inf", float(count)))
    family.add_metric(labels, buckets, float(total or 0.0))


def _pool(service: Service) -> list[Metric]:
    instances = GaugeMetricFamily(
        "claude_hooks_instances", "Agent instances by state", labels=["type", "state"]
    )
    busy = GaugeMetricFamily(
        "claude_hooks_busy_instances", "Instances running a task now", labels=["type"]
    )
    depth = GaugeMetricFamily(
        "claude_hooks_queue_depth", "Tasks waiting in an instance's queue", labels=["type", "agent"]
    )
    states: dict[tuple[str, str], int] = {}
    busy_by_type = dict.fromkeys(service.config.types, 0)
    for name, worker in sorted(service.pool.workers.items()):
        for state in ("idle", "busy", "disabled"):
            states.setdefault((worker.type, state), 0)
        states[(worker.type, worker.state)] += 1
        busy_by_type[worker.type] = busy_by_type.get(worker.type, 0) + (worker.state == "busy")
        depth.add_metric([worker.type, name], len(worker.queue))
    for (agent_type, state), count in sorted(states.items()):
        instances.add_metric([agent_type, state], count)
    for agent_type, count in sorted(busy_by_type.items()):
        busy.add_metric([agent_type], count)
    return [instances, busy, depth]


def _stored(conn: sa.Connection) -> list[Metric]:
    delivered = CounterMetricFamily(
        "claude_hooks_deliveries",
        "Webhook deliveries by event type and outcome (queued, ignored, duplicate, error)",
        labels=["event_type", "outcome"],
    )
    finished = CounterMetricFamily(
        "claude_hooks_tasks_finished",
        "Finished tasks by type, kind and outcome",
        labels=["type", "kind", "outcome"],
    )
    durations = HistogramMetricFamily(
        "claude_hooks_task_duration_seconds",
        "Run time of finished tasks, from start to end",
        labels=["type", "kind"],
    )
    cost = CounterMetricFamily(
        "claude_hooks_agent_cost_usd", "Agent cost reported by the runner", labels=["type", "agent"]
    )
    latency = HistogramMetricFamily(
        "claude_hooks_delivery_to_start_seconds",
        "Time from a delivery's arrival to the start of a task it created",
        labels=["type"],
    )
    run = tasks.c.finished_at - tasks.c.started_at
    wait = tasks.c.started_at - deliveries.c.received_at
    by_label: dict[tuple[str, str], int] = {}
    for event_type, outcome, count in conn.execute(
        sa.select(deliveries.c.event_type, deliveries.c.outcome, sa.func.count())
        .where(deliveries.c.outcome != "received")
        .group_by(deliveries.c.event_type, deliveries.c.outcome)
    ):
        key = (event_types.label(event_type), outcome)
        by_label[key] = by_label.get(key, 0) + count
    for (event_type, outcome), count in sorted(by_label.items()):
        delivered.add_metric([event_type, outcome], count)
    for agent_type, kind, state, count in conn.execute(
        sa.select(tasks.c.type, tasks.c.kind, tasks.c.state, sa.func.count())
        .where(tasks.c.state.in_(FINISHED))
        .group_by(tasks.c.type, tasks.c.kind, tasks.c.state)
        .order_by(tasks.c.type, tasks.c.kind, tasks.c.state)
    ):
        finished.add_metric([agent_type, kind, state], count)
    for agent_type, kind, *row in conn.execute(
        sa.select(
            tasks.c.type,
            tasks.c.kind,
            sa.func.count(),
            sa.func.sum(run),
            *_buckets(run, DURATION_BUCKETS),
        )
        .where(tasks.c.state.in_(FINISHED), tasks.c.started_at.is_not(None))
        .group_by(tasks.c.type, tasks.c.kind)
        .order_by(tasks.c.type, tasks.c.kind)
    ):
        _histogram_row(durations, [agent_type, kind], DURATION_BUCKETS, row)
    for agent_type, agent, total in conn.execute(
        sa.select(tasks.c.type, tasks.c.agent, sa.func.sum(tasks.c.cost_usd))
        .where(tasks.c.cost_usd.is_not(None))
        .group_by(tasks.c.type, tasks.c.agent)
        .order_by(tasks.c.type, tasks.c.agent)
    ):
        cost.add_metric([agent_type, agent], float(total))
    for agent_type, *row in conn.execute(
        sa.select(
            tasks.c.type, sa.func.count(), sa.func.sum(wait), *_buckets(wait, LATENCY_BUCKETS)
        )
        .select_from(tasks.join(deliveries, tasks.c.delivery_id == deliveries.c.id))
        .where(tasks.c.started_at.is_not(None))
        .group_by(tasks.c.type)
        .order_by(tasks.c.type)
    ):
        _histogram_row(latency, [agent_type], LATENCY_BUCKETS, row)
    return [delivered, finished, durations, cost, latency]


def _in_memory(service: Service) -> list[Metric]:
    rejected = CounterMetricFamily(
        "claude_hooks_webhooks_rejected",
        "Webhook requests refused before they were recorded (bad signature, malformed, ...)",
        labels=["status"],
    )
    for outcome, count in sorted(service.intake.counts.items()):
        if outcome.startswith("rejected_"):
            rejected.add_metric([outcome.removeprefix("rejected_")], count)
    started = GaugeMetricFamily(
        "claude_hooks_start_time_seconds", "When the service started (Unix time)"
    )
    started.add_metric([], service.started_at)
    paused = GaugeMetricFamily(
        "claude_hooks_type_paused",
        "1 while a type takes no new task: a budget is reached or the API breaker is open",
        labels=["type", "reason"],
    )
    until = GaugeMetricFamily(
        "claude_hooks_type_paused_until_seconds",
        "When a paused type looks again (Unix time)",
        labels=["type", "reason"],
    )
    for pause in service.pool.limits.paused.values():
        paused.add_metric([pause.type, pause.reason], 1)
        if pause.until is not None:
            until.add_metric([pause.type, pause.reason], pause.until)
    trips = CounterMetricFamily(
        "claude_hooks_breaker_trips", "Times a type's API breaker opened", labels=["type"]
    )
    for agent_type, count in sorted(service.pool.limits.trips.items()):
        trips.add_metric([agent_type], count)
    return [rejected, started, paused, until, trips]


def families(service: Service) -> list[Metric]:
    return _pool(service) + sql_read(service, _stored) + _in_memory(service)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "the metrics"}},
)
async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families(service)))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
