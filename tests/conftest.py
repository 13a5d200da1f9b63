from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from claude_hooks.config import Config
from claude_hooks.service import Service
from claude_hooks.store.sql import SqlStore
from tests.fake_forgejo import fake_forgejo  # noqa: F401
from tests.support import GateRunner, make_config

ServiceFactory = Callable[..., Any]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def store(config: Config) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(config.database_url)
    yield opened
    await opened.close()


@pytest.fixture
def gate() -> GateRunner:
    return GateRunner()


@pytest.fixture
async def start_service(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """Start a Service in process; `runner` replaces every type's runner with a fake."""
    started: list[Service] = []

    async def start(config: Config | None = None, runner: Any = None, **overrides: Any) -> Service:
        config = config or make_config(tmp_path, **overrides)
        service = await Service.open(config, (lambda _type: runner) if runner else None)
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()
