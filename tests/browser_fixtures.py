"""The dashboard's fixtures (tests/dashboard_fixtures.py) in the session's event loop, for the
browser modules, which import them (under other names: pytest finds each by the name it
declares). They share one `browser` per test worker, and Playwright's objects belong to the
loop that started its driver, so those modules run their tests in that loop
(`pytestmark = SESSION_LOOP`); each test still gets its own service, server and client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from claude_hooks.service.runtime import Service
from tests.conftest import ServiceFactory, service_starter
from tests.dashboard_fixtures import AUTH, LoggingGate, dashboard_config, serve

SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session", name="start_service")
async def start_service_in_session(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    async with service_starter(tmp_path) as start:
        yield start


@pytest_asyncio.fixture(loop_scope="session", name="service")
async def service_in_session(
    start_service: ServiceFactory, runner: LoggingGate, tmp_path: Path
) -> Service:
    started: Service = await start_service(dashboard_config(tmp_path), runner=runner)
    return started


@pytest_asyncio.fixture(loop_scope="session", name="base_url")
async def base_url_in_session(service: Service) -> AsyncIterator[str]:
    async with serve(service) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session", name="client")
async def client_in_session(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH) as client:
        yield client
