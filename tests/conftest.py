from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from claude_hooks.config import Config
from claude_hooks.service.runtime import Service
from claude_hooks.store.schema import metadata
from claude_hooks.store.sql import SqlStore
from tests import pg
from tests.fake_forgejo import fake_forgejo  # noqa: F401
from tests.support import GateRunner, make_config

ServiceFactory = Callable[..., Any]

# Fixtures of the dashboard's tests (a service, a real server, clients): used by several modules.
pytest_plugins = ("tests.dashboard_fixtures",)


LAYERS = ("unit", "store", "forge", "agents", "service", "web", "cli", "cluster", "e2e")


# Under pytest-xdist (`make test` runs a worker per core, `--dist loadgroup`), the tests that
# each start several `serve` processes, a browser, or measure load, run on one worker one
# after another, not two at once on two cores; and they go first, so the longest never
# starts last while the other workers sit idle.
HEAVY_GROUPS = {
    "tests/cli/test_bench_quick.py": "bench",
    "tests/cluster": "cluster",
    "tests/web/test_dashboard_browser.py": "browser",
    "tests/web/test_dashboard_operations_browser.py": "browser",
    "tests/web/test_outcomes_browser.py": "browser",
}


def _heavy_group(item: pytest.Item) -> str | None:
    where = item.path.relative_to(Path(__file__).parent.parent).as_posix()
    return next((group for path, group in HEAVY_GROUPS.items() if where.startswith(path)), None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries the marker of its folder, so `-m unit` picks the same tests as
    `tests/unit`, across folders once a layer's tests sit in more than one; the heavy groups
    go first, in HEAVY_GROUPS' order."""
    for item in items:
        folder = item.path.parent.name
        if folder in LAYERS:
            item.add_marker(getattr(pytest.mark, folder))
        group = _heavy_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    order = list(dict.fromkeys(HEAVY_GROUPS.values()))
    items.sort(key=lambda item: order.index(g) if (g := _heavy_group(item)) else len(order))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def store(config: Config) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(config.database_url)
    yield opened
    await opened.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server (see tests/pg.py); skipped without one, except under CI."""
    try:
        with pg.server() as url:
            yield url
    except pg.NoServer as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL tests: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pg_database(pg_server: str) -> Iterator[str]:
    """A database of this test run's own, migrated once."""
    with pg.own_database(pg_server) as url:
        asyncio.run(_migrate(url))
        yield url


async def _migrate(url: str) -> None:
    await (await SqlStore.open(url)).close()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The run's PostgreSQL database, emptied for this test."""
    engine = sa.create_engine(make_url(pg_database).set(drivername="postgresql+psycopg"))
    try:
        with engine.begin() as conn:
            names = ", ".join(table.name for table in metadata.sorted_tables)
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY"))
    finally:
        engine.dispose()
    return pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each backend in turn: a fresh SQLite file, or the run's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def gate() -> GateRunner:
    return GateRunner()


@contextlib.asynccontextmanager
async def service_starter(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """What `start_service` gives, for fixtures of another event loop's scope to reuse."""
    started: list[Service] = []

    async def start(config: Config | None = None, runner: Any = None, **overrides: Any) -> Service:
        config = config or make_config(tmp_path, **overrides)
        service = await Service.open(config, (lambda _type: runner) if runner else None)
        await service.start()
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in started:
            await service.stop()


@pytest.fixture
async def start_service(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """Start a Service in process; `runner` replaces every type's runner with a fake."""
    async with service_starter(tmp_path) as start:
        yield start
