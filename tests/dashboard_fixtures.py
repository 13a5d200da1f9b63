"""What the dashboard's tests share: a service with a type of each runner, a real server on
127.0.0.1 for it, and API clients. Test modules import the fixtures they use."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from claude_hooks.agents.runners.base import RunContext, RunResult
from claude_hooks.config import Config
from claude_hooks.service.runtime import Service
from claude_hooks.web.app import create_app
from claude_hooks.web.server import AppServer, bind
from tests.conftest import ServiceFactory
from tests.support import GateRunner, make_config, wait_until

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AUTH = {"Authorization": "Bearer test-token"}
CSRF = {"X-Requested-With": "claude-hooks"}
AGENTS = [
    {"name": "dev-alpha", "type": "dev"},
    {"name": "dev-bravo", "type": "dev"},
    {"name": "reviewer-1", "type": "reviewer"},
    {"name": "ai-1", "type": "ai"},
]
COMMAND = [sys.executable, "-c", "import sys; sys.stdin.read()"]
QUIET = {"runner": "command", "command": COMMAND, "workdir": "none", "comments": False}
# Forge links need forgejo.url; comments stay off so no test waits on a forge that is not there.
TYPES = {
    "dev": {**QUIET, "login": "dev-bot"},
    "reviewer": QUIET,
    "boss": QUIET,
    "ai": {"runner": "claude", "workdir": "none", "comments": False},
}


class LoggingGate(GateRunner):
    """A gate runner whose tasks write their log and report a cost, as real agents do."""

    def __init__(self, lines: Sequence[str] = ("checking out", "working"), cost: float = 0.25):
        super().__init__()
        self.lines = list(lines)
        self.cost = cost

    async def run(self, ctx: RunContext) -> RunResult:
        ctx.log_path.parent.mkdir(parents=True, exist_ok=True)
        with ctx.log_path.open("a", encoding="utf-8") as log:
            log.writelines(line + "\n" for line in self.lines)
        result = await super().run(ctx)
        return dataclasses.replace(result, cost_usd=self.cost)


@contextlib.asynccontextmanager
async def serve(service: Service, sock: socket.socket | None = None) -> AsyncIterator[str]:
    """A real server for the service's app, on `sock` (bound at the service's start, so that
    its lock file says where it answers) or a port of its own; yields its base URL."""
    app = create_app(service)
    own = sock is None
    sock = bind("127.0.0.1", 0) if sock is None else sock
    server = AppServer(app, log_level="warning", timeout_graceful_shutdown=5)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(lambda: server.started)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        if own:
            sock.close()


@contextlib.asynccontextmanager
async def serving(config: Config) -> AsyncIterator[tuple[Service, str]]:
    """A service started as `serve` starts it, on a real server: its lock file tells the CLI
    where its API answers. Yields the service and its base URL."""
    sock = bind("127.0.0.1", 0)
    service = await Service.open(config)
    try:
        await service.start(url_of(sock))
        async with serve(service, sock) as url:
            yield service, url
    finally:
        await service.stop()
        sock.close()


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def dashboard_config(tmp_path: Path, **overrides: Any) -> Config:
    return make_config(
        tmp_path,
        agents=AGENTS,
        types=TYPES,
        security={"allowed_senders": ["alice", "bob"]},
        forgejo={"url": "https://forge.example.com"},
        **overrides,
    )


@pytest.fixture
def runner() -> LoggingGate:
    return LoggingGate()


@pytest.fixture
async def service(start_service: ServiceFactory, runner: LoggingGate, tmp_path: Path) -> Service:
    started: Service = await start_service(dashboard_config(tmp_path), runner=runner)
    return started


@pytest.fixture
async def base_url(service: Service) -> AsyncIterator[str]:
    async with serve(service) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH) as client:
        yield client


@pytest.fixture
async def anonymous(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url) as client:
        yield client


@pytest.fixture
def api(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The token's client, under the name the browser tests use."""
    return client


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium driven by Playwright, one per test worker: starting both took about
    5 s a test. Each test opens its own context in it; the browser modules run in the
    session's event loop, Playwright's (see tests/browser_fixtures.py), and skip where
    Chromium or Playwright is missing, before this is asked for."""
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield launched
        finally:
            await launched.close()
