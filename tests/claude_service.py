"""The service with `runner = "claude"` against the Messages API stand-in: the configuration
and waits that the service, cluster and end-to-end tests of the real Claude CLI share."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from claude_hooks.config import Config
from claude_hooks.core.domain import Task
from claude_hooks.service.runtime import Service
from tests.support import make_config


def claude_type(login: str, token: str, **overrides: Any) -> dict[str, Any]:
    """A `[types.<name>]` table run by the real CLI: no telemetry, no task comments."""
    return {
        "login": login,
        "token": token,
        "runner": "claude",
        "env": {"DISABLE_TELEMETRY": "1"},
        "comments": False,
        **overrides,
    }


def claude_config(tmp_path: Path, clone_root: Path, agents: list[str], **overrides: Any) -> Config:
    """A configuration whose type `dev` (login `dev-bot`) runs the real CLI, cloning from the
    local forge repository at `clone_root`; `alice` and `bob` may trigger work. `overrides`
    go to `make_config` (`server`, `dev` for the type's own keys)."""
    dev = claude_type(
        "dev-bot",
        "forgejo-dev-token",
        role="You are the team's developer.",
        **overrides.pop("dev", {}),
    )
    return make_config(
        tmp_path,
        forgejo={"clone_url": f"file://{clone_root}"},
        security={"allowed_senders": ["alice", "bob"]},
        types={"dev": dev},
        agents=[{"name": name, "type": "dev"} for name in agents],
        **overrides,
    )


async def finished(service: Service, task_id: str, timeout: float = 60) -> Task:
    """The task once it has finished (a Claude run takes seconds: polled, bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        task = await service.store.get_task(task_id)
        assert task is not None
        if task.state.finished:
            return task
        assert time.monotonic() < deadline, f"task {task_id} is still {task.state.value}"
        await asyncio.sleep(0.05)
