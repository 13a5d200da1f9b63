"""Concurrency groups in the simulator: a repository's limit holds its jobs, head-of-line (the
service's rule) or skipping to the next job that fits."""

from __future__ import annotations

import pytest

from claude_hooks.capacity.simulation import Groups, Job, Policy, repository, simulate
from claude_hooks.capacity.workload import synthetic
from claude_hooks.cli.simulate import parse_groups
from claude_hooks.errors import InvalidInputError


def job(arrival: float, repo: str, number: int, duration: float) -> Job:
    return Job(arrival, "dev", f"dev:{repo}:{number}", duration)


def starts(jobs: list[Job], instances: int, groups: Groups | None) -> list[float]:
    return [p.start for p in simulate(jobs, instances, Policy.SEED, groups).placements]


def test_a_full_group_holds_a_job_beside_an_idle_instance() -> None:
    jobs = [job(0, "acme/x", 1, 10), job(0, "acme/x", 2, 10), job(0, "acme/y", 3, 10)]
    assert starts(jobs, 3, None) == [0, 0, 0]
    assert starts(jobs, 3, Groups(1)) == [0, 10, 0]


def test_head_of_line_holds_the_queue_and_skip_takes_the_next_that_fits() -> None:
    # x2 is placed on the second instance, whose head it becomes while x1 and then x3 (queued
    # on the first) hold the group of acme/x; y4 arrives behind x2.
    jobs = [job(0, "acme/x", 1, 10), job(1, "acme/x", 2, 3)]
    jobs += [job(2, "acme/x", 3, 3), job(3, "acme/y", 4, 3)]
    placed = simulate(jobs, 2, Policy.SEED, Groups(1)).placements
    assert [p.instance for p in placed] == [0, 1, 0, 1]
    assert starts(jobs, 2, Groups(1)) == [0, 13, 10, 16]  # y4 waits behind the held head
    assert starts(jobs, 2, Groups(1, skip=True)) == [0, 13, 10, 3]


def test_the_simulation_of_groups_is_the_same_every_time() -> None:
    workload = synthetic(["dev"], "poisson:30", "lognormal:6m,40m", 6, 1, repos=3)
    runs = [simulate(workload.jobs, 4, Policy.STEAL, Groups(2, skip=s)) for s in (0, 0, 1, 1)]
    assert runs[0] == runs[1] and runs[2] == runs[3]
    assert {repository(j.session_key) for j in workload.jobs} == {
        "synthetic/repo-1",
        "synthetic/repo-2",
        "synthetic/repo-3",
    }


def test_group_options_are_checked() -> None:
    assert parse_groups(None, "head") is None
    assert parse_groups("2", "skip") == Groups(2, skip=True)
    with pytest.raises(InvalidInputError, match="--max-running '0': a whole number from 1 up"):
        parse_groups("0", "head")
    with pytest.raises(InvalidInputError, match="--group-wait needs --max-running N"):
        parse_groups(None, "skip")
    with pytest.raises(InvalidInputError, match="--group-wait 'first': choose head or skip"):
        parse_groups("1", "first")
