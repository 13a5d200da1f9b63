"""The JSON API, the task log endpoint, the dashboard's pages and login, and its live stream.

Everything goes over a real uvicorn server on 127.0.0.1: the log follow and the live stream are
long-lived answers that only a real server delivers piece by piece.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_hooks.service.runtime import Service
from claude_hooks.web.auth import COOKIE_NAME
from claude_hooks.web.logs import render_claude_line, tail_offset
from tests.dashboard_fixtures import AUTH, CSRF, LoggingGate, dashboard_config, serve
from tests.support import fixture, instance_idle, wait_until


async def queue(client: httpx.AsyncClient, agent_type: str = "dev", number: int = 17) -> str:
    answer = await client.post(
        "/api/tasks",
        json={"type": agent_type, "kind": "work_issue", "repo": "acme/widget", "number": number},
    )
    assert answer.status_code == 202, answer.text
    task_id: str = answer.json()["id"]
    return task_id


async def post_fixture(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    body, headers = fixture(name)
    answer = await client.post("/webhook", content=body, headers=headers)
    assert answer.status_code in (200, 202), answer.text
    result: dict[str, Any] = answer.json()
    return result


async def state_of(service: Service, task_id: str) -> str:
    task = await service.store.get_task(task_id)
    assert task is not None
    return task.state.value


# authentication

PROTECTED = [
    ("GET", "/api/agents"),
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/0000000000000000"),
    ("GET", "/api/tasks/0000000000000000/log"),
    ("POST", "/api/tasks/0000000000000000/cancel"),
    ("GET", "/api/deliveries"),
    ("GET", "/api/deliveries/nope"),
    ("POST", "/api/deliveries/nope/replay"),
    ("POST", "/api/agents/dev-alpha/disable"),
    ("POST", "/api/agents/dev-alpha/enable"),
    ("GET", "/metrics"),
    ("GET", "/live"),
]


async def test_every_endpoint_needs_the_token(
    anonymous: httpx.AsyncClient, service: Service
) -> None:
    for method, path in PROTECTED:
        missing = await anonymous.request(method, path)
        assert missing.status_code == 401, path
        assert "api token" in missing.json()["error"]
        wrong = await anonymous.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, path
        assert "wrong api token" in wrong.json()["error"]
        malformed = await anonymous.request(method, path, headers={"Authorization": "test-token"})
        assert malformed.status_code == 401, path
        assert "Bearer" in malformed.json()["error"]
    assert service.pool.workers["dev-alpha"].enabled


async def test_pages_send_a_browser_without_a_session_to_the_login_form(
    anonymous: httpx.AsyncClient,
) -> None:
    for path in ["/", "/tasks", "/tasks/x", "/deliveries", "/deliveries/x"]:
        answer = await anonymous.get(path + "?state=queued")
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=")
        assert "state%3Dqueued" in answer.headers["location"]
    anonymous.cookies.set(COOKIE_NAME, "a-session-this-service-never-started")
    assert (await anonymous.get("/")).status_code == 303


async def test_login_sets_an_httponly_cookie_that_opens_pages_and_the_api(
    anonymous: httpx.AsyncClient,
) -> None:
    form = await anonymous.get("/login?next=/tasks")
    assert form.status_code == 200
    assert 'name="token"' in form.text and 'value="/tasks"' in form.text
    wrong = await anonymous.post("/login", data={"token": "nope", "next": "/tasks"})
    assert wrong.status_code == 401
    assert "Wrong token" in wrong.text
    empty = await anonymous.post("/login", data={"token": " ", "next": "/tasks"})
    assert empty.status_code == 400
    answer = await anonymous.post("/login", data={"token": "test-token", "next": "/tasks"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/tasks"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "test-token" not in cookie
    assert (await anonymous.get("/tasks")).status_code == 200
    assert (await anonymous.get("/api/agents")).status_code == 200
    again = await anonymous.get("/login?next=/deliveries")
    assert again.status_code == 303 and again.headers["location"] == "/deliveries"
    logout = await anonymous.post("/logout")
    assert logout.status_code == 303
    assert (await anonymous.get("/api/agents")).status_code == 401


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil", ""])
async def test_login_never_redirects_off_the_service(
    anonymous: httpx.AsyncClient, target: str
) -> None:
    answer = await anonymous.post("/login", data={"token": "test-token", "next": target})
    assert answer.headers["location"] == "/"


async def test_cookie_actions_need_the_dashboard_header(
    anonymous: httpx.AsyncClient, service: Service
) -> None:
    await anonymous.post("/login", data={"token": "test-token"})
    refused = await anonymous.post("/api/agents/dev-alpha/disable")
    assert refused.status_code == 403
    assert "X-Requested-With" in refused.json()["error"]
    assert service.pool.workers["dev-alpha"].enabled
    done = await anonymous.post("/api/agents/dev-alpha/disable", headers=CSRF)
    assert done.status_code == 200
    assert done.json()["state"] == "disabled"


async def test_unknown_ids_are_404_with_a_message(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/api/tasks/nope"),
        ("GET", "/api/tasks/nope/log"),
        ("POST", "/api/tasks/nope/cancel"),
        ("GET", "/api/deliveries/nope"),
        ("POST", "/api/deliveries/nope/replay"),
        ("POST", "/api/agents/nope/disable"),
        ("POST", "/api/agents/nope/enable"),
        ("GET", "/tasks/nope"),
        ("GET", "/deliveries/nope"),
        ("GET", "/live?view=task&id=nope"),
        ("GET", "/live?view=delivery&id=nope"),
    ]:
        answer = await client.request(method, path)
        assert answer.status_code == 404, (method, path, answer.text)
        assert "nope" in answer.json()["error"]


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/api/tasks?state=bogus", "state"),
        ("/api/tasks?limit=0", "limit"),
        ("/api/tasks/x/log?tail=0", "tail"),
        ("/api/tasks/x/log?format=html", "format"),
        ("/api/deliveries?offset=-1", "offset"),
        ("/tasks?state=bogus", "state must be one of"),
        ("/deliveries?outcome=bogus", "outcome must be one of"),
        ("/tasks?offset=-5", "offset"),
        ("/live?view=task", "needs the query parameter 'id'"),
        ("/live?view=bogus", "view"),
    ],
)
async def test_bad_input_is_400_with_a_message(
    client: httpx.AsyncClient, path: str, words: str
) -> None:
    answer = await client.get(path)
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]


async def test_openapi_documents_the_endpoints(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    assert (await anonymous.get("/openapi.json")).status_code == 401
    assert (await anonymous.get("/docs")).status_code in (302, 303, 401, 404)
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in [
        "/api/agents",
        "/api/tasks",
        "/api/tasks/{task_id}",
        "/api/tasks/{task_id}/log",
        "/api/tasks/{task_id}/cancel",
        "/api/deliveries",
        "/api/deliveries/{delivery_id}/replay",
        "/api/agents/{name}/disable",
        "/api/agents/{name}/enable",
        "/metrics",
    ]:
        assert path in paths, path
    log = paths["/api/tasks/{task_id}/log"]["get"]
    assert {p["name"] for p in log["parameters"]} >= {"follow", "format", "tail"}
    assert "/" not in paths and "/live" not in paths


# the JSON API


async def test_agents_tasks_and_queue_positions(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    first = await queue(client, number=1)
    second = await queue(client, number=2)
    third = await queue(client, number=3)
    await wait_until(lambda: len(runner.started) == 2)
    agents = {a["name"]: a for a in (await client.get("/api/agents")).json()}
    assert {agents["dev-alpha"]["state"], agents["dev-bravo"]["state"]} == {"busy"}
    waiting = next(a for a in agents.values() if a["queue"])
    assert waiting["queue"] == [third] and waiting["queued"] == 1
    assert agents["reviewer-1"]["state"] == "idle"

    listing = (await client.get("/api/tasks", params={"type": "dev"})).json()
    assert listing["total"] == 3
    assert [t["id"] for t in listing["tasks"]] == [third, second, first]
    queued = listing["tasks"][0]
    assert queued["state"] == "queued" and queued["queue_position"] == 1
    for key in [
        "id", "type", "agent", "kind", "state", "session_key", "repo", "number", "attempts",
        "enqueued_at", "started_at", "finished_at", "duration_s", "cost_usd", "outcome",
        "error", "delivery_id", "queue_position", "result", "claude_session_id",
    ]:  # fmt: skip
        assert key in queued, key
    page = (await client.get("/api/tasks", params={"limit": 1, "offset": 1})).json()
    assert page["total"] == 3 and [t["id"] for t in page["tasks"]] == [second]
    running = (await client.get("/api/tasks", params={"state": "running"})).json()
    assert {t["id"] for t in running["tasks"]} == {first, second}
    by_agent = (await client.get("/api/tasks", params={"agent": waiting["name"]})).json()
    assert third in [t["id"] for t in by_agent["tasks"]]
    assert (await client.get("/api/tasks", params={"repo": "other/repo"})).json()["total"] == 0

    ahead = agents[waiting["name"]]["current_task"]
    runner.release(ahead)
    await wait_until(lambda: third in runner.started)
    finished = (await client.get(f"/api/tasks/{ahead}")).json()
    assert finished["state"] == "succeeded" and finished["outcome"] == "succeeded"
    assert finished["cost_usd"] == 0.25 and finished["duration_s"] is not None
    assert finished["finished_at"] is not None and finished["queue_position"] is None


async def test_cancel_running_and_queued_tasks(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    running = await queue(client, "reviewer", 5)
    waiting = await queue(client, "reviewer", 6)
    await wait_until(lambda: running in runner.started)
    answer = await client.post(f"/api/tasks/{waiting}/cancel")
    assert answer.json() == {"id": waiting, "agent": "reviewer-1", "was": "queued"}
    answer = await client.post(f"/api/tasks/{running}/cancel")
    assert answer.json()["was"] == "running"
    await wait_until(lambda: running in runner.cancelled)
    again = await client.post(f"/api/tasks/{running}/cancel")
    assert again.status_code == 409
    assert "already finished" in again.json()["error"]


async def test_disable_and_enable(client: httpx.AsyncClient, service: Service) -> None:
    answer = await client.post("/api/agents/dev-bravo/disable")
    assert answer.json()["state"] == "disabled" and answer.json()["enabled"] is False
    # A disabled instance is let go by its node: no worker runs it, it takes no capacity.
    assert answer.json()["node"] is None and "dev-bravo" not in service.pool.workers
    answer = await client.post("/api/agents/dev-bravo/enable")
    assert answer.json()["state"] == "idle" and answer.json()["node"] == service.node.name
    assert service.pool.workers["dev-bravo"].enabled


async def test_deliveries_say_why_and_replay(client: httpx.AsyncClient, service: Service) -> None:
    ignored = await post_fixture(client, "push")
    assert ignored["status"] == "ignored"
    queued = await post_fixture(client, "issues_assigned_dev")
    listing = (await client.get("/api/deliveries")).json()
    assert listing["total"] == 2
    newest, oldest = listing["deliveries"]
    assert newest["outcome"] == "queued" and newest["task_ids"] == [queued["tasks"][0]["id"]]
    assert oldest["event_type"] == "push" and oldest["outcome"] == "ignored"
    assert "push events need no agent work" in oldest["reason"]
    only = (await client.get("/api/deliveries", params={"outcome": "ignored"})).json()
    assert [d["id"] for d in only["deliveries"]] == [oldest["id"]]
    replay = await client.post(f"/api/deliveries/{oldest['id']}/replay")
    assert replay.status_code == 200 and replay.json()["status"] == "ignored"
    replayed = (await client.get(f"/api/deliveries/{replay.json()['delivery']}")).json()
    assert replayed["replay_of"] == oldest["id"] and replayed["body"]


# the log


async def test_log_whole_tail_and_missing(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    runner.lines = [f"line {n}" for n in range(1, 6)]
    task_id = await queue(client)
    await wait_until(lambda: task_id in runner.started)
    whole = await client.get(f"/api/tasks/{task_id}/log")
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("text/plain")
    assert whole.headers["x-task-state"] == "running"
    assert whole.text == "".join(f"line {n}\n" for n in range(1, 6))
    tail = await client.get(f"/api/tasks/{task_id}/log", params={"tail": 2})
    assert tail.text == "line 4\nline 5\n"
    waiting = await queue(client, "reviewer")
    blocked = await queue(client, "reviewer")
    empty = await client.get(f"/api/tasks/{blocked}/log")
    assert empty.status_code == 200 and empty.text == ""
    assert waiting


async def test_log_follow_streams_until_the_task_ends(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    runner.lines = ["first"]
    task_id = await queue(client)
    await wait_until(lambda: task_id in runner.started)
    path = service.pool.log_path(task_id)
    received: list[str] = []
    async with client.stream(
        "GET", f"/api/tasks/{task_id}/log", params={"follow": "true"}
    ) as answer:
        chunks = answer.aiter_text()
        received.append(await anext(chunks))
        assert received == ["first\n"]
        with path.open("a") as log:
            log.write("second\n")
        received.append(await anext(chunks))
        assert received[-1] == "second\n"
        runner.release(task_id)
        received.extend([chunk async for chunk in chunks])
    assert "".join(received) == "first\nsecond\n"


async def test_log_follow_of_a_queued_task_waits_for_its_output(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    runner.lines = ["hello"]
    busy = await queue(client, "reviewer", 1)
    waiting = await queue(client, "reviewer", 2)
    await wait_until(lambda: busy in runner.started)

    async def follow() -> str:
        async with client.stream("GET", f"/api/tasks/{waiting}/log?follow=1") as answer:
            return "".join([chunk async for chunk in answer.aiter_text()])

    reading = asyncio.create_task(follow())
    runner.release(busy)
    await wait_until(lambda: waiting in runner.started)
    runner.release(waiting)
    assert await asyncio.wait_for(reading, 5) == "hello\n"


async def test_claude_log_as_text(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    records: list[dict[str, Any]] = [
        {"type": "system", "subtype": "init", "data": {"session_id": "s-1", "model": "sonnet"}},
        {
            "type": "assistant",
            "content": [
                {"type": "text", "text": "Reading the issue."},
                {"type": "tool_use", "name": "Bash", "input": {"command": "git status"}},
            ],
        },
        {"type": "user", "content": [{"type": "tool_result", "content": "clean"}]},
        {"type": "stderr", "line": "warning: x"},
        {"type": "claude_hooks", "event": "interrupt", "at": 1.0, "connected": True},
        {"type": "result", "subtype": "success", "num_turns": 3, "total_cost_usd": 0.5,
         "result": "Opened #18"},
    ]  # fmt: skip
    runner.lines = [json.dumps(r) for r in records]
    task_id = await queue(client, "ai")
    await wait_until(lambda: task_id in runner.started)
    text = await client.get(f"/api/tasks/{task_id}/log", params={"format": "text"})
    assert text.text.splitlines() == [
        "· session s-1 (model sonnet)",
        "Reading the issue.",
        "→ Bash git status",
        "  ← clean",
        "stderr: warning: x",
        "· interrupt connected=true",
        "result: success, 3 turns, $0.50",
        "Opened #18",
    ]
    raw = await client.get(f"/api/tasks/{task_id}/log")
    assert raw.text.splitlines() == runner.lines
    tail = await client.get(f"/api/tasks/{task_id}/log", params={"format": "text", "tail": 1})
    assert tail.text == "result: success, 3 turns, $0.50\nOpened #18\n"


async def test_the_task_page_lists_the_runs_the_store_keeps_for_a_claude_task(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    """Runs come from the store, not from the log: `start` and `finished` records in a claude
    log that no run wrote are shown as the log's lines, never as runs."""
    failed = "Claude API error (HTTP 529): Overloaded"
    records = [
        {"type": "claude_hooks", "event": "start", "at": 100.0},
        {"type": "claude_hooks", "event": "finished", "at": 105, "succeeded": False,
         "error": failed},
        {"type": "claude_hooks", "event": "start", "at": 300.0},
    ]  # fmt: skip
    runner.lines = [json.dumps(r) for r in records]
    task_id = await queue(client, "ai")
    await wait_until(lambda: task_id in runner.started)
    page = (await client.get(f"/tasks/{task_id}")).text
    runs = page[page.index('<ol class="runs">') : page.index("</ol>", page.index('class="runs"'))]
    assert runs.count("<li") == 1 and 'class="badge s-running">running</span>' in runs
    assert f'href="/api/tasks/{task_id}/log?run=1&amp;format=text"' in runs
    part = await client.get(f"/api/tasks/{task_id}/log", params={"run": 1, "format": "text"})
    assert part.text.splitlines() == [
        "· start",
        f"· finished succeeded=false error={json.dumps(failed)}",
        "· start",
    ]
    both = await client.get(f"/api/tasks/{task_id}/log", params={"run": 1, "tail": 2})
    assert both.status_code == 400
    assert both.json()["error"] == "tail and run do not go together: ask for one or the other"
    runner.release(task_id)
    await wait_until(lambda: instance_idle(service.store, "ai-1"))
    page = (await client.get(f"/tasks/{task_id}")).text
    assert 'class="badge s-succeeded">succeeded</span> after' in page


