"""6. Claude runner overhead: the real bundled CLI against a local stand-in of the Messages API.
The time from dispatch to the CLI's first API request, and the service's own memory per
running session (the CLI processes are counted apart)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from tests.messages_standin import MessagesStandin, stall

from bench.common import TOKEN, Agents, Service, rss_mb, stats


def _environment(api: MessagesStandin, home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": api.url,
        "ANTHROPIC_API_KEY": "sk-standin",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
    }


def _dispatch(client: httpx.Client, number: int) -> None:
    answer = client.post(
        "/api/tasks",
        json={
            "type": "dev",
            "kind": "work_issue",
            "repo": "acme/widget",
            "number": number,
            "payload": {"title": "Say hello", "body": "Answer with one word."},
        },
    )
    assert answer.status_code == 202, answer.text


def _wait(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _cli_rss(pid: int) -> float:
    return sum(
        float(child.memory_info().rss) / 2**20
        for child in psutil.Process(pid).children(recursive=True)
    )


def run(quick: bool) -> dict[str, Any]:
    tasks = 2 if quick else 5
    sessions = 2 if quick else 5
    first_request, service_per_session, cli_per_session = [], [], []
    with (
        tempfile.TemporaryDirectory(prefix="bench-claude-", ignore_cleanup_errors=True) as tmp,
        MessagesStandin() as api,
    ):
        home = Path(tmp) / "home"
        home.mkdir()
        folder = Path(tmp) / "svc"
        folder.mkdir()
        running = Service(
            folder,
            Agents(command=["unused"], instances=sessions, runner="claude"),
            env=_environment(api, home),
        )
        running.start()
        client = httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            for number in range(1, tasks + 1):
                before = len(api.message_requests())
                started = time.monotonic()
                _dispatch(client, number)
                _wait(lambda before=before: len(api.message_requests()) > before)
                first_request.append(api.message_requests()[before].at - started)
                _wait(lambda: client.get("/api/tasks?state=running").json()["total"] == 0)
            idle = rss_mb(running.pid)
            api.script(*[stall("Thinking") for _ in range(sessions)])
            before = len(api.message_requests())
            for number in range(100, 100 + sessions):
                _dispatch(client, number)
            _wait(lambda: len(api.message_requests()) >= before + sessions)
            time.sleep(1.0)
            service_per_session.append((rss_mb(running.pid) - idle) / sessions)
            cli_per_session.append(_cli_rss(running.pid) / sessions)
        finally:
            client.close()
            running.stop()
    return {
        "dispatch_to_first_api_request_s": stats(first_request),
        "service_rss_per_running_session_mb": service_per_session[0],
        "cli_rss_per_running_session_mb": cli_per_session[0],
        "sessions": sessions,
    }
