"""2. Dispatch decision: the pure choice at 10, 100 and 1,000 instances, and `dispatch_by_type`
end to end including its commit, on SQLite and (at 100 instances) on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import tempfile
import time
import timeit
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench.common import runs, stats
from claude_hooks.agents.runners.base import RunContext, RunResult
from claude_hooks.config import Config
from claude_hooks.core.domain import DispatchRequest, TaskKind
from claude_hooks.core.scheduler import Candidate, choose
from claude_hooks.service.runtime import Service


def candidates(count: int, seed: int = 7) -> list[Candidate]:
    """Mixed: a tenth idle, the rest busy with queues of 0-9."""
    rng = random.Random(seed)
    return [
        Candidate(f"dev-{i:04d}", running=rng.random() > 0.1, queued=rng.randrange(10))
        for i in range(count)
    ]


def pure_choice(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in (10, 100, 1000):
        for label, pool in (
            ("mixed", candidates(count)),
            ("all_busy", [Candidate(c.name, True, c.queued + 1) for c in candidates(count)]),
        ):
            number = 200 if quick else 5000
            figures = [
                timeit.timeit(lambda pool=pool: choose(pool, 12345), number=number) / number * 1e6
                for _ in range(runs(quick))
            ]
            results[f"{label}_{count}_us"] = stats(figures)
    return results


class Forever:
    """A runner whose tasks never end, so instances stay busy and queues grow."""

    async def run(self, ctx: RunContext) -> RunResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


POSTGRES_ENV = "CLAUDE_HOOKS_BENCH_DATABASE_URL"
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_server() -> str | None:
    """A PostgreSQL server to measure on: $CLAUDE_HOOKS_BENCH_DATABASE_URL, or 127.0.0.1:5432."""
    given = os.environ.get(POSTGRES_ENV)
    if given:
        return given
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return LOCAL_POSTGRES if sock.connect_ex(("127.0.0.1", 5432)) == 0 else None


@contextlib.contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A database of the benchmark's own on the server, dropped afterwards."""
    name = f"claude_hooks_bench_{uuid.uuid4().hex[:12]}"
    admin = make_url(server).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _end_to_end(instances: int, dispatches: int, database_url: str = "") -> float:
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        command = ["true"]
        config = Config(
            server={
                "data_dir": tmp,
                "webhook_secret": "s",
                "api_token": "t",
                "database_url": database_url,
            },
            types={
                "dev": {
                    "runner": "command",
                    "command": command,
                    "workdir": "none",
                    "comments": False,
                }
            },
            agents=[{"name": f"dev-{i:04d}", "type": "dev"} for i in range(instances)],
        )
        runner = Forever()
        service = await Service.open(config, lambda _type: runner)
        await service.start()
        try:
            requests = [
                DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", n)
                for n in range(1, dispatches + 1)
            ]
            started = time.perf_counter()
            for request in requests:
                await service.pool.dispatch_by_type("dev", request)
            return (time.perf_counter() - started) / dispatches * 1e6
        finally:
            await service.stop()


def end_to_end(quick: bool) -> dict[str, Any]:
    """SQLite at 10 and 100 instances; PostgreSQL at 100 when a server answers (not in the
    quick mode), each run in a fresh database."""
    dispatches = 100 if quick else 2000
    results = {
        f"dispatch_by_type_{count}_us": stats(
            [asyncio.run(_end_to_end(count, dispatches)) for _ in range(runs(quick))]
        )
        for count in (10, 100)
    }
    server = None if quick else postgres_server()
    if server is not None:
        figures = []
        for _ in range(runs(quick)):
            with postgres_database(server) as url:
                figures.append(asyncio.run(_end_to_end(100, dispatches, url)))
        results["dispatch_by_type_100_postgresql_us"] = stats(figures)
    return results


def run(quick: bool) -> dict[str, Any]:
    results = {"pure": pure_choice(quick), "end_to_end": end_to_end(quick)}
    pure = results["pure"]
    results["growth_10_to_1000"] = pure["mixed_1000_us"]["median"] / pure["mixed_10_us"]["median"]
    results["all_busy_growth_10_to_1000"] = (
        pure["all_busy_1000_us"]["median"] / pure["all_busy_10_us"]["median"]
    )
    return results
