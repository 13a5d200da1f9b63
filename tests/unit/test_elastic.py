"""The elastic rule (`core/elastic.decide`) and the `instances` setting it reads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claude_hooks.config import load_config
from claude_hooks.core.elastic import Act, Scaling, Seat, decide, new_names, waits_wanted
from claude_hooks.errors import ConfigError

RULE = Scaling(low=1, high=3, scale_up_wait=60, scale_down_idle=900)
NOW = 10_000.0


def seat(name: str, auto: bool = False, **kwargs: object) -> Seat:
    values: dict[str, object] = {"enabled": True, "running": True, "queued": 0, "idle_since": 0.0}
    values.update(kwargs)
    return Seat(name, auto, **values)  # type: ignore[arg-type]


def test_below_the_minimum_instances_are_added_with_the_lowest_free_names() -> None:
    verdict = decide("dev", Scaling(3, 5, 60, 900), [seat("dev-alpha")], [], NOW, ["dev-auto-1"])
    assert verdict.act is Act.ADD
    assert verdict.names == ("dev-auto-2", "dev-auto-3")
    assert "below the minimum 3" in verdict.reason


def test_a_long_wait_while_every_instance_is_busy_adds_one_per_overdue_task() -> None:
    verdict = decide("dev", RULE, [seat("dev-alpha")], [61, 75, 30], NOW)
    assert verdict.act is Act.ADD
    assert verdict.names == ("dev-auto-1", "dev-auto-2")
    assert verdict.wait == 75
    assert "2 task(s) waited 60 s or more (longest 75 s)" in verdict.reason


def test_no_instance_is_added_past_the_maximum() -> None:
    seats = [seat("dev-alpha"), seat("dev-auto-1", True)]
    verdict = decide("dev", RULE, seats, [100, 100, 100], NOW)
    assert verdict.names == ("dev-auto-2",)


def test_an_instance_not_busy_means_no_instance_is_added() -> None:
    """An idle one, or one no node holds yet (it runs nothing): the work waits as today."""
    seats = [seat("dev-alpha"), seat("dev-auto-1", True, running=False, queued=1)]
    assert decide("dev", RULE, seats, [500], NOW).act is Act.NOTHING


def test_a_wait_under_scale_up_wait_adds_nothing() -> None:
    assert decide("dev", RULE, [seat("dev-alpha")], [59.9], NOW).act is Act.NOTHING


def test_declared_instances_over_the_maximum_add_none_and_say_so() -> None:
    seats = [seat(f"dev-{n}") for n in "abcd"]
    verdict = decide("dev", RULE, seats, [1000], NOW)
    assert verdict.act is Act.NOTHING
    assert verdict.note == "the 4 declared instances exceed the maximum 3: none are added"


def test_an_added_instance_idle_long_enough_is_retired_but_a_declared_one_never() -> None:
    seats = [
        seat("dev-alpha", running=False, idle_since=0),
        seat("dev-auto-1", True, running=False, idle_since=NOW - 901),
        seat("dev-auto-2", True, running=False, idle_since=NOW - 100),
    ]
    verdict = decide("dev", RULE, seats, [], NOW)
    assert verdict.act is Act.RETIRE
    assert verdict.names == ("dev-auto-1",)
    assert verdict.wait == 901
    later = decide("dev", RULE, seats, [], NOW + 1000)
    assert later.names == ("dev-auto-1", "dev-auto-2")


def test_retiring_stops_at_the_minimum() -> None:
    seats = [
        seat("dev-auto-1", True, running=False, idle_since=0),
        seat("dev-auto-2", True, running=False, idle_since=1),
    ]
    verdict = decide("dev", Scaling(1, 3, 60, 900), seats, [], NOW)
    assert verdict.names == ("dev-auto-1",)


def test_above_a_lowered_maximum_idle_added_instances_go_at_once() -> None:
    seats = [seat("dev-alpha"), *(seat(f"dev-auto-{n}", True, running=False) for n in (1, 2, 3))]
    verdict = decide("dev", Scaling(1, 2, 60, 900), seats, [], 5.0)
    assert verdict.act is Act.RETIRE
    assert len(verdict.names) == 2
    assert "above the maximum 2" in verdict.reason


def test_a_disabled_added_instance_is_retired_once_idle_and_does_not_count() -> None:
    seats = [
        seat("dev-alpha", running=False),
        seat("dev-auto-1", True, enabled=False, running=False, idle_since=0),
    ]
    verdict = decide("dev", RULE, seats, [], NOW)
    assert verdict.names == ("dev-auto-1",)


def test_new_names_reuse_the_lowest_free_numbers() -> None:
    assert new_names("dev", ["dev-auto-2", "dev-auto-x", "ops-auto-1"], 3) == (
        "dev-auto-1",
        "dev-auto-3",
        "dev-auto-4",
    )


seats_strategy = st.lists(
    st.builds(
        Seat,
        name=st.just(""),
        auto=st.booleans(),
        enabled=st.booleans(),
        running=st.booleans(),
        queued=st.integers(0, 3),
        idle_since=st.floats(0, NOW),
    ),
    max_size=8,
)


@given(
    seats_strategy,
    st.lists(st.floats(0, 5000), max_size=10),
    st.integers(1, 4),
    st.integers(0, 4),
)
def test_the_rule_never_leaves_the_range_it_can_reach(
    drafts: list[Seat], waits: list[float], low: int, extra: int
) -> None:
    seats = [
        replace(s, name=f"dev-auto-{i + 1}" if s.auto else f"dev-d{i}")
        for i, s in enumerate(drafts)
    ]
    scaling = Scaling(low, low + extra, 60, 900)
    verdict = decide("dev", scaling, seats, waits, NOW)
    count = sum(1 for s in seats if s.enabled)
    declared = {s.name for s in seats if not s.auto}
    if verdict.act is Act.ADD:
        assert count + len(verdict.names) <= max(scaling.high, scaling.low)
        assert not set(verdict.names) & {s.name for s in seats}
        assert len(set(verdict.names)) == len(verdict.names)
    if verdict.act is Act.RETIRE:
        gone = {s.name: s for s in seats if s.name in verdict.names}
        assert not set(gone) & declared
        assert all(s.idle for s in gone.values())
        assert count - sum(1 for s in gone.values() if s.enabled) >= scaling.low
    assert decide("dev", scaling, seats, waits, NOW) == verdict  # pure: same in, same out
    # The store reads only the longest waits the rule can use: the same instances change.
    overdue = sorted((w for w in waits if w >= scaling.scale_up_wait), reverse=True)
    read = overdue[: waits_wanted(scaling, seats)]
    fewer = decide("dev", scaling, seats, read, NOW)
    assert (fewer.act, fewer.names) == (verdict.act, verdict.names)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"0..2"', "the minimum must be at least 1"),
        ('"5..2"', "the minimum 5 is above the maximum 2"),
        ('"two"', "write 'min..max'"),
        ("true", "write 'min..max'"),
    ],
)
def test_a_bad_instances_value_names_the_key(tmp_path: Path, value: str, message: str) -> None:
    path = tmp_path / "claude-hooks.toml"
    path.write_text(f"[types.dev]\ninstances = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert "types.dev.instances" in str(caught.value)
    assert message in str(caught.value)


def test_instances_takes_a_range_or_a_fixed_number(tmp_path: Path) -> None:
    path = tmp_path / "claude-hooks.toml"
    path.write_text('[types.dev]\ninstances = "2..8"\n[types.ops]\ninstances = 3\n')
    config = load_config(path, {})
    assert (config.types["dev"].instances, config.types["ops"].instances) == ((2, 8), (3, 3))
    assert (config.types["dev"].scale_up_wait, config.types["dev"].scale_down_idle) == (60, 900)
