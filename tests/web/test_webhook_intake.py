"""The intake's answers to bad input, and POST /cancel?agent=, over a real HTTP server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn

from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.web.app import create_app
from claude_hooks.web.server import bind
from tests.conftest import ServiceFactory
from tests.support import (
    GateRunner,
    fixture,
    forgejo_headers,
    instance_idle,
    make_config,
    sign,
    wait_until,
)

AUTH = {"Authorization": "Bearer test-token"}


@pytest.fixture
async def service(start_service: ServiceFactory, gate: GateRunner, tmp_path: Path) -> Service:
    config = make_config(
        tmp_path,
        agents=[{"name": "dev-alpha", "type": "dev"}, {"name": "dev-bravo", "type": "dev"}],
        security={"allowed_senders": ["alice", "bob"]},
        server={"max_body_bytes": 64 * 1024},
    )
    started: Service = await start_service(config, runner=gate)
    return started


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """A real uvicorn server on 127.0.0.1, as Forgejo would reach it."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until(lambda: server.started)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        yield client
    server.should_exit = True
    await task
    sock.close()


ASSIGNED, ASSIGNED_HEADERS = fixture("issues_assigned_dev")


async def deliveries(service: Service) -> int:
    return await service.store.intake.count_deliveries()


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        (
            {
                "X-Forgejo-Signature": None,
                "X-Gitea-Signature": None,
                "X-Gogs-Signature": None,
                "X-Hub-Signature-256": None,
            },
            401,
            "missing",
        ),
        (
            {
                "X-Forgejo-Signature": "0" * 64,
                "X-Gitea-Signature": None,
                "X-Gogs-Signature": None,
                "X-Hub-Signature-256": None,
            },
            401,
            "signature",
        ),
        (
            {
                "X-Forgejo-Signature": sign(ASSIGNED, "wrong-secret"),
                "X-Gitea-Signature": None,
                "X-Gogs-Signature": None,
                "X-Hub-Signature-256": None,
            },
            401,
            "signature",
        ),
        (
            {
                "X-Forgejo-Delivery": None,
                "X-Gitea-Delivery": None,
                "X-Gogs-Delivery": None,
                "X-GitHub-Delivery": None,
            },
            400,
            "delivery",
        ),
        ({"Content-Type": "text/plain"}, 400, "content type"),
    ],
)
async def test_rejected_headers(
    client: httpx.AsyncClient,
    service: Service,
    change: dict[str, str | None],
    status: int,
    words: str,
) -> None:
    headers = {k: v for k, v in ASSIGNED_HEADERS.items() if change.get(k, v) is not None}
    headers.update({k: v for k, v in change.items() if v is not None})
    answer = await client.post("/webhook", content=ASSIGNED, headers=headers)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"].lower()
    assert await deliveries(service) == 0


async def test_truncated_body_fails_the_signature(
    client: httpx.AsyncClient, service: Service
) -> None:
    answer = await client.post("/webhook", content=ASSIGNED[:-10], headers=ASSIGNED_HEADERS)
    assert answer.status_code == 401
    assert await deliveries(service) == 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "json"),
        (b"[1, 2, 3]", "object"),
        (json.dumps({"action": "assigned", "issue": {"number": 5}}).encode(), "payload field"),
    ],
)
async def test_signed_but_malformed_is_400(
    client: httpx.AsyncClient, service: Service, body: bytes, words: str
) -> None:
    answer = await client.post(
        "/webhook", content=body, headers=forgejo_headers("issue_assign", body, "bad-1")
    )
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"].lower()
    assert await deliveries(service) == 0


async def test_missing_field_is_named(client: httpx.AsyncClient) -> None:
    data = json.loads(ASSIGNED)
    del data["issue"]["number"]
    body = json.dumps(data).encode()
    answer = await client.post(
        "/webhook", content=body, headers=forgejo_headers("issue_assign", body, "bad-2")
    )
    assert answer.status_code == 400
    assert "issue.number" in answer.json()["error"]


async def test_unknown_event_type_is_recorded_and_ignored(
    client: httpx.AsyncClient, service: Service
) -> None:
    body = b'{"anything": true}'
    answer = await client.post(
        "/webhook", content=body, headers=forgejo_headers("wiki", body, "wiki-1")
    )
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "ignored",
        "reason": "wiki events need no agent work",
        "delivery": "wiki-1",
    }
    record = await service.store.intake.get_delivery("wiki-1")
    assert record is not None and record.outcome == "ignored"


async def test_oversized_body_is_413(client: httpx.AsyncClient, service: Service) -> None:
    body = b'{"pad": "' + b"x" * (70 * 1024) + b'"}'
    answer = await client.post(
        "/webhook", content=body, headers=forgejo_headers("issue_assign", body, "big-1")
    )
    assert answer.status_code == 413
    assert "max_body_bytes" in answer.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"x" * 1024

    streamed = await client.post(
        "/webhook", content=chunks(), headers=forgejo_headers("issue_assign", b"", "big-2")
    )
    assert streamed.status_code == 413
    assert await deliveries(service) == 0


async def test_replayed_delivery_id_creates_nothing(
    client: httpx.AsyncClient, service: Service
) -> None:
    assert (
        await client.post("/webhook", content=ASSIGNED, headers=ASSIGNED_HEADERS)
    ).status_code == 202
    again = await client.post("/webhook", content=ASSIGNED, headers=ASSIGNED_HEADERS)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert await service.store.count_tasks(TaskFilter()) == 1


