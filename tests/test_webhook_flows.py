"""Every shared sample delivery, posted byte for byte through the real app, and what it does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_hooks.service import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory
from tests.support import SHARED, GateRunner, fixture, forgejo_headers, make_config

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
}


def test_every_shared_fixture_has_an_expectation() -> None:
    names = {p.name.removesuffix(".headers.json") for p in SHARED.glob("*.headers.json")}
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
