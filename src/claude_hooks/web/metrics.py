"""`GET /metrics`: Prometheus text format, behind the api token like the rest of the API.

Everything is read at scrape time: gauges from the pool's read model, counters and histograms from
the database (deliveries and tasks are all kept there), so the series survive a restart and no
event can be missed between scrapes. Only rejected webhooks, which are not stored, are counted
in memory since the service started, and the spool and storage faults; while the database does
not answer, only these are given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from claude_hooks.core.outcome_report import group_json, summarise
from claude_hooks.forge import event_types
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import Histogram, InstanceView, Store
from claude_hooks.store.faults import fault_reason, is_storage_fault
from claude_hooks.web.auth import require_token

router = APIRouter(dependencies=[Depends(require_token)])

DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
LATENCY_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0)


class _Snapshot:
    """A collector that hands over families computed before the scrape was rendered."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _bound(value: float) -> str:
    """A bucket's `le` label as prometheus-client writes it (1.0, 2.5, 3600.0)."""
    return repr(float(value))


def _add_histogram(
    family: HistogramMetricFamily, bounds: Sequence[float], found: Histogram
) -> None:
    buckets = [(_bound(b), float(n)) for b, n in zip(bounds, found.buckets, strict=True)]
    buckets.append(("+Inf", float(found.count)))
    family.add_metric(list(found.labels), buckets, found.total)


def _pool(found: list[InstanceView], types: Iterable[str]) -> list[Metric]:
    instances = GaugeMetricFamily(
        "claude_hooks_instances", "Agent instances by state", labels=["type", "state"]
    )
    busy_now = GaugeMetricFamily(
        "claude_hooks_busy_instances", "Instances running a task now", labels=["type"]
    )
    depth = GaugeMetricFamily(
        "claude_hooks_queue_depth", "Tasks waiting in an instance's queue", labels=["type", "agent"]
    )
    states: dict[tuple[str, str], int] = {}
    busy_by_type = dict.fromkeys(types, 0)
    for instance in found:
        for state in ("idle", "busy", "disabled"):
            states.setdefault((instance.type, state), 0)
        states[(instance.type, instance.state)] += 1
        busy = instance.state == "busy"
        busy_by_type[instance.type] = busy_by_type.get(instance.type, 0) + busy
        depth.add_metric([instance.type, instance.name], len(instance.queue))
    for (agent_type, state), count in sorted(states.items()):
        instances.add_metric([agent_type, state], count)
    for agent_type, count in sorted(busy_by_type.items()):
        busy_now.add_metric([agent_type], count)
    return [instances, busy_now, depth]


async def _stored(store: Store) -> list[Metric]:
    delivered = CounterMetricFamily(
        "claude_hooks_deliveries",
        "Webhook deliveries by event type and outcome "
        "(queued, cancelled, ignored, duplicate, error, pending)",
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
    by_label: dict[tuple[str, str], int] = {}
    for tally in await store.delivery_tallies():
        key = (event_types.label(tally.event_type), tally.outcome)
        by_label[key] = by_label.get(key, 0) + tally.count
    for (event_type, outcome), count in sorted(by_label.items()):
        delivered.add_metric([event_type, outcome], count)
    for task_tally in await store.task_tallies():
        finished.add_metric([task_tally.type, task_tally.kind, task_tally.state], task_tally.count)
    for histogram in await store.run_durations(DURATION_BUCKETS):
        _add_histogram(durations, DURATION_BUCKETS, histogram)
    for (agent_type, agent), total in (await store.cost_by_agent()).items():
        cost.add_metric([agent_type, agent], total)
    for histogram in await store.start_latencies(LATENCY_BUCKETS):
        _add_histogram(latency, LATENCY_BUCKETS, histogram)
    blocked = CounterMetricFamily(
        "claude_hooks_egress_blocked",
        "Connections a sandboxed agent's egress proxy refused (not on its type's egress list)",
        labels=["type"],
    )
    for agent_type, count in sorted((await store.egress.blocked_by_type()).items()):
        blocked.add_metric([agent_type], count)
    return [delivered, finished, durations, cost, latency, blocked]


def _gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=labels)