async def test_form_encoded_delivery_is_accepted(
    client: httpx.AsyncClient, service: Service
) -> None:
    headers = dict(ASSIGNED_HEADERS, **{"Content-Type": "application/x-www-form-urlencoded"})
    form = b"payload=" + quote(ASSIGNED.decode(), safe="").encode()
    answer = await client.post("/webhook", content=form, headers=headers)
    assert answer.status_code == 202, answer.text
    assert answer.json()["tasks"][0]["session_key"] == "dev:acme/widget:17"


async def test_header_names_in_any_case_and_gitea_only(client: httpx.AsyncClient) -> None:
    headers = {k.lower(): v for k, v in ASSIGNED_HEADERS.items() if not k.startswith("X-Forgejo")}
    answer = await client.post("/webhook", content=ASSIGNED, headers=headers)
    assert answer.status_code == 202, answer.text


async def test_no_instance_left_answers_503_and_records_the_reason(
    client: httpx.AsyncClient, service: Service
) -> None:
    await service.commands.set_enabled("dev-alpha", False)
    await service.commands.set_enabled("dev-bravo", False)
    answer = await client.post("/webhook", content=ASSIGNED, headers=ASSIGNED_HEADERS)
    assert answer.status_code == 503
    assert "no instance registered for type 'dev'" in answer.json()["reason"]
    record = await service.store.intake.get_delivery(ASSIGNED_HEADERS["X-Forgejo-Delivery"])
    assert record is not None and record.outcome == "error"
    # Once an instance is back, the stored delivery can be replayed.
    await service.commands.set_enabled("dev-alpha", True)
    replayed = await client.post(f"/api/deliveries/{record.id}/replay", headers=AUTH)
    assert replayed.status_code == 202
    assert replayed.json()["tasks"][0]["agent"] == "dev-alpha"


async def test_cancel_by_agent(
    client: httpx.AsyncClient, service: Service, gate: GateRunner
) -> None:
    assert (await client.post("/cancel?agent=dev-alpha")).status_code == 401
    missing = await client.post("/cancel", headers=AUTH)
    assert missing.status_code == 400
    assert "agent" in missing.json()["error"]
    unknown = await client.post("/cancel?agent=dev-zulu", headers=AUTH)
    assert unknown.status_code == 404
    assert "no agent named 'dev-zulu'" in unknown.json()["error"]
    idle = await client.post("/cancel?agent=dev-bravo", headers=AUTH)
    assert idle.status_code == 409
    assert "idle" in idle.json()["error"]

    queued = await client.post("/webhook", content=ASSIGNED, headers=ASSIGNED_HEADERS)
    task_id = queued.json()["tasks"][0]["id"]
    await wait_until(lambda: gate.started == [task_id])
    cancelled = await client.post("/cancel?agent=dev-alpha", headers=AUTH)
    assert cancelled.status_code == 200
    assert cancelled.json() == {"cancelled": task_id, "agent": "dev-alpha"}
    await wait_until(lambda: gate.cancelled == [task_id])
    # dev-bravo stayed idle: cancel never picks "the first busy worker".
    assert await instance_idle(service.store, "dev-bravo")


async def test_cancel_task_by_id(
    client: httpx.AsyncClient, service: Service, gate: GateRunner
) -> None:
    for number in (1, 2, 3):
        answer = await client.post(
            "/api/tasks",
            headers=AUTH,
            json={"type": "dev", "kind": "work_issue", "repo": "acme/widget", "number": number},
        )
        assert answer.status_code == 202
    queued = [
        t["id"] for t in (await client.get("/api/tasks?state=queued", headers=AUTH)).json()["tasks"]
    ]
    assert len(queued) == 1
    answer = await client.post(f"/api/tasks/{queued[0]}/cancel", headers=AUTH)
    assert answer.status_code == 200
    assert answer.json()["was"] == "queued"
    again = await client.post(f"/api/tasks/{queued[0]}/cancel", headers=AUTH)
    assert again.status_code == 409
    assert (await client.post("/api/tasks/nope/cancel", headers=AUTH)).status_code == 404
    bad = await client.post("/api/tasks", headers=AUTH, json={"type": "dev", "kind": "dance"})
    assert bad.status_code == 400


def _changed(change: Any) -> bytes:
    data = json.loads(ASSIGNED)
    change(data)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (_changed(lambda d: d["issue"].update(number=2**64)), "issue.number"),
        (_changed(lambda d: d["issue"].update(number=-(2**63) - 1)), "issue.number"),
        (ASSIGNED.replace(b'"acme/widget"', b'"acme/\\ud800"', 1), "surrogate"),
        (ASSIGNED.replace(b'"assigned"', b'"assigned\\ud800"', 1), "surrogate"),
    ],
)
async def test_values_the_database_cannot_hold_are_400(
    client: httpx.AsyncClient, service: Service, body: bytes, words: str
) -> None:
    answer = await client.post(
        "/webhook", content=body, headers=forgejo_headers("issue_assign", body, "odd-1")
    )
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]
    assert await service.store.count_tasks(TaskFilter()) == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "POST",
            "/api/tasks",
            {"type": "dev", "kind": "work_issue", "repo": "a/b", "number": 2**63},
        ),
        ("GET", f"/api/tasks?offset={2**63}", None),
        ("GET", f"/api/deliveries?offset={2**63}", None),
        ("GET", "/api/tasks?limit=0", None),
    ],
)
async def test_api_numbers_out_of_range_are_400(
    client: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    answer = await client.request(method, path, json=body, headers=AUTH)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]
