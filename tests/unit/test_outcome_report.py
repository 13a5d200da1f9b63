"""The report's arithmetic and the variants' split: pure rules."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from claude_hooks.config import load_config
from claude_hooks.core.outcome_report import (
    OutcomeRows,
    PullCounts,
    TaskCount,
    compare,
    group_json,
    summarise,
    two_proportion_p,
    wilson,
)
from claude_hooks.core.variants import choose
from claude_hooks.errors import ConfigError


def test_wilson_interval_matches_the_textbook_values() -> None:
    interval = wilson(1, 2)
    assert interval is not None
    assert (round(interval.low, 4), round(interval.high, 4)) == (0.0945, 0.9055)
    assert wilson(0, 0) is None
    zero = wilson(0, 10)
    assert zero is not None and zero.low == 0.0 and 0.27 < zero.high < 0.28


def test_two_proportion_test_says_when_a_difference_is_not_yet_significant() -> None:
    p = two_proportion_p(6, 10, 4, 10)
    assert p is not None and p > 0.05
    p = two_proportion_p(90, 100, 50, 100)
    assert p is not None and p < 1e-6
    assert two_proportion_p(0, 5, 0, 5) is None
    assert two_proportion_p(1, 0, 1, 2) is None


def _variant(name: str, opened: int, merged: int, cost: float) -> OutcomeRows:
    return OutcomeRows(
        tasks=[TaskCount(name, "work_issue", "succeeded", opened, cost)],
        pulls=[PullCounts(name, opened, merged, 0, merged, 0, 0, 0)],
    )


def test_variants_are_compared_by_merge_rate_with_an_interval_on_cost() -> None:
    a, b = _variant("terse", 10, 6, 20.0), _variant(None, 10, 4, 10.0)  # type: ignore[arg-type]
    rows = OutcomeRows([*a.tasks, *b.tasks], [*a.pulls, *b.pulls])
    reports = summarise(rows, "variant")
    assert [r.group for r in reports] == ["base", "terse"]
    terse = group_json(reports[1])
    assert terse["merge_rate"] == 0.6
    assert terse["cost_usd"]["per_merged_pr"] == pytest.approx(20 / 6)
    low, high = terse["cost_usd"]["per_merged_pr_interval"]
    assert low < 20 / 6 < high
    comparison = compare(reports)
    assert comparison is not None and not comparison.significant
    assert "not yet significant" in comparison.note


def test_a_seeded_split_keeps_a_session_and_follows_the_shares() -> None:
    shares = [("terse", 0.5), ("verbose", 0.25)]
    keys = [f"dev:acme/widget:{n}" for n in range(4000)]
    first = [choose(shares, "seed-1", key) for key in keys]
    assert first == [choose(shares, "seed-1", key) for key in keys]  # the same every time
    counts = Counter(first)
    assert math.isclose(counts["terse"] / 4000, 0.5, abs_tol=0.03)
    assert math.isclose(counts["verbose"] / 4000, 0.25, abs_tol=0.03)
    assert math.isclose(counts[None] / 4000, 0.25, abs_tol=0.03)  # the type's own settings
    assert first != [choose(shares, "seed-2", key) for key in keys]


def test_variant_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "claude-hooks.toml"
    path.write_text(
        '[server]\nwebhook_secret = "x"\napi_token = "y"\n'
        "[types.dev]\n"
        'variants = [{name = "terse", share = 0.7}, {name = "terse", share = 0.2}]\n'
        "[types.rev]\n"
        'variants = [{name = "a", share = 0.7}, {name = "b", share = 0.5}]\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert "types.dev: variants: the name 'terse' is used twice" in message
    assert "types.rev: variants: the shares sum to 1.2, over 1" in message
