"""Outcome records from a recorded flow on the fake forge, and `report --json` over them.

Two issues are assigned to dev; dev's login opens a PR for each; CI fails on #18's first
head (and passes on a rerun of it), passes on #22's; bob requests changes on #18 once, then
approves it; #18 is merged and #22 closed unmerged; alice pushes two commits to #22's branch
and asks dev for its status. Every run reports $0.50.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from claude_hooks.agents.run_result import RunResult
from claude_hooks.agents.runners.base import RunContext
from claude_hooks.config import WEEKDAYS
from claude_hooks.core.decision import Decision
from claude_hooks.core.outcome_report import summarise, wilson
from claude_hooks.core.outcomes import OutcomeFact, PullFact, SessionSeen
from claude_hooks.core.variants import choose
from claude_hooks.service.runtime import Service
from claude_hooks.service.summary import WeeklySummary
from claude_hooks.store.decisions import Cause
from claude_hooks.web.app import create_app
from tests.fake_forgejo import FakeForgejo
from tests.support import FIXTURES, all_idle, make_config, run_cli, sign, wait_until
from tests.web.test_forge_flows import HEAD_C, forge_config

HEAD_22 = "2222222222222222222222222222222222222222"


class CostRunner:
    """Every run succeeds at once and costs $0.50."""

    async def run(self, ctx: RunContext) -> RunResult:
        return RunResult(succeeded=True, exit_code=0, result="done", cost_usd=0.5)


def _delivery(name: str, edit: Callable[[dict[str, Any]], None]) -> tuple[bytes, str, bool]:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    headers = json.loads((FIXTURES / f"{name}.headers.json").read_text())
    edit(data)
    gitea = "X-Gitea-Event-Type" in headers
    event_type = headers["X-Gitea-Event-Type" if gitea else "X-Forgejo-Event-Type"]
    return json.dumps(data).encode(), event_type, gitea


async def _send(
    client: httpx.AsyncClient,
    name: str,
    delivery: str,
    edit: Callable[[dict[str, Any]], None] = lambda _d: None,
) -> dict[str, Any]:
    body, event_type, gitea = _delivery(name, edit)
    prefix = "X-Gitea" if gitea else "X-Forgejo"
    headers = {
        "Content-Type": "application/json",
        f"{prefix}-Delivery": delivery,
        f"{prefix}-Event": event_type,
        f"{prefix}-Event-Type": event_type,
        f"{prefix}-Signature": sign(body),
    }
    answer = await client.post("/webhook", content=body, headers=headers)
    assert answer.status_code < 300, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _pull(number: int, ref: str, sha: str, **more: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["number"] = number
        data["pull_request"].update(number=number, **more)
        data["pull_request"]["head"].update(ref=ref, sha=sha)

    return edit


def _sha(sha: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["sha"] = sha

    return edit


def _issue_21(data: dict[str, Any]) -> None:
    data["issue"].update(number=21, title="Document the retries")


def _human_push(data: dict[str, Any]) -> None:
    data["ref"] = "refs/heads/dev-bot/issue-21-docs"
    data["total_commits"] = 2
    data["pusher"] = data["sender"] = {**data["sender"], "login": "alice"}


def _status_command(data: dict[str, Any]) -> None:
    data["issue"].update(number=21)
    data["comment"]["body"] = "@dev-bot status"


async def test_a_recorded_flow_gives_the_exact_counts_rates_and_costs(
    tmp_path: Path, fake_forgejo: FakeForgejo
) -> None:
    config = forge_config(tmp_path, fake_forgejo, flows={"poll_ci": False})
    fake_forgejo.add_issue("acme", "widget", number=21, title="Document the retries")
    fake_forgejo.add_pull(
        "acme",
        "widget",
        number=22,
        head_sha=HEAD_22,
        head_ref="dev-bot/issue-21-docs",
        user="dev-bot",
        body="Fixes #21.",
    )
    service = await Service.open(config, lambda _type: CostRunner())
    await service.start()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)), base_url="http://test"
    )
    opened = "pull_request_opened"
    try:
        flow: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
            ("issues_assigned_dev", lambda _d: None),
            ("issues_assigned_dev", _issue_21),
            (opened, _pull(18, "dev-bot/issue-17-retry", HEAD_C)),
            (opened, _pull(22, "dev-bot/issue-21-docs", HEAD_22)),
            ("status_failure", _sha(HEAD_C)),  # #18's first head fails ...
            ("status_success", _sha(HEAD_C)),  # ... and passes when run again: still a fail
            ("status_success", _sha(HEAD_22)),
            ("pull_request_review_rejected", lambda _d: None),
            ("pull_request_review_approved", lambda _d: None),
            ("pull_request_closed_merged", lambda _d: None),
            (
                "pull_request_closed_merged",
                _pull(22, "dev-bot/issue-21-docs", HEAD_22, merged=False),
            ),
            ("push", _human_push),
            ("issue_comment_created_mention", _status_command),
        ]
        answers = []
        for i, (name, edit) in enumerate(flow):
            answers.append(await _send(client, name, f"d-{i}", edit))
            # Each step's work is done before the next event (a close cancels what waits).
            await wait_until(lambda: all_idle(service.store), timeout=20)
        assert answers[1]["status"] == "queued", answers[1]
        rows = await service.store.outcomes.report(None, None)
        scraped = await client.get("/metrics", headers={"Authorization": "Bearer test-token"})
        assert scraped.status_code == 200
        metrics = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(scraped.text)
            for sample in family.samples
        }
        later = await service.store.outcomes.report(time.time() + 1, None)
    finally:
        await client.aclose()
        await service.stop()

    done = run_cli("report", "--by", "type", "--json", config=config)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    groups = {g["group"]: g for g in report["groups"]}
    assert sorted(groups) == ["boss", "dev"]
    dev = groups["dev"]
    assert dev["tasks"] == {
        "total": 4,
        "by_kind": {
            "work_issue": {"succeeded": 2},
            "fix_ci": {"succeeded": 1},
            "address_review": {"succeeded": 1},
        },
    }
    assert dev["issues"] == 2
    assert dev["pull_requests"] == {
        "opened": 2,
        "merged": 1,
        "closed_unmerged": 1,
        "open": 0,
        "approved": 1,
    }
    assert dev["merge_rate"] == 0.5
    interval = wilson(1, 2)
    assert interval is not None
    assert dev["merge_rate_interval"] == [round(interval.low, 4), round(interval.high, 4)]
    assert dev["review_rounds_until_approval"] == 1.0
    assert dev["review_rounds_histogram"] == {"1": 1}
    assert dev["ci_first_pass_rate"] == 0.5
    assert dev["ci_first_pass"] == {"passed": 1, "known": 2}
    waits = dev["seconds_from_assignment"]
    assert all(w is not None and w >= 0 for w in waits.values()), waits
    assert dev["human_interventions"] == {
        "commands": 1,
        "stops": 0,
        "escalations": 0,
        "human_commits": 2,
        "total": 3,
    }
    assert dev["cost_usd"]["total"] == 2.0
    assert dev["cost_usd"]["per_task"] == 0.5
    assert dev["cost_usd"]["per_issue"] == 1.0
    assert dev["cost_usd"]["per_merged_pr"] == 2.0
    boss = groups["boss"]
    assert boss["tasks"] == {"total": 1, "by_kind": {"merge_pr": {"succeeded": 1}}}
    assert boss["pull_requests"]["opened"] == 0
    assert boss["cost_usd"]["total"] == 0.5 and boss["cost_usd"]["per_merged_pr"] is None

    # Prometheus tells the same figures.
    dev_ = (("type", "dev"),)
    assert metrics[("claude_hooks_merge_rate", dev_)] == 0.5
    assert metrics[("claude_hooks_ci_first_pass_rate", dev_)] == 0.5
    assert metrics[("claude_hooks_review_rounds_until_approval", dev_)] == 1.0
    assert metrics[("claude_hooks_agent_pull_requests_total", (("outcome", "merged"), *dev_))] == 1
    assert metrics[("claude_hooks_cost_per_usd", (("per", "merged_pr"), *dev_))] == 2.0
    assert (
        metrics[("claude_hooks_human_interventions_total", (("kind", "human_commits"), *dev_))] == 2
    )
    assert metrics[("claude_hooks_variant_merge_rate", (("variant", "base"),))] == 0.5

    # One row for everything, and a start that leaves everything out.
    whole = summarise(rows, None)
    assert [(g.group, g.task_count, g.cost_usd, g.merged) for g in whole] == [("all", 5, 2.5, 1)]
    assert summarise(later, None) == []


async def test_report_refuses_a_bad_span_in_one_line(
    tmp_path: Path, fake_forgejo: FakeForgejo
) -> None:
    config = forge_config(tmp_path, fake_forgejo)
    done = run_cli("report", "--since", "fortnight", config=config)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --since 'fortnight': give a span such as 30d, 12h, 2w or 90m, or 'all'"
    ]


class ModelRunner:
    """Records the model and role each run was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []  # (kind, model, role)

    async def run(self, ctx: RunContext) -> RunResult:
        self.seen.append((ctx.task.kind, ctx.type_config.model, ctx.type_config.role))
        return RunResult(succeeded=True, exit_code=0, result="done", cost_usd=0.25)