def test_a_result_claude_marks_as_an_error_reads_as_one() -> None:
    """Claude Code ends an API failure with subtype `success` and `is_error`: the log must not
    say `result: success` just before the runner's `finished succeeded=false`."""
    failed = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "api_error_status": 529,
        "num_turns": 1,
        "total_cost_usd": 0,
        "result": "API Error: 529 Overloaded",
    }
    assert render_claude_line(json.dumps(failed)) == [
        "result: error, API status 529, 1 turns, $0.00",
        "API Error: 529 Overloaded",
    ]
    limited = {**failed, "subtype": "error_max_turns", "api_error_status": None}
    assert render_claude_line(json.dumps(limited))[0] == (
        "result: error (error_max_turns), 1 turns, $0.00"
    )


def test_log_helpers_on_odd_input(tmp_path: Path) -> None:
    assert render_claude_line("not json") == ["not json"]
    assert render_claude_line("[1, 2]") == ["[1, 2]"]
    assert render_claude_line('{"type": "mystery", "x": 1}')[0].startswith("mystery: ")
    path = tmp_path / "log"
    assert tail_offset(path, 3) == 0
    path.write_bytes(b"a\nb\nc")
    assert path.read_bytes()[tail_offset(path, 2) :] == b"b\nc"
    assert tail_offset(path, 10) == 0


