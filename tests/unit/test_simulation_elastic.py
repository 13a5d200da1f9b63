"""Elastic pools in the simulator: the service's own rule (`core/elastic.decide`) in simulated
time, and the range `simulate --target-wait` recommends."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claude_hooks.capacity.recommend import recommend
from claude_hooks.capacity.report import summarise
from claude_hooks.capacity.simulation import Job, Policy, simulate
from claude_hooks.capacity.workload import synthetic
from claude_hooks.core.elastic import Scaling

BURST = [Job(0.0, "dev", f"k{n}", 100.0) for n in range(4)]


@pytest.mark.parametrize("policy", [Policy.SEED, Policy.STEAL])
def test_a_burst_adds_instances_at_scale_up_wait_and_retires_them_after_idling(
    policy: Policy,
) -> None:
    run = simulate(BURST, 1, policy, scaling=Scaling(1, 3, 10.0, 50.0))
    # k0 runs on the one instance; at 10 s two are added with k1 and k2; k3 waits for k0.
    assert [(p.instance, p.start) for p in run.placements] == [
        (0, 0.0),
        (1, 10.0),
        (2, 10.0),
        (0, 100.0),
    ]
    # Both idle from 110 s, retired at 160 s: 1 instance for 10 s, 3 for 150 s, 1 for 40 s.
    assert (run.peak, run.changes, run.instance_seconds) == (3, 2, 500.0)
    assert run.mean_instances == 2.5
    summary = summarise(run)
    assert summary.elastic == "1..3" and summary.utilisation == 400 / 500


def test_an_elastic_pool_with_min_equal_to_max_is_the_fixed_pool() -> None:
    jobs = synthetic(["dev"], "poisson:20", "lognormal:6m,40m", 6, seed=3).jobs
    fixed = simulate(jobs, 3, Policy.SEED)
    elastic = simulate(jobs, 3, Policy.SEED, scaling=Scaling(3, 3, 60, 900))
    assert [p.start for p in elastic.placements] == [p.start for p in fixed.placements]
    assert elastic.changes == 0


def test_the_recommended_range_meets_the_target_and_is_the_same_every_time() -> None:
    jobs = synthetic(["dev"], "poisson:12", "lognormal:6m,40m", 24, seed=11).jobs
    found = recommend(jobs, 600.0, Policy.SEED, (60.0, 900.0), instance_cost=0.5)
    assert found.low is not None and found.high is not None
    assert 1 <= found.low <= found.high
    assert found.fixed is not None and found.fixed.wait_p90 <= 600
    assert summarise(simulate(jobs, found.high - 1, Policy.SEED)).wait_p90 > 600
    assert found.elastic is not None and found.elastic.wait_p90 <= 600
    assert found.daily_spend == pytest.approx(found.elastic.mean_instances * 12)
    assert recommend(jobs, 600.0, Policy.SEED, (60.0, 900.0), instance_cost=0.5) == found


def test_a_daily_spend_below_what_the_target_costs_is_said() -> None:
    jobs = synthetic(["dev"], "poisson:12", "fixed:30m", 12, seed=2).jobs
    found = recommend(jobs, 300.0, Policy.STEAL, (60.0, 900.0), None, 1.0, daily_spend=1.0)
    assert not found.within_spend
    assert "over the daily spend of $1.00" in found.reason


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 4), st.integers(1, 120)),
        min_size=1,
        max_size=25,
    ),
    st.integers(1, 3),
    st.integers(0, 3),
    st.sampled_from([Policy.SEED, Policy.STEAL, Policy.SHARED]),
)
def test_an_elastic_pool_stays_in_its_range_and_runs_every_job_once_per_key(
    drafts: list[tuple[int, int, int]], low: int, extra: int, policy: Policy
) -> None:
    jobs = [Job(float(at), "dev", f"k{key}", float(length)) for at, key, length in drafts]
    run = simulate(jobs, low, policy, scaling=Scaling(low, low + extra, 10.0, 30.0))
    assert len(run.placements) == len(jobs)
    assert low <= run.peak <= low + extra
    assert low - 1e-9 <= run.mean_instances <= low + extra + 1e-9
    by_key: dict[str, list[tuple[float, float]]] = {}
    for placement in run.placements:
        assert placement.wait >= 0
        by_key.setdefault(placement.job.session_key, []).append((placement.start, placement.finish))
    for spans in by_key.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert simulate(jobs, low, policy, scaling=Scaling(low, low + extra, 10.0, 30.0)) == run