TERSE = {"name": "terse", "share": 0.5, "role": "Be terse.", "model": "haiku"}
VERBOSE = {"name": "verbose", "share": 0.5, "role": "Explain.", "model": "opus"}


async def test_a_session_keeps_its_seeded_variant_for_its_whole_life(
    tmp_path: Path, fake_forgejo: FakeForgejo
) -> None:
    key = "dev:acme/widget:17"
    got = choose([("terse", 0.5), ("verbose", 0.5)], "seed-7", key)
    assert got is not None
    first, other = (TERSE, VERBOSE) if got == "terse" else (VERBOSE, TERSE)
    runner = ModelRunner()

    async def step(variants: list[dict[str, Any]], name: str, edit: Any) -> None:
        dev = {
            "login": "dev-bot",
            "token": "tok-dev",
            "runner": "command",
            "command": ["true"],
            "workdir": "none",
            "variants": variants,
            "variant_seed": "seed-7",
        }
        config = forge_config(tmp_path, fake_forgejo, types={"dev": dev}, flows={"poll_ci": False})
        service = await Service.open(config, lambda _type: runner)
        await service.start()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(service)), base_url="http://test"
        )
        try:
            await _send(client, name, f"v-{len(runner.seen)}", edit)
            await wait_until(lambda: all_idle(service.store), timeout=20)
        finally:
            await client.aclose()
            await service.stop()

    await step([TERSE, VERBOSE], "issues_assigned_dev", lambda _d: None)
    assert runner.seen == [("work_issue", first["model"], first["role"])]
    # The shares change (the session's variant now gets almost none): its next task, a
    # mention, still runs with the variant it was given.
    changed = [{**first, "share": 0.01}, {**other, "share": 0.99}]
    await step(changed, "issue_comment_created_mention", lambda _d: None)
    assert runner.seen[1] == ("answer_mention", first["model"], first["role"])

    config = forge_config(tmp_path, fake_forgejo)
    report = json.loads(run_cli("report", "--by", "variant", "--json", config=config).stdout)
    groups = {g["group"]: g for g in report["groups"]}
    assert groups[str(first["name"])]["tasks"]["total"] == 2
    assert groups[str(first["name"])]["cost_usd"]["total"] == 0.5
    assert report["comparison"] is None or "merge rate" in report["comparison"]["note"]