# pages and the live stream


async def test_pages_show_instances_queues_and_reasons(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    await post_fixture(client, "push")
    assigned = await post_fixture(client, "issues_assigned_dev")
    task_id = assigned["tasks"][0]["id"]
    await queue(client, "reviewer", 30)
    queued_id = await queue(client, "reviewer", 31)
    await wait_until(lambda: len(runner.started) == 2)
    overview = (await client.get("/")).text
    for words in [
        "dev-alpha",
        "dev-bravo",
        "reviewer-1",
        "ai-1",
        "https://forge.example.com/acme/widget/issues/17",
        "push events need no agent work",
        "checking out",  # the running task's log tail
        f"/tasks/{queued_id}",
        'class="pos">1<',
    ]:
        assert words in overview, words
    assert "Webhook signatures are not checked" not in overview
    assert "cdn" not in overview.lower()
    page = (await client.get(f"/tasks/{task_id}")).text
    assert "dev:acme/widget:17" in page and assigned["delivery"] in page
    assert f"/api/tasks/{task_id}/log?follow=true" in page
    tasks = (await client.get("/tasks", params={"state": "queued", "type": ""})).text
    assert queued_id[-7:] in tasks and task_id[-7:] not in tasks
    deliveries = (await client.get("/deliveries", params={"outcome": "ignored"})).text
    assert "push events need no agent work" in deliveries and "issue_assign" not in deliveries
    delivery = (await client.get(f"/deliveries/{assigned['delivery']}")).text
    assert task_id[-7:] in delivery and "Replay" in delivery
    for asset in ["/static/app.css", "/static/app.js", "/static/favicon.svg"]:
        assert (await client.get(asset)).status_code == 200


async def test_pages_paginate(client: httpx.AsyncClient, runner: LoggingGate) -> None:
    for number in range(1, 8):
        await queue(client, "reviewer", number)
    first = (await client.get("/tasks", params={"limit": 3})).text
    assert "1\N{EN DASH}3 of 7" in first and "offset=3" in first
    last = (await client.get("/tasks", params={"limit": 3, "offset": 6})).text
    assert "7\N{EN DASH}7 of 7" in last and "older →" not in last


async def test_live_stream_sends_sections_as_work_moves(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    async with client.stream("GET", "/live", params={"view": "overview"}) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = sse_events(answer)
        initial = {data["id"] for _, data in [await anext(events) for _ in range(7)]}
        assert initial == {
            "stats",
            "agents",
            "nodes",
            "recent-deliveries",
            "finished",
            "limits",
            "costs",
        }
        assigned = await post_fixture(client, "issues_assigned_dev")
        task_id = assigned["tasks"][0]["id"]
        seen = await until_section(events, "agents", task_id[-7:])
        assert "busy" in seen
        runner.release(task_id)
        await until_section(events, "finished", "succeeded")


async def test_live_stream_for_a_task_and_a_listing(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    task_id = await queue(client)
    await wait_until(lambda: task_id in runner.started)
    async with client.stream("GET", f"/live?view=task&id={task_id}") as answer:
        events = sse_events(answer)
        await until_section(events, "task", "running")
        runner.release(task_id)
        await until_section(events, "task", "succeeded")
    async with client.stream("GET", "/live?view=deliveries&outcome=ignored") as answer:
        events = sse_events(answer)
        await until_section(events, "deliveries", "No deliveries with outcome ignored")
        await post_fixture(client, "push")
        await until_section(events, "deliveries", "push events need no agent work")


async def test_insecure_service_shows_the_warning(tmp_path: Path, runner: LoggingGate) -> None:
    config = dashboard_config(tmp_path, server={"webhook_secret": None})
    service = await Service.open(config, lambda _type: runner, insecure_no_signature=True)
    await service.start()
    try:
        async with serve(service) as url, httpx.AsyncClient(base_url=url) as client:
            assert "Webhook signatures are not checked" in (await client.get("/login")).text
            page = await client.get("/", headers=AUTH)
            assert "Webhook signatures are not checked" in page.text
    finally:
        await service.stop()


async def sse_events(answer: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a server-sent event stream."""
    kind = "message"
    async for line in answer.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield kind, json.loads(line.removeprefix("data: "))
            kind = "message"


async def until_section(
    events: AsyncIterator[tuple[str, dict[str, Any]]], section: str, words: str
) -> str:
    async def look() -> str:
        async for kind, data in events:
            if kind == "section" and data["id"] == section and words in data["html"]:
                html: str = data["html"]
                return html
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(look(), 5)


async def test_every_node_is_listed_with_its_instances(
    client: httpx.AsyncClient, service: Service
) -> None:
    listed = (await client.get("/api/nodes")).json()
    assert [(n["name"], n["state"]) for n in listed] == [(service.node.name, "live")]
    assert listed[0]["instances"] == sorted(service.pool.workers)
    agents = (await client.get("/api/agents")).json()
    assert {a["node"] for a in agents} == {service.node.name}
    page = (await client.get("/")).text
    assert f'data-node="{service.node.name}"' in page and "(this node)" in page


async def test_a_task_is_found_by_the_tail_the_dashboard_shows(
    client: httpx.AsyncClient, service: Service
) -> None:
    ids = [await queue(client, number=n) for n in range(1, 41)]
    shown = ids[-1][-7:]  # the dashboard's task_link
    answer = await client.get(f"/api/tasks/{shown}")
    assert (answer.status_code, answer.json()["id"]) == (200, ids[-1])
    assert (await client.get(f"/tasks/{shown}")).status_code == 200
    assert (await client.get(f"/api/tasks/{shown}/log")).status_code == 200
    # 40 ids over 32 last characters: some end alike, and such a tail names no task.
    last = [task_id[-1] for task_id in ids]
    common = next(char for char in last if last.count(char) > 1)
    ambiguous = await client.get(f"/api/tasks/{common}")
    assert ambiguous.status_code == 400
    matches = sorted((i for i in ids if i.endswith(common)), reverse=True)
    assert ", ".join(matches[:5]) in ambiguous.json()["error"]
    cancelled = await client.post(f"/api/tasks/{shown}/cancel")
    assert (cancelled.status_code, cancelled.json()["id"]) == (200, ids[-1])
    retried = await client.post(f"/api/tasks/{shown}/retry")
    assert (retried.status_code, retried.json()["retry_of"]) == (202, ids[-1])
