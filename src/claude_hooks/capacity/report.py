"""What a simulated schedule says: waits, utilisation, queue length, waits beside an idle peer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from claude_hooks.capacity.simulation import Run


@dataclass(frozen=True, slots=True)
class Summary:
    type: str
    instances: int
    policy: str
    tasks: int
    wait_p50: float
    wait_p90: float
    wait_p99: float
    wait_max: float
    wait_mean: float
    utilisation: float  # run time over instance time, from the first arrival to the last end
    longest_queue: int
    waited_while_idle: int
    elastic: str = ""  # "min..max" for an elastic pool; "" for a fixed one
    mean_instances: float = 0.0  # instances alive on average, first arrival to last end
    peak: int = 0
    changes: int = 0  # instances added or retired

    @property
    def size(self) -> str:
        """The pool as the table shows it: `3`, or `1..6` for an elastic pool."""
        return self.elastic or str(self.instances)


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank percentile: the smallest value with at least p% of values at or below."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summarise(run: Run) -> Summary:
    waits = sorted(p.wait for p in run.placements)
    busy = sum(p.job.duration for p in run.placements)
    scaling = run.scaling
    return Summary(
        type=run.type,
        instances=run.instances,
        policy=run.policy.value,
        tasks=len(waits),
        wait_p50=percentile(waits, 50),
        wait_p90=percentile(waits, 90),
        wait_p99=percentile(waits, 99),
        wait_max=waits[-1] if waits else 0.0,
        wait_mean=sum(waits) / len(waits) if waits else 0.0,
        utilisation=busy / run.instance_seconds if run.instance_seconds > 0 else 0.0,
        longest_queue=run.longest_queue,
        waited_while_idle=run.waited_while_idle,
        elastic=f"{scaling.low}..{scaling.high}" if scaling is not None else "",
        mean_instances=run.mean_instances,
        peak=run.peak,
        changes=run.changes,
    )


def as_json(summary: Summary, run: Run, schedule: bool) -> dict[str, Any]:
    """Seconds, rounded to the millisecond; with `schedule`, where and when each task ran."""
    document: dict[str, Any] = {
        "type": summary.type,
        "instances": summary.instances,
        "policy": summary.policy,
        "tasks": summary.tasks,
        "wait_p50_s": round(summary.wait_p50, 3),
        "wait_p90_s": round(summary.wait_p90, 3),
        "wait_p99_s": round(summary.wait_p99, 3),
        "wait_max_s": round(summary.wait_max, 3),
        "wait_mean_s": round(summary.wait_mean, 3),
        "utilisation": round(summary.utilisation, 4),
        "longest_queue": summary.longest_queue,
        "waited_while_idle": summary.waited_while_idle,
    }
    if summary.elastic:
        document["elastic"] = summary.elastic
        document["mean_instances"] = round(summary.mean_instances, 3)
        document["peak_instances"] = summary.peak
        document["changes"] = summary.changes
    if schedule:
        document["schedule"] = [
            {
                "label": p.job.label,
                "session_key": p.job.session_key,
                "arrival": round(p.job.arrival, 3),
                "instance": p.instance,
                "start": round(p.start, 3),
                "wait_s": round(p.wait, 3),
            }
            for p in run.placements
        ]
    return document


def human(seconds: float) -> str:
    """`0s`, `45s`, `12m 30s`, `3h 05m`: as precise as a reader of a wait needs."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def table(summaries: Sequence[Summary]) -> Table:
    grid = Table(
        "type",
        "instances",
        "policy",
        "tasks",
        "wait p50",
        "p90",
        "p99",
        "max",
        "utilisation",
        "longest queue",
        "waited beside an idle peer",
    )
    for s in summaries:
        share = s.waited_while_idle / s.tasks if s.tasks else 0.0
        grid.add_row(
            s.type,
            s.size + (f" (mean {s.mean_instances:.1f})" if s.elastic else ""),
            s.policy,
            str(s.tasks),
            human(s.wait_p50),
            human(s.wait_p90),
            human(s.wait_p99),
            human(s.wait_max),
            f"{s.utilisation:.0%}",
            str(s.longest_queue),
            f"{s.waited_while_idle} ({share:.0%})",
        )
    return grid