async def test_the_weekly_summary_is_posted_once_on_the_named_issue(
    tmp_path: Path, fake_forgejo: FakeForgejo
) -> None:
    today = WEEKDAYS[datetime.now(UTC).weekday()]
    report = {"summary_repository": "acme/widget", "summary_issue": 17, "summary_hour": 0}
    config = forge_config(tmp_path, fake_forgejo, report={**report, "summary_weekday": today})
    service = await Service.open(config, lambda _type: CostRunner())
    await service.start()
    try:
        facts: list[OutcomeFact] = [
            SessionSeen("dev:acme/widget:17", "dev", "acme/widget", 17, time.time(), True,
                        None, None),
            PullFact("opened", "acme/widget", 18, time.time(), "dev:acme/widget:17", "dev", HEAD_C),
            PullFact("merged", "acme/widget", 18, time.time()),
        ]  # fmt: skip
        cause = Cause("a test", None, time.time())
        await service.store.dispatch_all([], None, Decision(outcomes=facts), cause)
        assert await service.summary.post()
        assert not await service.summary.post()  # once a week, whoever asks again

        def posted() -> list[str]:
            return [c.body for c in fake_forgejo.comments if c.number == 17]

        await wait_until(lambda: len(posted()) == 1, timeout=10)
        body = posted()[0]
        assert "**claude-hooks weekly outcomes**" in body
        assert "| dev | 0 | 1 | 1 | 0 | 100% |" in body
        # Another day of the week is not the day.
        other = WEEKDAYS[(WEEKDAYS.index(today) + 1) % 7]
        later = forge_config(tmp_path, fake_forgejo, report={**report, "summary_weekday": other})
        assert (
            WeeklySummary(later, service.store.outcomes, time.time, lambda: None).due(time.time())
            is None
        )
    finally:
        await service.stop()


def test_a_summary_needs_an_issue_and_a_poster(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="summary_issue: name the issue"):
        make_config(tmp_path, report={"summary_repository": "acme/widget"})
    with pytest.raises(ValueError, match="summary_repository 'widget': give it as owner/repo"):
        make_config(tmp_path, report={"summary_repository": "widget", "summary_issue": 1})
    summary = {"summary_repository": "acme/widget", "summary_issue": 1}
    with pytest.raises(ValueError, match=r"flows\.merge_type: 'nobody' posts the weekly summary"):
        make_config(tmp_path, report=summary, flows={"merge_type": "nobody"})
    with pytest.raises(ValueError, match=r"report\.summary_as: 'ghost' posts the weekly summary"):
        make_config(tmp_path, report={**summary, "summary_as": "ghost"})


async def test_a_polled_ci_verdict_is_recorded_for_the_first_head(
    tmp_path: Path, fake_forgejo: FakeForgejo
) -> None:
    """Forgejo sends no status webhook for external CI: the forge is asked (the CI poller's
    combined status), and its verdict is an outcome whether or not a fix follows."""
    config = forge_config(tmp_path, fake_forgejo)
    service = await Service.open(config, lambda _type: CostRunner())
    await service.start()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)), base_url="http://test"
    )
    try:
        await _send(client, "pull_request_synchronized", "sync-1")
        watches = await service.store.intake.ci_watches()
        assert [(w.pr_number, w.head_sha) for w in watches] == [(18, HEAD_C)]
        fake_forgejo.add_status("acme", "widget", HEAD_C, "ci/test", "success")
        assert await service.ci.check(watches[0]) == "success"
        rows = await service.store.outcomes.report(None, "type")
        assert [(p.group, p.opened, p.ci_known, p.ci_first_pass) for p in rows.pulls] == [
            ("dev", 1, 1, 1)
        ]
    finally:
        await client.aclose()
        await service.stop()
