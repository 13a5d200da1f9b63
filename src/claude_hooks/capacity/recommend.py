"""`simulate --target-wait`: the `instances = "min..max"` range to configure for a type, from a
workload replayed offline. Deterministic: the same workload gives the same range every time.

- `max`: the fewest instances whose fixed pool keeps the p90 wait at or under the target (the
  peak the work needs);
- `min`: the fewest instances an elastic pool `min..max` (the service's own rule, with the
  type's `scale_up_wait` and `scale_down_idle`) can start from and still keep it there: fewer
  instances while the work is light, at the price of waits of `scale_up_wait` when it comes.
An instance costs `instance_cost` an hour while it exists (its seat, its node's share); the
range's daily spend is its mean number of instances times that, held against `daily_spend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from claude_hooks.capacity.report import Summary, human, summarise
from claude_hooks.capacity.simulation import Groups, Job, Policy, simulate
from claude_hooks.core.elastic import Scaling

LARGEST = 200  # pools larger than this are not tried
DAY = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Recommendation:
    type: str
    target: float  # the p90 wait aimed at, seconds
    low: int | None  # None: no pool up to LARGEST meets the target
    high: int | None
    elastic: Summary | None  # the run of the range recommended
    fixed: Summary | None  # the run of a fixed pool of `high`
    daily_spend: float | None  # what the range's instances cost a day (with an instance cost)
    within_spend: bool
    reason: str

    @property
    def range(self) -> str:
        return f"{self.low}..{self.high}" if self.low is not None else "none"


def recommend(
    jobs: Sequence[Job],
    target: float,
    policy: Policy,
    timings: tuple[float, float],
    groups: Groups | None = None,
    instance_cost: float = 0.0,
    daily_spend: float | None = None,
) -> Recommendation:
    """The range for one type's jobs; `timings`: (scale_up_wait, scale_down_idle)."""
    agent_type = jobs[0].type if jobs else ""
    up, down = timings
    fixed = None
    for count in range(1, LARGEST + 1):
        run = summarise(simulate(jobs, count, policy, groups))
        if run.wait_p90 <= target:
            fixed = run
            break
    if fixed is None:
        why = f"no pool of up to {LARGEST} instances keeps the p90 wait within {human(target)}"
        return Recommendation(agent_type, target, None, None, None, None, None, False, why)
    high = fixed.instances
    low, elastic = high, fixed  # `high..high` is the fixed pool: the search ends by then
    for fewest in range(1, high + 1):
        run = summarise(simulate(jobs, fewest, policy, groups, Scaling(fewest, high, up, down)))
        if run.wait_p90 <= target:
            low, elastic = fewest, run
            break
    spend = elastic.mean_instances * instance_cost * DAY / 3600.0 if instance_cost else None
    within = daily_spend is None or spend is None or spend <= daily_spend
    why = (
        f"p90 wait {human(elastic.wait_p90)} (target {human(target)}) with "
        f"{elastic.mean_instances:.1f} instances on average; a fixed pool needs {high}"
    )
    if spend is not None:
        why += f"; ${spend:.2f} a day"
        if not within:
            why += f", over the daily spend of ${daily_spend:.2f}: the target costs more"
    return Recommendation(agent_type, target, low, high, elastic, fixed, spend, within, why)
