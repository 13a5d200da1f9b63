"""The edge's checks over a real HTTP server: what a signed body, its headers, the dashboard's
login and its pages may and may not do (issue 10, items 9-14)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_hooks.log_format import FORMAT
from claude_hooks.log_lines import OneLineFormatter
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.store.intake import DeliveryRecord
from claude_hooks.web.app import create_app
from claude_hooks.web.auth import COOKIE_NAME
from claude_hooks.web.server import AppServer, bind
from claude_hooks.web.sessions import Sessions
from tests.conftest import ServiceFactory
from tests.support import GateRunner, fixture, forgejo_headers, make_config, wait_until

AUTH = {"Authorization": "Bearer test-token"}
HOSTILE_ID = "../agents/dev-alpha/disable?x="


@pytest.fixture
async def service(start_service: ServiceFactory, gate: GateRunner, tmp_path: Path) -> Service:
    config = make_config(
        tmp_path,
        agents=[{"name": "dev-alpha", "type": "dev"}, {"name": "boss-1", "type": "boss"}],
        security={"allowed_senders": ["alice", "bob"]},
        server={"login_failures_per_minute": 3},
    )
    started: Service = await start_service(config, runner=gate)
    return started


@pytest.fixture
async def base_url(service: Service) -> AsyncIterator[str]:
    sock = bind("127.0.0.1", 0)
    server = AppServer(create_app(service), log_level="warning", timeout_graceful_shutdown=5)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until(lambda: server.started)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    await task
    sock.close()


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url) as http:
        yield http


async def post_signed(
    client: httpx.AsyncClient, event_type: str, body: bytes, delivery: str | None = None
) -> httpx.Response:
    headers = forgejo_headers(event_type, body, delivery or str(uuid.uuid4()))
    return await client.post("/webhook", content=body, headers=headers)


def changed(name: str, edit: dict[str, Any]) -> bytes:
    data = json.loads(fixture(name)[0])
    for path, value in edit.items():
        node = data
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return json.dumps(data).encode()


# 9. the event-type header is bound to the signed body


@pytest.mark.parametrize(
    ("name", "event_type", "words"),
    [
        ("pull_request_review_rejected", "pull_request_review_approved", "review.type"),
        ("pull_request_review_comment", "pull_request_review_approved", "review.type"),
        ("pull_request_review_approved", "pull_request_review_rejected", "review.type"),
        ("pull_request_review_rejected", "pull_request", "another event type"),
        ("pull_request_synchronized", "pull_request_review_approved", "action"),
        ("issues_unassigned", "issues", "another event type"),
        ("issues_opened", "issue_assign", "action"),
        ("issue_comment_created_mention", "pull_request_comment", "on an issue"),
        ("pull_request_comment_created_mention", "issue_comment", "on a pull request"),
        ("action_run_success", "action_run_failure", "action"),
    ],
)
async def test_a_header_the_signed_body_contradicts_is_refused(
    client: httpx.AsyncClient, service: Service, name: str, event_type: str, words: str
) -> None:
    body, _headers = fixture(name)
    answer = await post_signed(client, event_type, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "signed body disagrees" in error and words in error, error
    assert await service.store.intake.count_deliveries() == 0
    assert await service.store.count_tasks(TaskFilter()) == 0


async def test_each_fixture_under_its_own_header_is_accepted(
    client: httpx.AsyncClient, service: Service
) -> None:
    for name in [
        "pull_request_review_approved",
        "pull_request_review_rejected",
        "pull_request_review_comment",
        "issue_comment_created_mention",
        "pull_request_comment_created_mention",
        "issues_assigned_dev",
        "action_run_failure",
    ]:
        body, headers = fixture(name)
        answer = await post_signed(client, headers["X-Forgejo-Event-Type"], body)
        assert answer.status_code in (200, 202), (name, answer.text)


# 10. delivery ids


@pytest.mark.parametrize(
    "delivery", [HOSTILE_ID, "a" * 65, ".", "..", "-x", "id with space", "x/y", "x;y"]
)
async def test_delivery_ids_outside_the_safe_form_are_refused(
    client: httpx.AsyncClient, service: Service, delivery: str
) -> None:
    body, _headers = fixture("issues_assigned_dev")
    answer = await post_signed(client, "issue_assign", body, delivery)
    assert answer.status_code == 400, answer.text
    assert "not a delivery id" in answer.json()["error"]
    assert await service.store.intake.count_deliveries() == 0


async def test_a_stored_hostile_id_is_encoded_in_every_dashboard_url(
    client: httpx.AsyncClient, service: Service
) -> None:
    """A delivery recorded before ids were checked still cannot steer the dashboard's URLs."""
    await service.store.intake.add_delivery(
        DeliveryRecord(
            id=HOSTILE_ID,
            flavor="forgejo",
            event="issues",
            event_type="issues",
            received_at=1.0,
            body="{}",
            outcome="ignored",
        ),
        None,
    )
    page = (await client.get("/deliveries", headers=AUTH)).text
    encoded = "..%2Fagents%2Fdev-alpha%2Fdisable%3Fx%3D"
    assert f'data-action="/api/deliveries/{encoded}/replay"' in page
    assert f'href="/deliveries/{encoded}"' in page
    assert "/api/agents/dev-alpha/disable" not in page
    # What the Replay button posts reaches no other route, and the agent stays enabled.
    replay = await client.post(f"/api/deliveries/{encoded}/replay", headers=AUTH)
    assert replay.status_code == 404, replay.text
    agents = (await client.get("/api/agents", headers=AUTH)).json()
    assert all(agent["enabled"] for agent in agents), agents


