"""`claude-hooks report`: what the agents' work came to, from the outcome records.

Per type, model, prompt variant or repository: tasks by kind and outcome, the agents' PRs
(opened, merged, closed unmerged, open), review rounds until approval, the CI first-pass
rate, the time from assignment to PR, approval and merge, the humans' interventions, and
the cost per task, issue and merged PR. The sums come from one store query; the arithmetic
is `core/outcome_report.py`.
"""

from __future__ import annotations

import enum
import json
import re
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from claude_hooks.cli.options import ConfigOption, command_config, fail
from claude_hooks.cli.spend import _with_store
from claude_hooks.core.outcome_report import (
    GroupBy,
    GroupReport,
    compare,
    ratio,
    report_json,
    summarise,
)

out = Console(
    markup=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200
)
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNIT = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class By(enum.StrEnum):
    TYPE = "type"
    MODEL = "model"
    VARIANT = "variant"
    REPO = "repo"


def span_seconds(text: str) -> float | None:
    """`30d`, `12h`, `2w`, `90m` in seconds; `all`: None (no start)."""
    if text.strip().lower() == "all":
        return None
    match = _SPAN.match(text)
    if match is None:
        fail(f"--since {text!r}: give a span such as 30d, 12h, 2w or 90m, or 'all'", 2)
    return float(match.group(1)) * _UNIT[match.group(2)]


def report(
    since: Annotated[str, typer.Option(help="How far back: 30d, 12h, 2w, 90m, or all.")] = "30d",
    by: Annotated[
        By | None, typer.Option(help="Group by type, model, variant or repo (default: one row).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """What the agents' work came to: PRs merged, review rounds, CI, time and cost."""
    config = command_config(config_file)
    span = span_seconds(since)
    start = None if span is None else time.time() - span
    grouping: GroupBy | None = None if by is None else by.value
    rows = _with_store(config, lambda s: s.outcomes.report(start, grouping), create=False)
    reports = summarise(rows, grouping)
    if as_json:
        sys.stdout.write(json.dumps(report_json(reports, grouping, start), indent=2) + "\n")
        return
    _table(reports, grouping)


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _hours(total: float, n: int) -> str:
    return "-" if not n else f"{total / n / 3600:.1f}h"


def _table(reports: list[GroupReport], by: GroupBy | None) -> None:
    table = Table(
        by or "group",
        "tasks",
        "issues",
        "PRs",
        "merged",
        "closed",
        "open",
        "merge rate (95%)",
        "rounds",
        "CI 1st pass",
        "to PR",
        "to approval",
        "to merge",
        "human",
        "$/task",
        "$/issue",
        "$/merged PR",
    )
    for r in reports:
        p, s = r.pulls, r.sessions
        interval = r.merge_interval()
        rate = _pct(r.merge_rate)
        if interval is not None:
            rate += f" ({interval.low:.0%}-{interval.high:.0%})"
        table.add_row(
            r.group,
            str(r.task_count),
            str(r.issues),
            str(r.opened),
            str(r.merged),
            str(p.closed if p else 0),
            str(r.opened - r.merged - (p.closed if p else 0)),
            rate,
            "-"
            if p is None or ratio(p.rounds_to_approval, p.approved) is None
            else f"{p.rounds_to_approval / p.approved:.1f}",
            _pct(ratio(p.ci_first_pass, p.ci_known)) if p else "-",
            _hours(p.to_pr_seconds, p.to_pr_n) if p else "-",
            _hours(p.to_approval_seconds, p.to_approval_n) if p else "-",
            _hours(p.to_merge_seconds, p.to_merge_n) if p else "-",
            str(s.commands + s.stops + s.escalations + s.human_commits) if s else "0",
            _money(ratio(r.cost_usd, r.task_count)),
            _money(ratio(r.cost_usd, r.issues)),
            _money(r.cost_per_merged_pr),
        )
    out.print(table)
    if by == "variant":
        comparison = compare(reports)
        if comparison is not None:
            out.print(comparison.note)
    out.print(
        "Merge rate: merged PRs over PRs opened (open ones count as not merged yet). Costs are "
        "the group's runs that reported one (claude runs); a type's PRs carry its own runs' cost."
    )
