"""The per-issue loop guard over real signed deliveries, with the fake Forgejo on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from claude_hooks.config import FlowsConfig
from claude_hooks.core.decision import Decision, ForgeCommand
from claude_hooks.core.loop_guard import service_limits, trip_reason
from claude_hooks.service.intake import Applied, _kept
from tests.fake_forgejo import FakeForgejo
from tests.support import fixture, forgejo_headers, wait_until
from tests.web.test_forge_flows import client_for, forge_config  # noqa: F401

COMMAND = ["true"]


def test_trip_reasons() -> None:
    flows = service_limits(
        FlowsConfig(max_tasks_per_issue=5, max_cost_per_issue_usd=10.0, max_review_rounds=3)
    )
    assert trip_reason(flows, 4, 9.99, 3) is None
    assert trip_reason(flows, 5, 0.0, 0) == "5 agent tasks (max_tasks_per_issue = 5)"
    assert trip_reason(flows, 1, 10.0, 0) == (
        "$10.00 spent by agents (max_cost_per_issue_usd = 10)"
    )
    assert trip_reason(flows, 1, 0.0, 4) == (
        "4 changes-requested rounds on its pull request (max_review_rounds = 3)"
    )


async def post(client: httpx.AsyncClient, name: str, delivery: str) -> dict[str, Any]:
    body, headers = fixture(name)
    answer = await client.post(
        "/webhook",
        content=body,
        headers=forgejo_headers(headers["X-Forgejo-Event-Type"], body, delivery),
    )
    assert answer.status_code in (200, 202), answer.text
    result: dict[str, Any] = answer.json()
    return result


async def test_a_pull_request_bounced_between_reviewer_and_dev_stops_until_a_human_steps_in(
    client_for: Any,  # noqa: F811
    fake_forgejo: FakeForgejo,
    tmp_path: Path,
) -> None:
    fake_forgejo.add_token("tok-bob", "bob")
    reviewer = {"login": "bob", "token": "tok-bob", "runner": "command", "command": COMMAND}
    config = forge_config(
        tmp_path,
        fake_forgejo,
        types={"reviewer": {**reviewer, "workdir": "none", "comments": False}},
        flows={"max_review_rounds": 2, "escalate_to": "alice", "escalation_label": "needs-human"},
    )
    config.types["dev"].comments = "off"  # only the escalation is posted
    _service, client = await client_for(config)
    # bob is the reviewer agent: it requests changes on dev's PR #18 (for issue #17), twice.
    for round_ in (1, 2):
        answer = await post(client, "pull_request_review_rejected", f"round-{round_}")
        assert answer["status"] == "queued", answer
    stopped = await post(client, "pull_request_review_rejected", "round-3")
    assert stopped["status"] == "ignored"
    assert stopped["reason"] == (
        "no dev work: acme/widget#17 needs a human "
        "(3 changes-requested rounds on its pull request (max_review_rounds = 2))"
    )
    issue = fake_forgejo.repos[("acme", "widget")].issues[18]
    await wait_until(lambda: "needs-human" in issue.labels)
    await wait_until(lambda: len(fake_forgejo.comments) == 1)
    comment = fake_forgejo.comments[0]
    assert comment.number == 18 and comment.user == "dev-bot"
    assert comment.body.startswith("@alice claude-hooks stopped agent work on this issue")
    # The agent's next event does not reset the guard, and the humans are asked only once.
    again = await post(client, "pull_request_review_rejected", "round-4")
    assert again["status"] == "ignored" and "needs a human" in again["reason"]
    auth = {"Authorization": "Bearer test-token"}
    limits = (await client.get("/api/limits", headers=auth)).json()
    assert [(g["repo"], g["number"]) for g in limits["needs_human"]] == [("acme/widget", 17)]
    assert "Needs a human" in (await client.get("/", headers=auth)).text

    # A human's assignment under a delivery id seen before is a duplicate: it resets nothing.
    replayed = await post(client, "issues_assigned_dev", "round-1")
    assert replayed["status"] == "duplicate", replayed
    limits = (await client.get("/api/limits", headers=auth)).json()
    assert [(g["repo"], g["number"]) for g in limits["needs_human"]] == [("acme/widget", 17)]

    # alice (a human) assigns dev-bot to #17: the guard resets and work flows again.
    assigned = await post(client, "issues_assigned_dev", "human-assign")
    assert assigned["status"] == "queued", assigned
    assert (await client.get("/api/limits", headers=auth)).json()["needs_human"] == []
    resumed = await post(client, "pull_request_review_rejected", "round-5")
    assert resumed["status"] == "queued", resumed
    assert len(fake_forgejo.comments) == 1
    assert len(fake_forgejo.requests_to("/repos/acme/widget/labels", "POST")) == 1


async def test_a_repositorys_own_lower_limit_trips_the_guard(
    client_for: Any,  # noqa: F811
    fake_forgejo: FakeForgejo,
    tmp_path: Path,
) -> None:
    fake_forgejo.add_token("tok-bob", "bob")
    reviewer = {"login": "bob", "token": "tok-bob", "runner": "command", "command": COMMAND}
    config = forge_config(
        tmp_path,
        fake_forgejo,
        types={"reviewer": {**reviewer, "workdir": "none", "comments": False}},
        flows={"max_review_rounds": 3},
    )
    config.types["dev"].comments = "off"
    # The service allows 3 rounds; the repository's file (narrowing needs no [policy]) says 1.
    fake_forgejo.commit_file("acme", "widget", ".claude-hooks.toml", "max_review_rounds = 1\n")
    service, client = await client_for(config)
    assert (await post(client, "pull_request_review_rejected", "round-1"))["status"] == "queued"
    stopped = await post(client, "pull_request_review_rejected", "round-2")
    assert stopped["status"] == "ignored"
    assert stopped["reason"].endswith("(max_review_rounds = 1))")
    # `@dev-bot status` names the repository's limit too.
    key = "dev:acme/widget:17"
    status = ForgeCommand("status", "dev", "acme/widget", 18, key, (key,), 1, "alice", True)
    assert "2 of 1 review rounds" in await service.intake.commands.status(status)


def test_a_decision_that_failed_part_way_keeps_a_humans_guard_resets() -> None:
    """A mention or comment (no assignment state) whose applying fails is recorded as an
    error with the resets its human sender made, as an assignment is."""
    resets = [("acme/widget", 17, 5.0)]
    kept = _kept(Decision(reason="mentioned", resets=resets), Applied())
    assert kept is not None and kept.resets == resets