# 11. repository names and numbers


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        ({"repository.full_name": "acme/../../private/secret"}, "repository.full_name", ".."),
        ({"repository.full_name": "acme/widget."}, "repository.full_name", "end with '.'"),
        ({"repository.full_name": "acme/widget.git"}, "repository.full_name", "end in '.git'"),
        ({"repository.full_name": "acme/wid\nget"}, "repository.full_name", "ASCII"),
        ({"repository.full_name": "acme"}, "repository.full_name", "<owner>/<repository>"),
        ({"repository.full_name": "a" * 41 + "/w"}, "repository.full_name", "40"),
        ({"repository.full_name": "acme/gadget"}, "'repository'", "owner.login/name"),
        ({"issue.number": -3}, "issue.number", "greater than or equal to 1"),
        ({"issue.number": 0}, "issue.number", "greater than or equal to 1"),
    ],
)
async def test_names_and_numbers_outside_forgejo_rules_are_refused(
    client: httpx.AsyncClient, service: Service, edit: dict[str, Any], field: str, words: str
) -> None:
    body = changed("issues_assigned_dev", edit)
    answer = await post_signed(client, "issue_assign", body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert field in error and words in error, error
    assert await service.store.count_tasks(TaskFilter()) == 0


async def test_the_api_refuses_a_repository_name_naming_the_field(
    client: httpx.AsyncClient, service: Service
) -> None:
    for repo in ["acme/../x", "acme/widget.", "../acme"]:
        answer = await client.post(
            "/api/tasks",
            headers=AUTH,
            json={"type": "dev", "kind": "work_issue", "repo": repo, "number": 1},
        )
        assert answer.status_code == 400, answer.text
        assert "repo" in answer.json()["error"]
    assert await service.store.count_tasks(TaskFilter()) == 0


def test_a_log_field_cannot_forge_a_line() -> None:
    record = logging.LogRecord(
        "claude_hooks", logging.INFO, __file__, 1, "delivery %s", ("x\n2026 ERROR forged",), None
    )
    line = OneLineFormatter(FORMAT).format(record)
    assert "\n" not in line
    assert "x\\n2026 ERROR forged" in line


# 12. the dashboard: headers, sessions, login limit


async def test_every_answer_forbids_framing_and_sniffing(client: httpx.AsyncClient) -> None:
    for path in ["/login", "/healthz", "/static/app.js", "/", "/api/agents"]:
        answer = await client.get(path)
        csp = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
        assert "'unsafe-inline'" not in csp
        assert answer.headers["x-frame-options"] == "DENY", path
        assert answer.headers["x-content-type-options"] == "nosniff", path
        assert answer.headers["referrer-policy"] == "same-origin", path
    login = (await client.get("/login")).text
    assert "<script>" not in login and " style=" not in login


async def log_in(client: httpx.AsyncClient) -> str:
    answer = await client.post("/login", data={"token": "test-token", "next": "/"})
    assert answer.status_code == 303, answer.text
    return str(answer.cookies[COOKIE_NAME])


async def test_sessions_are_random_and_end_at_logout(base_url: str) -> None:
    async with (
        httpx.AsyncClient(base_url=base_url) as one,
        httpx.AsyncClient(base_url=base_url) as two,
    ):
        first, second = await log_in(one), await log_in(two)
        assert first != second and len(first) >= 40
        assert "test-token" not in first
        assert (await one.get("/api/agents")).status_code == 200
        assert (await one.post("/logout")).status_code == 303
    async with httpx.AsyncClient(base_url=base_url) as stolen:
        stolen.cookies.set(COOKIE_NAME, first)
        ended = await stolen.get("/api/agents")
        assert ended.status_code == 401
        assert "log in again" in ended.json()["error"]
        stolen.cookies.set(COOKIE_NAME, second)
        assert (await stolen.get("/api/agents")).status_code == 200


def test_a_session_expires() -> None:
    now = [1000.0]
    sessions = Sessions(3600, clock=lambda: now[0])
    session = sessions.start()
    assert sessions.valid(session)
    now[0] += 3599
    assert sessions.valid(session)
    now[0] += 2
    assert not sessions.valid(session)
    assert not sessions.valid("made-up")


async def test_failed_logins_are_limited_per_address(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        answer = await client.post("/login", data={"token": "guess", "next": "/"})
        assert answer.status_code == 401
    limited = await client.post("/login", data={"token": "test-token", "next": "/"})
    assert limited.status_code == 429
    assert "too many failed logins" in limited.json()["error"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert (await client.get("/healthz")).status_code == 200


# 13. files


async def test_data_dir_database_and_logs_are_private_whatever_the_umask(
    start_service: ServiceFactory, gate: GateRunner, tmp_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        config = make_config(
            tmp_path,
            agents=[{"name": "dev-alpha", "type": "dev"}],
            security={"allowed_senders": ["alice"]},
        )
        service: Service = await start_service(config, runner=gate)
        body, headers = fixture("issues_assigned_dev")
        answer = await service.intake.receive(headers, body)
        assert answer.status == 202, answer.body
        task_id = answer.body["tasks"][0]["id"]
        await wait_until(lambda: task_id in gate.started)
    finally:
        os.umask(old)
    data = config.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "logs").stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "claude-hooks.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "logs" / f"{task_id}.log").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "service.lock").stat().st_mode) == 0o600
    for journal in data.glob("claude-hooks.db-*"):
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600, journal
    gate.release_all()


# 14. metrics


async def test_unknown_event_types_share_one_metric_label(client: httpx.AsyncClient) -> None:
    body, _headers = fixture("push")
    for number in range(5):
        answer = await post_signed(client, f"made_up_{number}", body)
        assert answer.status_code == 200, answer.text
    await post_signed(client, "push", body)
    metrics = (await client.get("/metrics", headers=AUTH)).text
    lines = [line for line in metrics.splitlines() if line.startswith("claude_hooks_deliveries")]
    assert any('event_type="other"' in line and line.endswith(" 5.0") for line in lines), lines
    assert any('event_type="push"' in line for line in lines)
    assert "made_up" not in metrics


async def test_connections_on_the_bound_socket_send_without_nagle_delay() -> None:
    """The listening socket says it is TCP, so asyncio sets TCP_NODELAY on what it accepts:
    without it, an answer's body (written after its headers) waited for the client's delayed
    ACK, about 40 ms at every request of a busy keep-alive connection."""
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    sock = bind("127.0.0.1", 0)
    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    _reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
    try:
        assert await asyncio.wait_for(accepted, 5) != 0
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
