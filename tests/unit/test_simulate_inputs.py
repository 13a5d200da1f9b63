"""The simulate command's inputs: every malformed one is refused with a message naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_hooks.capacity.simulation import Policy
from claude_hooks.capacity.workload import load_file, parse_duration, synthetic
from claude_hooks.cli.simulate import parse_elastic, parse_instances, parse_policies, sweep
from claude_hooks.errors import InvalidInputError


def test_instances_and_policies() -> None:
    assert parse_instances("dev=2, reviewer=1..3") == {"dev": [2], "reviewer": [1, 2, 3]}
    assert parse_policies("steal,seed,steal") == [Policy.STEAL, Policy.SEED]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dev", "'dev' is not TYPE=N or TYPE=LOW..HIGH"),
        ("dev=", "'dev=' is not TYPE=N"),
        ("Dev!=2", "'Dev!=2' is not TYPE=N"),
        ("dev=1..", "'dev=1..' is not TYPE=N"),
        ("dev=0", "dev needs 1 to 1000 instances"),
        ("dev=3..1", "dev needs 1 to 1000 instances"),
        ("dev=1..1001", "dev needs 1 to 1000 instances"),
        ("dev=1,dev=2", "type 'dev' given twice"),
    ],
)
def test_bad_instances(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match="--instances") as raised:
        parse_instances(text)
    assert message in str(raised.value)


def test_elastic_ranges() -> None:
    assert parse_elastic("dev=2..8, reviewer=3") == {"dev": (2, 8), "reviewer": (3, 3)}
    for text, message in [
        ("dev", "'dev' is not TYPE=MIN..MAX"),
        ("dev=0..2", "dev: the minimum must be at least 1"),
        ("dev=x", "dev: write 'min..max'"),
        ("dev=1..2,dev=2..3", "a type is given twice"),
    ]:
        with pytest.raises(InvalidInputError, match="--elastic") as raised:
            parse_elastic(text)
        assert message in str(raised.value)


def test_bad_policy() -> None:
    with pytest.raises(InvalidInputError, match=r"'fifo' is not a policy \(choose from seed"):
        parse_policies("seed,fifo")


def test_durations() -> None:
    assert parse_duration("90s", "d") == 90
    assert parse_duration("6m", "d") == 360
    assert parse_duration("1.5h", "d") == 5400
    assert parse_duration("250ms", "d") == 0.25
    assert parse_duration("42", "d") == 42
    with pytest.raises(InvalidInputError, match="'6x' is not a duration"):
        parse_duration("6x", "d")


@pytest.mark.parametrize(
    ("arrivals", "durations", "message"),
    [
        ("uniform:1", "fixed:1m", "write poisson:RATE"),
        ("poisson:0", "fixed:1m", "the rate must be above 0"),
        ("poisson:often", "fixed:1m", "'often' is not a number"),
        ("poisson:1", "lognormal:40m,6m", "the median must be above 0 and below the p90"),
        ("poisson:1", "lognormal:6m", "the p90: '' is not a duration"),
        ("poisson:1", "pareto:1", "write lognormal:MEDIAN,P90"),
    ],
)
def test_bad_synthetic_laws(arrivals: str, durations: str, message: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        synthetic(["dev"], arrivals, durations, 1, 1)
    assert message in str(raised.value)


def test_synthetic_lognormal_has_the_asked_median_and_p90() -> None:
    jobs = synthetic(["dev"], "poisson:3000", "lognormal:6m,40m", 10, 3).jobs
    durations = sorted(job.duration for job in jobs)
    assert 29_000 < len(durations) < 31_000
    assert 0.95 * 360 < durations[len(durations) // 2] < 1.05 * 360
    assert 0.95 * 2400 < durations[int(len(durations) * 0.9)] < 1.05 * 2400


def test_a_seed_makes_the_same_workload() -> None:
    first = synthetic(["dev", "reviewer"], "poisson:30", "lognormal:6m,40m", 4, 7)
    assert first == synthetic(["dev", "reviewer"], "poisson:30", "lognormal:6m,40m", 4, 7)
    assert first != synthetic(["dev", "reviewer"], "poisson:30", "lognormal:6m,40m", 4, 8)
    assert {job.type for job in first.jobs} == {"dev", "reviewer"}


def test_follow_ups_continue_one_of_the_last_ten_issues() -> None:
    jobs = synthetic(["dev"], "poisson:60", "fixed:1m", 10, 5, follow_ups=0.5).jobs
    opened = 0
    for job in jobs:
        number = int(job.session_key.rsplit(":", 1)[1])
        if number > opened:
            assert number == opened + 1  # a new issue
            opened = number
        else:
            assert number > opened - 10  # a follow-up of a recent one
    assert 0.4 < 1 - opened / len(jobs) < 0.6


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "the JSON must be a list of objects"),
        ("[{", "not JSON"),
        ("[1]", "row 1: not an object"),
        ('[{"arrival": 0, "type": "dev"}]', "row 1: duration missing"),
        ('[{"arrival": "noon", "type": "dev", "duration": 1}]', "row 1: arrival: 'noon'"),
        ('[{"arrival": "nan", "type": "dev", "duration": 1}]', "not a finite number"),
        ('[{"arrival": 0, "type": "dev", "duration": -1}]', "row 1: duration is negative"),
    ],
)
def test_bad_workload_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "workload.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match="--workload") as raised:
        load_file(path)
    assert message in str(raised.value)


def test_a_type_missing_from_the_workload(tmp_path: Path) -> None:
    path = tmp_path / "workload.json"
    path.write_text(json.dumps([{"arrival": 0, "type": "reviewer", "duration": 1}]))
    with pytest.raises(InvalidInputError, match=r"no tasks of type 'dev' \(its types: reviewer\)"):
        sweep(load_file(path), {"dev": [1]}, [Policy.SEED])


def test_rows_without_a_session_key_get_one_each(tmp_path: Path) -> None:
    path = tmp_path / "workload.csv"
    path.write_text("arrival,type,duration\n0,dev,1m\n0,dev,1m\n")
    jobs = load_file(path).jobs
    assert [job.duration for job in jobs] == [60, 60]
    assert len({job.session_key for job in jobs}) == 2
