"""`claude-hooks demo`: a throwaway service with a team of stand-in agents, fed a few signed
deliveries, so a newcomer sees the flows, the queues and the dashboard without a forge."""

from __future__ import annotations

import asyncio
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
from claude_hooks.server import AppServer, bind
from claude_hooks.service import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.web.app import create_app

AGENT = (
    "import json, sys, time; task = json.load(sys.stdin); "
    "print(f\"{task['agent']} is on {task['kind']} for {task['repo']}#{task['number']}\", "
    "flush=True); time.sleep(2); print('done')"
)


def _user(login: str) -> dict[str, Any]:
    return {"id": zlib.crc32(login.encode()) % 1000, "login": login}


def _repository() -> dict[str, Any]:
    return {"id": 1, "name": "widget", "full_name": "demo/widget", "owner": _user("demo")}


def sample_deliveries() -> list[tuple[str, dict[str, Any]]]:
    """(event type, payload): two issues for dev, a review for reviewer, a mention, noise."""
    issue = {"state": "open", "user": _user("maintainer"), "body": "Steps to reproduce..."}
    pull = {
        "number": 3,
        "title": "Parse the config once",
        "body": "",
        "state": "open",
        "user": _user("maintainer"),
        "merged": False,
        "head": {"ref": "maintainer/config", "sha": "a" * 40},
        "base": {"ref": "main", "sha": ""},
    }
    return [
        (
            "issue_assign",
            {
                "action": "assigned",
                "issue": {
                    **issue,
                    "number": 1,
                    "title": "Crash on empty input",
                    "assignees": [_user("dev")],
                },
                "repository": _repository(),
                "sender": _user("maintainer"),
            },
        ),
        (
            "issue_assign",
            {
                "action": "assigned",
                "issue": {
                    **issue,
                    "number": 2,
                    "title": "Retry failed deliveries",
                    "assignees": [_user("dev")],
                },
                "repository": _repository(),
                "sender": _user("maintainer"),
            },
        ),
        (
            "pull_request_review_request",
            {
                "action": "review_requested",
                "number": 3,
                "pull_request": pull,
                "requested_reviewer": _user("reviewer"),
                "repository": _repository(),
                "sender": _user("maintainer"),
            },
        ),
        (
            "issue_comment",
            {
                "action": "created",
                "is_pull": False,
                "issue": {**issue, "number": 1, "title": "Crash on empty input", "assignees": []},
                "comment": {
                    "id": 7,
                    "body": "@dev please add a test too",
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
                "issue": {**issue, "number": 4, "title": "Docs typo", "assignees": None},
                "repository": _repository(),
                "sender": _user("maintainer"),
            },
        ),
    ]


def demo_config(data_dir: Path, port: int, secret: str, token: str) -> Config:
    agent = {
        "runner": "command",
        "command": [sys.executable, "-c", AGENT],
        "workdir": "none",
        "comments": False,
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


async def feed(client: httpx.AsyncClient, secret: str, say: Callable[[str], None]) -> None:
    for event_type, payload in sample_deliveries():
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
        say(
            f"{event_type:28} {answer.status_code} {result['status']}: "
            f"{placed or result.get('reason', '')}"
        )


async def run_demo(port: int, once: bool, say: Callable[[str], None]) -> int:
    secret, token = secrets.token_hex(16), secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="claude-hooks-demo-") as folder:
        sock = bind("127.0.0.1", port)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        service = await Service.open(demo_config(Path(folder), port, secret, token))
        await service.start(url)
        finished = service.bus.subscribe()
        server = AppServer(create_app(service), log_level="warning")
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            say(f"demo service on {url} (api token {token}); data in {folder}")
            async with httpx.AsyncClient(base_url=url) as client:
                await feed(client, secret, say)
            if once:
                queued = await service.store.count_tasks(TaskFilter())
                done = 0
                while done < queued:
                    event = await finished.get()
                    done += event.kind == "task.finished"
                say(f"all {done} tasks finished")
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
