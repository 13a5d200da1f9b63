"""`claude-hooks demo`: a throwaway service with a team of stand-in agents, fed a few signed
deliveries, so a newcomer sees the flows, the queues and the dashboard without a forge."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import sys
import tempfile
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from claude_hooks.config import Config
from claude_hooks.core.domain import Task
from claude_hooks.service.events import Subscription
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.web.app import create_app
from claude_hooks.web.server import AppServer, bind

# A stand-in agent: says what it does, works for DEMO_WORK seconds, fails where the issue's
# title asks it to (the demo's failure), and repeats the steering messages it was sent.
AGENT = (
    "import json, os, sys, time; task = json.load(sys.stdin); "
    "print(f\"{task['agent']} is on {task['kind']} for {task['repo']}#{task['number']}\", "
    "flush=True); time.sleep(float(os.environ['DEMO_WORK'])); "
    "steer = os.environ.get('CLAUDE_HOOKS_STEER'); "
    "[print(f\"steered by @{m['from']}: {m['body']}\", flush=True) "
    "for m in map(json.loads, open(steer).read().splitlines() if steer else [])]; "
    "fails = 'fails' in task['payload'].get('title', ''); "
    "print('cannot reproduce: giving up' if fails else 'done', flush=True); "
    "sys.exit(1 if fails else 0)"
)
HEAD = "b" * 40  # the head commit of dev's pull request
DEFAULT_PACE = 1.0  # seconds between deliveries
WORK_PACES = 4  # a stand-in agent works this many paces


def _user(login: str) -> dict[str, Any]:
    return {"id": zlib.crc32(login.encode()) % 1000, "login": login}


def _repository() -> dict[str, Any]:
    return {"id": 1, "name": "widget", "full_name": "demo/widget", "owner": _user("demo")}


def _issue(number: int, title: str, assignees: list[str]) -> dict[str, Any]:
    return {
        "number": number,
        "title": title,
        "state": "open",
        "user": _user("maintainer"),
        "body": "Steps to reproduce...",
        "assignees": [_user(login) for login in assignees],
    }


def _assign(number: int, title: str, action: str = "assigned") -> tuple[str, dict[str, Any]]:
    assignees = ["dev"] if action == "assigned" else []
    return (
        "issue_assign",
        {
            "action": action,
            "issue": _issue(number, title, assignees),
            "repository": _repository(),
            "sender": _user("maintainer"),
        },
    )


def _pull(action: str, sender: str, **extra: Any) -> dict[str, Any]:
    pull = {
        "number": 3,
        "title": "Fix the crash on empty input",
        "body": "Fixes #1.",
        "state": "open",
        "user": _user("dev"),
        "merged": False,
        "head": {"ref": "dev/1-crash-on-empty-input", "sha": HEAD},
        "base": {"ref": "main", "sha": ""},
    }
    return {
        "action": action,
        "number": 3,
        "pull_request": pull,
        "repository": _repository(),
        "sender": _user(sender),
        **extra,
    }


def _comment(number: int, title: str, comment_id: int, body: str) -> tuple[str, dict[str, Any]]:
    return (
        "issue_comment",
        {
            "action": "created",
            "is_pull": False,
            "issue": _issue(number, title, []),
            "comment": {"id": comment_id, "body": body, "user": _user("maintainer")},
            "repository": _repository(),
            "sender": _user("maintainer"),
        },
    )


def sample_deliveries() -> list[tuple[str, dict[str, Any]]]:
    """(event type, payload), in the order of the story the demo tells: work for dev with a
    queue, a steer of a running task, a failure, a cancel and a stop from the forge, dev's PR
    reviewed and merged, its CI failing and fixed."""
    return [
        _assign(1, "Crash on empty input"),
        _assign(2, "Retry failed deliveries"),
        _assign(5, "Slow start-up"),  # both dev instances are busy: this one queues
        # dev works on #2: the mention reaches the running agent instead of queueing.
        _comment(2, "Retry failed deliveries", 5, "@dev also log each retry"),
        _comment(5, "Slow start-up", 6, "On second thought, not now.\n@dev stop"),
        _assign(6, "Intermittent timeout (the stand-in fails this one)"),
        _assign(7, "Assigned by mistake"),
        _assign(7, "Assigned by mistake", action="unassigned"),  # cancels its queued task
        ("pull_request", _pull("opened", "dev")),
        (
            "pull_request_review_request",
            _pull("review_requested", "maintainer", requested_reviewer=_user("reviewer")),
        ),
        (
            "pull_request_review_approved",
            _pull(
                "reviewed",
                "reviewer",
                review={"type": "pull_request_review_approved", "content": "LGTM"},
            ),
        ),
        (
            "status",
            {
                "sha": HEAD,
                "state": "failure",
                "context": "ci/tests",
                "description": "2 tests failed",
                "target_url": "",
                "repository": _repository(),
                "sender": _user("ci"),
            },
        ),
        (
            "issue_comment",
            {
                "action": "created",
                "is_pull": False,
                "issue": _issue(1, "Crash on empty input", []),
                "comment": {
                    "id": 7,
                    "body": "@dev queue: please add a test too",
                    "user": _user("maintainer"),
                },
                "repository": _repository(),
                "sender": _user("maintainer"),
            },
        ),
        (
            "issues",
            {
                "action": "opened",
                "issue": _issue(4, "Docs typo", []),
                "repository": _repository(),
                "sender": _user("maintainer"),
            },
        ),
    ]


def demo_config(
    data_dir: Path, port: int, secret: str, token: str, pace: float = DEFAULT_PACE
) -> Config:
    agent = {
        "runner": "command",
        "command": [sys.executable, "-c", AGENT],
        "workdir": "none",
        "comments": False,
        "env": {"DEMO_WORK": str(WORK_PACES * pace)},
    }
    teams = (
        ("dev-alpha", "dev"),
        ("dev-bravo", "dev"),
        ("reviewer-1", "reviewer"),
        ("boss-1", "boss"),
    )
    return Config.model_validate(
        {
            "server": {
                "port": port,
                "data_dir": str(data_dir),
                "webhook_secret": secret,
                "api_token": token,
                "log_level": "warning",
            },
            "security": {"allowed_senders": ["maintainer"]},
            "types": {"dev": agent, "reviewer": agent, "boss": agent},
            "agents": [{"name": name, "type": kind} for name, kind in teams],
        }
    )


async def feed(
    client: httpx.AsyncClient, secret: str, say: Callable[[str], None], pace: float = 0.0
) -> None:
    for step, (event_type, payload) in enumerate(sample_deliveries()):
        if step:
            await asyncio.sleep(pace)
        body = json.dumps(payload).encode()
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        answer = await client.post(
            "/webhook",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Forgejo-Delivery": str(uuid.uuid4()),
                "X-Forgejo-Event": event_type,
                "X-Forgejo-Event-Type": event_type,
                "X-Forgejo-Signature": signature,
            },
        )
        result = answer.json()
        placed = ", ".join(f"{t['type']} -> {t['agent']}" for t in result.get("tasks", []))
        if result.get("cancelled"):
            placed = f"cancelled task {', '.join(result['cancelled'])}"
        elif "steered" in result.get("reason", ""):
            placed = result["reason"].rsplit("; ", 1)[1]
        say(
            f"{event_type:28} {answer.status_code} {result['status']}: "
            f"{placed or result.get('reason', '')}"
        )


async def run_demo(
    port: int, once: bool, say: Callable[[str], None], pace: float = DEFAULT_PACE
) -> int:
    secret, token = secrets.token_hex(16), secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="claude-hooks-demo-") as folder:
        sock = bind("127.0.0.1", port)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        service = await Service.open(demo_config(Path(folder), port, secret, token, pace))
        await service.start(url)
        finished = service.bus.subscribe()
        server = AppServer(create_app(service), log_level="warning")
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            say(f"demo service on {url} (api token {token}); data in {folder}")
            if not once:
                say(f"open {url}/ and log in with the token above to watch the story unfold")
            async with httpx.AsyncClient(base_url=url) as client:
                await feed(client, secret, say, pace)
            if once:
                await _until_finished(service, finished)
                states = [task.state.value for task in await _all_tasks(service)]
                summary = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
                say(f"all {len(states)} tasks finished: {summary}")
            else:
                say(f"open {url}/ and log in with the token above; Ctrl-C stops the demo")
                await serving
        finally:
            finished.close()
            server.should_exit = True
            await serving
            await service.stop()
            sock.close()
    return 0


async def _all_tasks(service: Service) -> list[Task]:
    return await service.store.list_tasks(TaskFilter(), 1000, 0)


async def _until_finished(service: Service, events: Subscription) -> None:
    while any(not task.state.finished for task in await _all_tasks(service)):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(events.get(), 1.0)
