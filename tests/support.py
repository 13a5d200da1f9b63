"""Test helpers: configs, a gate runner (a fake of the runner protocol), waiting on conditions."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from claude_hooks.agents.runners.base import RunContext, RunResult
from claude_hooks.config import Config
from claude_hooks.store.base import Store


def cli_option(argv: list[str], flag: str) -> str:
    """The value of `flag` in a CLI's argv, written `--flag value` or `--flag=value`: the SDK
    has used both, and a test of what reaches the CLI must not depend on which."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
    raise AssertionError(f"{flag} is not in {argv}")


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    """A config with types dev/reviewer/boss on the command runner and no seeded agents."""
    command = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    data: dict[str, Any] = {
        "server": {
            "data_dir": str(tmp_path / "data"),
            "webhook_secret": "fixture-secret",
            "api_token": "test-token",
            "cancel_grace": 2.0,
            "poll_interval": 0.05,
        },
        "types": {
            "dev": {"login": "dev-bot", "runner": "command", "command": command, "workdir": "none"},
            "reviewer": {"runner": "command", "command": command, "workdir": "none"},
            "boss": {"runner": "command", "command": command, "workdir": "none"},
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Config(**data)


class GateRunner:
    """Runs every task until the test opens its gate (or the task is cancelled)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []

    def gate(self, task_id: str) -> asyncio.Event:
        return self.gates.setdefault(task_id, asyncio.Event())

    def release(self, task_id: str) -> None:
        self.gate(task_id).set()

    def release_all(self) -> None:
        for event in self.gates.values():
            event.set()

    async def run(self, ctx: RunContext) -> RunResult:
        self.started.append(ctx.task.id)
        try:
            await self.gate(ctx.task.id).wait()
        except asyncio.CancelledError:
            self.cancelled.append(ctx.task.id)
            raise
        return RunResult(succeeded=True, exit_code=0, result=f"done by {ctx.task.agent}")


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until `condition` (a function, or a coroutine function) holds."""
    deadline = time.monotonic() + timeout
    while True:
        met = condition()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def queue_of(store: Store, agent: str) -> list[str]:
    """The ids queued on an instance, head first, as the database has them."""
    for instance in await store.instances():
        if instance.name == agent:
            return list(instance.queue)
    return []


async def all_idle(store: Store) -> bool:
    """No instance runs a task or has one queued."""
    return all(i.running is None and not i.queue for i in await store.instances())


async def instance_idle(store: Store, agent: str) -> bool:
    return any(
        i.name == agent and i.running is None and not i.queue for i in await store.instances()
    )


async def queue_is(store: Store, agent: str, expected: list[str]) -> bool:
    return await queue_of(store, agent) == expected


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "forgejo"
FIXTURE_SECRET = "fixture-secret"


def fixture(name: str) -> tuple[bytes, dict[str, str]]:
    """A sample delivery from tests/fixtures/forgejo: its exact body bytes and its headers."""
    import json

    body = (FIXTURES / f"{name}.json").read_bytes()
    headers = json.loads((FIXTURES / f"{name}.headers.json").read_text())
    return body, headers


def sign(body: bytes, secret: str = FIXTURE_SECRET) -> str:
    import hashlib
    import hmac

    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def forgejo_headers(
    event_type: str, body: bytes, delivery: str, secret: str = FIXTURE_SECRET
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Forgejo-Delivery": delivery,
        "X-Forgejo-Event": event_type,
        "X-Forgejo-Event-Type": event_type,
        "X-Forgejo-Signature": sign(body, secret),
    }


def run_cli(*args: str, config: Config) -> subprocess.CompletedProcess[str]:
    """`claude-hooks ARGS` in a subprocess, on the database of an in-process test's config."""
    path = Path(config.data_dir) / "cli.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    token = config.server.api_token.get_secret_value() if config.server.api_token else "t"
    path.write_text(
        f"[server]\ndata_dir = {json.dumps(str(Path(config.data_dir).resolve()))}\n"
        f"api_token = {json.dumps(token)}\n"
    )
    argv = [sys.executable, "-m", "claude_hooks", *args, "--config", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
