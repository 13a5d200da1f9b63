"""The sample configuration `make run` uses: it loads, and its stand-in agents do their work."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from claude_hooks.config import load_config
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from tests.conftest import ServiceFactory

ROOT = Path(__file__).resolve().parents[2]


async def test_the_sample_team_works_an_issue(
    start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # `make run` starts the service from the project's folder
    config = load_config(ROOT / "examples" / "claude-hooks.toml")
    config.server.data_dir = tmp_path / "data"
    assert sorted((a.name, a.type) for a in config.agents) == [
        ("boss-1", "boss"),
        ("dev-alpha", "dev"),
        ("dev-bravo", "dev"),
        ("reviewer-1", "reviewer"),
    ]
    service = await start_service(config)
    request = DispatchRequest.for_type(
        "dev", TaskKind.WORK_ISSUE, "acme/widget", 17, {"title": "Retry failed deliveries"}
    )
    task_id = await service.pool.dispatch_by_type("dev", request)
    deadline = time.monotonic() + 30
    while (task := await service.store.get_task(task_id)) is None or not task.state.finished:
        assert time.monotonic() < deadline, "the sample agent did not finish"
        await asyncio.sleep(0.05)
    assert task.state is TaskState.SUCCEEDED, task.error
    log = service.pool.log_path(task_id).read_text()
    assert "dev-alpha got work_issue for acme/widget#17" in log
    assert "Retry failed deliveries" in log
