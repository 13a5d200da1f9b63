"""The arithmetic of `claude-hooks report`: counts from the store in, rates and costs out.

The store sums the outcome records per group in one named query (`store/outcomes.py`);
everything here is pure: rates, means, costs per task, issue and merged PR, a Wilson
interval for the merge rate and a two-proportion test that says when a difference between
prompt variants is not yet significant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

GroupBy = Literal["type", "model", "variant", "repo", "week"]
Z95 = 1.959963984540054  # the normal quantile of a 95 % two-sided interval
SIGNIFICANCE = 0.05
NO_VARIANT = "base"  # a session that got no variant: the type's own role and model


@dataclass(frozen=True, slots=True)
class TaskCount:
    group: str | None
    kind: str
    state: str
    count: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class PullCounts:
    """The agent PRs of one group. `*_seconds` sum the waits from the assignment over the
    `*_n` PRs that have both ends."""

    group: str | None
    opened: int
    merged: int
    closed: int
    approved: int
    rounds_to_approval: int  # changes-requested rounds before approval, over approved PRs
    ci_known: int  # PRs whose first head has a CI verdict
    ci_first_pass: int
    to_pr_seconds: float = 0.0
    to_pr_n: int = 0
    to_approval_seconds: float = 0.0
    to_approval_n: int = 0
    to_merge_seconds: float = 0.0
    to_merge_n: int = 0


@dataclass(frozen=True, slots=True)
class SessionCounts:
    group: str | None
    issues: int  # sessions assigned (a work_issue): the issues worked
    commands: int
    stops: int
    escalations: int
    human_commits: int


@dataclass(frozen=True, slots=True)
class RoundCount:
    """How many approved PRs of a group took `rounds` changes-requested rounds."""

    group: str | None
    rounds: int
    count: int


@dataclass(frozen=True, slots=True)
class OutcomeRows:
    """What the store's report query returns: per group, the sums the report is made of."""

    tasks: Sequence[TaskCount] = ()
    pulls: Sequence[PullCounts] = ()
    sessions: Sequence[SessionCounts] = ()
    rounds: Sequence[RoundCount] = ()


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


@dataclass(slots=True)
class GroupReport:
    group: str
    tasks: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> state -> count
    task_count: int = 0
    cost_usd: float = 0.0
    issues: int = 0
    pulls: PullCounts | None = None
    sessions: SessionCounts | None = None
    rounds: dict[int, int] = field(default_factory=dict)

    @property
    def opened(self) -> int:
        return self.pulls.opened if self.pulls else 0

    @property
    def merged(self) -> int:
        return self.pulls.merged if self.pulls else 0

    @property
    def merge_rate(self) -> float | None:
        """Merged PRs over PRs opened (one still open counts as not merged yet)."""
        return ratio(self.merged, self.opened)

    @property
    def cost_per_merged_pr(self) -> float | None:
        return ratio(self.cost_usd, self.merged)

    def merge_interval(self) -> Interval | None:
        return wilson(self.merged, self.opened)

    def cost_interval(self) -> Interval | None:
        """Cost per merged PR as the cost per PR opened over the merge rate, bounded by the
        merge rate's Wilson interval (the cost per PR is taken as known)."""
        interval = self.merge_interval()
        per_pr = ratio(self.cost_usd, self.opened)
        if interval is None or per_pr is None:
            return None
        high = per_pr / interval.low if interval.low > 0 else math.inf
        return Interval(per_pr / interval.high, high)


def ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def wilson(successes: int, trials: int, z: float = Z95) -> Interval | None:
    """The Wilson score interval of a proportion: sound for small counts and rates near 0
    or 1, where the normal approximation is not."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_p(a_hits: int, a_n: int, b_hits: int, b_n: int) -> float | None:
    """The two-sided p-value of the pooled two-proportion z-test (None without data or
    without variation)."""
    if a_n <= 0 or b_n <= 0:
        return None
    pooled = (a_hits + b_hits) / (a_n + b_n)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / a_n + 1 / b_n))
    if spread == 0:
        return None
    z = abs(a_hits / a_n - b_hits / b_n) / spread
    return math.erfc(z / math.sqrt(2))


def _label(group: str | None, by: GroupBy | None) -> str:
    if group is not None:
        return group
    if by is None:
        return "all"
    return NO_VARIANT if by == "variant" else "(none)"


def summarise(rows: OutcomeRows, by: GroupBy | None) -> list[GroupReport]:
    """One report per group, in the order of their names."""
    groups: dict[str, GroupReport] = {}

    def of(group: str | None) -> GroupReport:
        name = _label(group, by)
        return groups.setdefault(name, GroupReport(name))

    for t in rows.tasks:
        report = of(t.group)
        states = report.tasks.setdefault(t.kind, {})
        states[t.state] = states.get(t.state, 0) + t.count
        report.task_count += t.count
        report.cost_usd += t.cost_usd
    for p in rows.pulls:
        of(p.group).pulls = p
    for s in rows.sessions:
        report = of(s.group)
        report.sessions = s
        report.issues = s.issues
    for r in rows.rounds:
        of(r.group).rounds[r.rounds] = r.count
    return [groups[name] for name in sorted(groups)]


def _seconds(total: float, n: int) -> float | None:
    return round(total / n, 3) if n else None


def _money(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _interval(interval: Interval | None, digits: int = 4) -> list[float | None] | None:
    if interval is None:
        return None
    return [
        round(interval.low, digits),
        None if math.isinf(interval.high) else round(interval.high, digits),
    ]


def group_json(report: GroupReport) -> dict[str, Any]:
    """A group's report as `report --json` prints it."""
    p = report.pulls or PullCounts(report.group, 0, 0, 0, 0, 0, 0, 0)
    s = report.sessions or SessionCounts(report.group, 0, 0, 0, 0, 0)
    return {
        "group": report.group,
        "tasks": {"total": report.task_count, "by_kind": report.tasks},
        "issues": report.issues,
        "pull_requests": {
            "opened": p.opened,
            "merged": p.merged,
            "closed_unmerged": p.closed,
            "open": p.opened - p.merged - p.closed,
            "approved": p.approved,
        },
        "merge_rate": _rate(report.merge_rate),
        "merge_rate_interval": _interval(report.merge_interval()),
        "review_rounds_until_approval": _rate(ratio(p.rounds_to_approval, p.approved)),
        "review_rounds_histogram": {str(k): v for k, v in sorted(report.rounds.items())},
        "ci_first_pass_rate": _rate(ratio(p.ci_first_pass, p.ci_known)),
        "ci_first_pass": {"passed": p.ci_first_pass, "known": p.ci_known},
        "seconds_from_assignment": {
            "to_pr": _seconds(p.to_pr_seconds, p.to_pr_n),
            "to_approval": _seconds(p.to_approval_seconds, p.to_approval_n),
            "to_merge": _seconds(p.to_merge_seconds, p.to_merge_n),
        },
        "human_interventions": {
            "commands": s.commands,
            "stops": s.stops,
            "escalations": s.escalations,
            "human_commits": s.human_commits,
            "total": s.commands + s.stops + s.escalations + s.human_commits,
        },
        "cost_usd": {
            "total": _money(report.cost_usd),
            "per_task": _money(ratio(report.cost_usd, report.task_count)),
            "per_issue": _money(ratio(report.cost_usd, report.issues)),
            "per_merged_pr": _money(report.cost_per_merged_pr),
            "per_merged_pr_interval": _interval(report.cost_interval(), 6),
        },
    }


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(frozen=True, slots=True)
class Comparison:
    """The two groups with the most PRs, compared by merge rate."""

    a: str
    b: str
    p_value: float | None
    significant: bool

    @property
    def note(self) -> str:
        if self.p_value is None:
            return f"{self.a} vs {self.b}: not enough data to compare merge rates yet"
        verdict = "significant" if self.significant else "not yet significant"
        return (
            f"{self.a} vs {self.b}: the difference in merge rate is {verdict} "
            f"(p = {self.p_value:.3f}, two-proportion test at {SIGNIFICANCE:g})"
        )


def compare(reports: Sequence[GroupReport]) -> Comparison | None:
    """Whether the two most-used groups' merge rates differ beyond chance."""
    ranked = sorted(reports, key=lambda r: (-r.opened, r.group))[:2]
    if len(ranked) < 2:
        return None
    a, b = ranked
    p = two_proportion_p(a.merged, a.opened, b.merged, b.opened)
    return Comparison(a.group, b.group, p, p is not None and p < SIGNIFICANCE)


def report_json(
    reports: Sequence[GroupReport], by: GroupBy | None, since: float | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "by": by,
        "since": since,
        "groups": [group_json(r) for r in reports],
    }
    if by == "variant":
        comparison = compare(reports)
        out["comparison"] = (
            None
            if comparison is None
            else {
                "a": comparison.a,
                "b": comparison.b,
                "p_value": None if comparison.p_value is None else round(comparison.p_value, 4),
                "significant": comparison.significant,
                "note": comparison.note,
            }
        )
    return out


def _cell_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _cell_money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def summary_markdown(reports: Sequence[GroupReport], first_day: str, last_day: str) -> str:
    """The weekly summary's comment: the report by type for the week, as a Markdown table."""
    lines = [
        f"**claude-hooks weekly outcomes**, {first_day} to {last_day}",
        "",
    ]
    if not reports:
        return "\n".join([*lines, "No agent work was recorded this week."])
    lines += [
        "| type | tasks | PRs opened | merged | closed unmerged | merge rate | review rounds "
        "| CI first pass | human interventions | cost | cost per merged PR |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for report in reports:
        row = group_json(report)
        prs = row["pull_requests"]
        rounds = row["review_rounds_until_approval"]
        lines.append(
            f"| {report.group} | {report.task_count} | {prs['opened']} | {prs['merged']} "
            f"| {prs['closed_unmerged']} | {_cell_rate(row['merge_rate'])} "
            f"| {'-' if rounds is None else f'{rounds:.1f}'} "
            f"| {_cell_rate(row['ci_first_pass_rate'])} "
            f"| {row['human_interventions']['total']} | {_cell_money(report.cost_usd)} "
            f"| {_cell_money(report.cost_per_merged_pr)} |"
        )
    lines += ["", "`claude-hooks report --since 7d --by type` gives the same figures."]
    return "\n".join(lines)