async def _outcomes(store: Store) -> list[Metric]:
    """The outcome records as `claude-hooks report` sums them (all time), per type, and
    the merge rate and cost per merged PR per prompt variant."""
    pulls = CounterMetricFamily(
        "claude_hooks_agent_pull_requests",
        "Agents' pull requests by what became of them (opened, approved, merged, closed_unmerged)",
        labels=["type", "outcome"],
    )
    still_open = _gauge(
        "claude_hooks_agent_pull_requests_open", "Agents' pull requests still open", ["type"]
    )
    rate = _gauge("claude_hooks_merge_rate", "Merged PRs over PRs opened", ["type"])
    rounds = _gauge(
        "claude_hooks_review_rounds_until_approval",
        "Mean changes-requested rounds before an agent PR's approval",
        ["type"],
    )
    first_pass = _gauge(
        "claude_hooks_ci_first_pass_rate", "Agent PRs whose first head passed CI", ["type"]
    )
    waits = _gauge(
        "claude_hooks_seconds_from_assignment",
        "Mean time from an issue's assignment to its PR, approval or merge",
        ["type", "to"],
    )
    human = CounterMetricFamily(
        "claude_hooks_human_interventions",
        "Commands, stops, escalations and human commits on agents' branches",
        labels=["type", "kind"],
    )
    costs = _gauge(
        "claude_hooks_cost_per_usd", "Cost per task, per issue and per merged PR", ["type", "per"]
    )
    by_type = summarise(await store.outcomes.report(None, "type"), "type")
    for report in by_type:
        row, t = group_json(report), [report.group]
        for outcome, count in row["pull_requests"].items():
            if outcome != "open":
                pulls.add_metric([*t, outcome], count)
        still_open.add_metric(t, row["pull_requests"]["open"])
        for family, value in (
            (rate, row["merge_rate"]),
            (rounds, row["review_rounds_until_approval"]),
            (first_pass, row["ci_first_pass_rate"]),
        ):
            if value is not None:
                family.add_metric(t, value)
        for to, seconds in row["seconds_from_assignment"].items():
            if seconds is not None:
                waits.add_metric([*t, to.removeprefix("to_")], seconds)
        for kind, count in row["human_interventions"].items():
            if kind != "total":
                human.add_metric([*t, kind], count)
        for per in ("task", "issue", "merged_pr"):
            value = row["cost_usd"][f"per_{per}"]
            if value is not None:
                costs.add_metric([*t, per], value)
    variant_rate = _gauge(
        "claude_hooks_variant_merge_rate",
        "Merged PRs over PRs opened, per prompt variant",
        ["variant"],
    )
    variant_cost = _gauge(
        "claude_hooks_variant_cost_per_merged_pr_usd",
        "Cost per merged PR, per prompt variant",
        ["variant"],
    )
    for report in summarise(await store.outcomes.report(None, "variant"), "variant"):
        if report.merge_rate is not None:
            variant_rate.add_metric([report.group], report.merge_rate)
        if report.cost_per_merged_pr is not None:
            variant_cost.add_metric([report.group], report.cost_per_merged_pr)
    return [
        pulls, still_open, rate, rounds, first_pass, waits, human, costs, variant_rate,
        variant_cost,
    ]  # fmt: skip


async def _waits(store: Store, types: Iterable[str]) -> list[Metric]:
    """Queue waits, to compare the live pool with `claude-hooks simulate`."""
    waits = HistogramMetricFamily(
        "claude_hooks_queue_wait_seconds",
        "Time started tasks waited in a queue, from enqueued to started",
        labels=["type"],
    )
    for histogram in await store.queue_waits(LATENCY_BUCKETS):
        _add_histogram(waits, LATENCY_BUCKETS, histogram)
    beside_idle = GaugeMetricFamily(
        "claude_hooks_waiting_beside_idle",
        "Queued tasks that could start now while an instance of their type is idle "
        "(0 under rebalance = steal)",
        labels=["type"],
    )
    found = await store.waiting_beside_idle()
    for agent_type in sorted({*found, *types}):
        beside_idle.add_metric([agent_type], found.get(agent_type, 0))
    return [waits, beside_idle]


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
    loops = CounterMetricFamily(
        "claude_hooks_loop_failures",
        "Passes of a background loop that raised (the loop went on after its interval)",
        labels=["loop"],
    )
    for loop in service.loops:
        loops.add_metric([loop.name], loop.failures)
    return [rejected, started, paused, until, trips, loops, *_storage(service)]


def _storage(service: Service) -> list[Metric]:
    """What waits in the spool and how storage has failed: known without the database."""
    spooled = GaugeMetricFamily(
        "claude_hooks_deliveries_spooled",
        "Deliveries in this node's spool, waiting for the database",
    )
    spooled.add_metric([], len(service.intake.spool.waiting))
    faults = CounterMetricFamily(
        "claude_hooks_storage_faults",
        "Database or disk errors met (each answered with the spool or a 503, never a 500)",
    )
    faults.add_metric([], service.faults.total)
    ready = GaugeMetricFamily(
        "claude_hooks_database_ready", "1 while the database answers (see /readyz)"
    )
    ready.add_metric([], 0 if service.readiness.database_problem() else 1)
    return [spooled, faults, ready]


async def _nodes(service: Service, found: list[InstanceView]) -> list[Metric]:
    """The cluster: nodes by state, instances no live node holds, and who leads."""
    nodes = GaugeMetricFamily(
        "claude_hooks_nodes", "Nodes on the database by state", labels=["state"]
    )
    counts = {"live": 0, "dead": 0, "stopped": 0}
    for view in await service.store.nodes.list_nodes(service.node.now()):
        counts[view.state] += 1
    for state, count in counts.items():
        nodes.add_metric([state], count)
    unheld = GaugeMetricFamily(
        "claude_hooks_instances_unheld",
        "Enabled instances no live node holds: they wait for a node with room",
        labels=["type"],
    )
    waiting = dict.fromkeys(service.config.types, 0)
    for instance in found:
        if instance.enabled and instance.node is None:
            waiting[instance.type] = waiting.get(instance.type, 0) + 1
    for agent_type, count in sorted(waiting.items()):
        unheld.add_metric([agent_type], count)
    leading = GaugeMetricFamily(
        "claude_hooks_node_leading",
        "1 on the node that leads the cluster's duties (rescue, CI polling, pending retries)",
        labels=["node"],
    )
    leading.add_metric([service.node.name], 1 if service.node.leading else 0)
    return [nodes, unheld, leading]


async def families(service: Service) -> list[Metric]:
    found = await service.store.instances()
    pool = _pool(found, service.config.types)
    waits = await _waits(service.store, service.config.types)
    cluster = await _nodes(service, found)
    stored = await _stored(service.store) + await _outcomes(service.store)
    return pool + stored + waits + cluster + _in_memory(service)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "the metrics"}},
)
async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    registry = CollectorRegistry(auto_describe=False)
    try:
        found = await families(service)
    except Exception as exc:
        if not is_storage_fault(exc):
            raise
        # The series kept in the database wait for it; what the node knows is still told.
        service.faults.note(fault_reason(exc))
        found = _in_memory(service)
    registry.register(_Snapshot(found))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
