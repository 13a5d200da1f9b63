"""Every shared sample delivery, posted byte for byte through the real app, and what it does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_hooks.core.domain import DELIVERY_OUTCOMES
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory
from tests.support import FIXTURES, GateRunner, fixture, forgejo_headers, make_config, wait_until

AGENTS = [
    {"name": "dev-alpha", "type": "dev"},
    {"name": "dev-bravo", "type": "dev"},
    {"name": "reviewer-1", "type": "reviewer"},
    {"name": "boss-1", "type": "boss"},
]


@pytest.fixture
async def service(start_service: ServiceFactory, gate: GateRunner, tmp_path: Path) -> Service:
    config = make_config(
        tmp_path,
        agents=AGENTS,
        security={"allowed_senders": ["alice", "bob"]},
    )
    started: Service = await start_service(config, runner=gate)
    return started


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def post(client: httpx.AsyncClient, name: str) -> httpx.Response:
    body, headers = fixture(name)
    return await client.post("/webhook", content=body, headers=headers)


def tasks_of(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["type"], t["session_key"]) for t in answer.get("tasks", [])]


# name -> (fixtures posted first, status, outcome, [(type, session key)], words in the reason)
EXPECTED: dict[str, tuple[list[str], int, str, list[tuple[str, str]], str]] = {
    "issues_opened": ([], 200, "ignored", [], "issues/opened events need no agent work"),
    "issues_assigned_dev": ([], 202, "queued", [("dev", "dev:acme/widget:17")], "assigned to dev"),
    "issues_unassigned": ([], 200, "ignored", [], "unassigned on acme/widget#22"),
    "issue_comment_created_mention": (
        [],
        202,
        "queued",
        [("dev", "dev:acme/widget:17")],
        "alice mentioned dev",
    ),
    "pull_request_opened": ([], 200, "ignored", [], "recorded dev's pull request acme/widget#18"),
    "push": ([], 200, "ignored", [], "push events need no agent work"),
    "pull_request_synchronized": ([], 200, "ignored", [], "continues #17"),
    "pull_request_review_comment": ([], 200, "ignored", [], "need no agent work"),
    "pull_request_review_rejected": (
        [],
        202,
        "queued",
        [("dev", "dev:acme/widget:17")],
        "dev resumes #17",
    ),
    "pull_request_review_approved": (
        [],
        202,
        "queued",
        [("boss", "boss:acme/widget:17")],
        "boss merges it",
    ),
    "pull_request_closed_merged": ([], 200, "ignored", [], "acme/widget#18 merged"),
    "pull_request_review_requested_reviewer": (
        [],
        202,
        "queued",
        [("dev", "dev:acme/widget:19")],
        "review of acme/widget#19",
    ),
    "pull_request_comment_created_mention": (
        [],
        202,
        "queued",
        [("dev", "dev:acme/widget:19")],
        "bob mentioned dev",
    ),
    "pull_request_assigned_dev": ([], 200, "ignored", [], "need no agent work"),
    "status_failure": (
        ["pull_request_synchronized"],
        202,
        "queued",
        [("dev", "dev:acme/widget:17")],
        "dev fixes it (attempt 1 of 2)",
    ),
    "status_success": ([], 200, "ignored", [], "nothing to fix"),
    "action_run_failure": (
        ["pull_request_synchronized"],
        202,
        "queued",
        [("dev", "dev:acme/widget:17")],
        "CI failed on acme/widget#18",
    ),
    "action_run_success": ([], 200, "ignored", [], "nothing to fix"),
    # No type here has trigger labels (tests/web/test_forge_labels.py has them).
    "pull_request_label_added": ([], 200, "ignored", [], "no agent label changed"),
    "pull_request_label_updated": ([], 200, "ignored", [], "no agent label changed"),
    "pull_request_label_cleared": ([], 200, "ignored", [], "no agent label changed"),
}


def test_every_shared_fixture_has_an_expectation() -> None:
    names = {p.name.removesuffix(".headers.json") for p in FIXTURES.glob("*.headers.json")}
    assert names == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_fixture_outcome(client: httpx.AsyncClient, service: Service, name: str) -> None:
    setup, status, outcome, tasks, words = EXPECTED[name]
    for earlier in setup:
        assert (await post(client, earlier)).status_code in (200, 202)
    answer = await post(client, name)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["status"] == outcome
    assert words in body["reason"]
    assert tasks_of(body) == tasks
    body_bytes, headers = fixture(name)
    record = await service.store.intake.get_delivery(headers["X-Gitea-Delivery"])
    assert record is not None
    assert record.outcome == outcome
    assert record.body.encode() == body_bytes
    assert record.task_ids == [t["id"] for t in body.get("tasks", [])]
    for task in body.get("tasks", []):
        stored = await service.store.get_task(task["id"])
        assert stored is not None
        assert stored.agent == task["agent"]
        assert stored.delivery_id == record.id


async def test_the_same_delivery_twice_is_a_duplicate(
    client: httpx.AsyncClient, service: Service
) -> None:
    first = await post(client, "issues_assigned_dev")
    assert first.status_code == 202
    again = await post(client, "issues_assigned_dev")
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert await service.store.count_tasks(TaskFilter()) == 1


async def test_assigned_deliveries_for_dev_land_on_either_instance(
    client: httpx.AsyncClient, service: Service, gate: GateRunner
) -> None:
    body, _headers = fixture("issues_assigned_dev")
    data = json.loads(body)
    agents = []
    for number in range(100, 104):
        data["issue"]["number"] = number
        payload = json.dumps(data).encode()
        answer = await client.post(
            "/webhook",
            content=payload,
            headers=forgejo_headers("issue_assign", payload, f"delivery-{number}"),
        )
        assert answer.status_code == 202, answer.text
        agents.append(answer.json()["tasks"][0]["agent"])
    assert set(agents) == {"dev-alpha", "dev-bravo"}
    assert agents[:2] == ["dev-alpha", "dev-bravo"]


async def send(
    client: httpx.AsyncClient, name: str, delivery: str, change: Any = None
) -> httpx.Response:
    """A shared fixture, changed by `change(data)`, re-signed under a new delivery id."""
    body, headers = fixture(name)
    data = json.loads(body)
    if change is not None:
        change(data)
    payload = json.dumps(data).encode()
    event_type = headers["X-Gitea-Event-Type"]
    return await client.post(
        "/webhook", content=payload, headers=forgejo_headers(event_type, payload, delivery)
    )


async def test_unassigning_cancels_running_and_queued_work(
    client: httpx.AsyncClient, service: Service, gate: GateRunner
) -> None:
    work = (await post(client, "issues_assigned_dev")).json()["tasks"][0]["id"]
    mention = (await post(client, "issue_comment_created_mention")).json()["tasks"][0]
    assert mention["agent"] == "dev-alpha"  # the conversation of #17 lives there
    await wait_until(lambda: gate.started == [work])

    def to_issue_17(data: dict[str, Any]) -> None:
        data["issue"]["number"] = 17

    answer = await send(client, "issues_unassigned", "unassign-17", to_issue_17)
    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"
    assert sorted(answer.json()["cancelled"]) == sorted([work, mention["id"]])
    # Recorded as what it did, with the tasks it cancelled; `--outcome cancelled` finds it.
    record = await service.store.intake.get_delivery("unassign-17")
    assert record is not None
    assert (record.outcome, sorted(record.task_ids)) == ("cancelled", sorted([work, mention["id"]]))
    listed = await service.store.intake.list_deliveries(10, 0, outcome="cancelled")
    assert [d.id for d in listed] == ["unassign-17"]
    assert "cancelled" in DELIVERY_OUTCOMES  # what `deliveries list --outcome` accepts
    await wait_until(lambda: gate.cancelled == [work])

    async def both_cancelled() -> bool:
        tasks = await service.store.list_tasks(TaskFilter(), 10, 0)
        return {t.id: t.state.value for t in tasks} == {
            work: "cancelled",
            mention["id"]: "cancelled",
        }

    # The worker records the stopped run just after its runner saw the cancel.
    await wait_until(both_cancelled)
    # Assigning again starts the work afresh.
    again = await send(client, "issues_assigned_dev", "assign-17-again")
    assert again.status_code == 202


async def test_closing_the_pr_cancels_its_work(
    client: httpx.AsyncClient, service: Service, gate: GateRunner
) -> None:
    await post(client, "pull_request_opened")
    fix = (await post(client, "pull_request_review_rejected")).json()["tasks"][0]["id"]
    answer = await post(client, "pull_request_closed_merged")
    assert answer.json()["cancelled"] == [fix]


async def test_an_agent_never_triggers_its_own_type(client: httpx.AsyncClient) -> None:
    def by_dev(data: dict[str, Any]) -> None:
        data["sender"]["login"] = "dev-bot"

    answer = await send(client, "issues_assigned_dev", "self-1", by_dev)
    assert answer.status_code == 200
    assert "an agent never triggers its own type" in answer.json()["reason"]
    mention = await send(client, "issue_comment_created_mention", "self-2", by_dev)
    assert "agents do not wake each other" in mention.json()["reason"]


async def test_an_identical_pending_event_is_merged(
    client: httpx.AsyncClient, service: Service, gate: GateRunner
) -> None:
    work = (await post(client, "issues_assigned_dev")).json()["tasks"][0]["id"]
    await wait_until(lambda: gate.started == [work])
    first = (await post(client, "pull_request_review_rejected")).json()["tasks"][0]

    def second_review(data: dict[str, Any]) -> None:
        data["review"]["content"] = "Also rename the setting."

    again = (await send(client, "pull_request_review_rejected", "review-2", second_review)).json()
    assert again["tasks"][0]["id"] == first["id"]
    assert again["tasks"][0]["merged"] is True
    task = await service.store.get_task(first["id"])
    assert task is not None
    assert task.payload["review_body"] == "Also rename the setting."
    assert await service.store.count_tasks(TaskFilter(session_key="dev:acme/widget:17")) == 2


async def test_assigning_two_agent_types_dispatches_to_both(client: httpx.AsyncClient) -> None:
    def both(data: dict[str, Any]) -> None:
        reviewer = dict(data["issue"]["assignees"][0], login="reviewer", id=99)
        data["issue"]["assignees"].append(reviewer)

    answer = await send(client, "issues_assigned_dev", "both-1", both)
    assert answer.status_code == 202
    assert tasks_of(answer.json()) == [
        ("dev", "dev:acme/widget:17"),
        ("reviewer", "reviewer:acme/widget:17"),
    ]


async def test_deliveries_api_lists_reasons_and_replays(client: httpx.AsyncClient) -> None:
    await post(client, "issues_opened")
    await post(client, "issues_assigned_dev")
    auth = {"Authorization": "Bearer test-token"}
    listed = (await client.get("/api/deliveries", headers=auth)).json()
    assert listed["total"] == 2
    newest = listed["deliveries"][0]
    assert newest["event_type"] == "issue_assign"
    assert newest["outcome"] == "queued"
    ignored = listed["deliveries"][1]
    assert ignored["reason"] == "issues/opened events need no agent work"
    assert (await client.get("/api/deliveries")).status_code == 401
    assert (await client.get("/api/deliveries/nope", headers=auth)).status_code == 404
    replay = await client.post(f"/api/deliveries/{ignored['id']}/replay", headers=auth)
    assert replay.status_code == 200
    assert replay.json()["delivery"].startswith("replay-")
