"""1. Ingest: signed 8 KB deliveries through `claude-hooks serve`, against the floor (a bare
FastAPI endpoint) and a peer (adnanh/webhook with an HMAC-SHA256 rule running /bin/true)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.engine import make_url

from bench.common import SECRET, Agents, free_port, percentile, service, stats
from bench.common import runs as bench_runs
from bench.deliveries import Delivery, issue_assigned
from bench.dispatch import postgres_database, postgres_server
from bench.load import fixed_rate, run_wrk, wrk_script

LONG_TASK = ["sleep", "3600"]


@contextmanager
def _process(argv: list[str], url_check: Callable[[], None]) -> Iterator[None]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url_check()
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_port(port: int) -> None:
    deadline = time.perf_counter() + 20
    while time.perf_counter() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def floor() -> Iterator[tuple[int, str]]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.floor_app:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--loop",
        "asyncio",
        "--http",
        "httptools",
    ]
    with _process(argv, lambda: _wait_port(port)):
        yield port, "/webhook"


@contextmanager
def peer(folder: Path) -> Iterator[tuple[int, str]]:
    port = free_port()
    hooks = folder / "hooks.json"
    hooks.write_text(
        json.dumps(
            [
                {
                    "id": "forgejo",
                    "execute-command": "/bin/true",
                    "response-message": "queued",
                    "trigger-rule": {
                        "match": {
                            "type": "payload-hmac-sha256",
                            "secret": SECRET,
                            "parameter": {"source": "header", "name": "X-Forgejo-Signature"},
                        }
                    },
                }
            ]
        )
    )
    argv = ["webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)]
    with _process(argv, lambda: _wait_port(port)):
        yield port, "/hooks/forgejo"


def _batches(start: int, runs: int, size: int) -> list[list[Delivery]]:
    return [[issue_assigned(start + run * size + i) for i in range(size)] for run in range(runs)]


class Numbers:
    """Issue numbers never used before in this benchmark: every delivery is a new issue."""

    def __init__(self, start: int) -> None:
        self.next = start

    def take(self, count: int) -> list[Delivery]:
        batch = [issue_assigned(self.next + i) for i in range(count)]
        self.next += count
        return batch


def _throughput(
    port: int,
    path: str,
    numbers: Numbers,
    runs: int,
    seconds: int,
    folder: Path,
    distinct: bool,
    after_run: Callable[[bool], None] | None = None,
) -> dict[str, Any]:
    """wrk at full speed; `distinct`: sized so no delivery repeats within a run; `after_run`:
    called after each run, and with False after the calibration (claude-hooks: waits until
    the deliveries it deferred are decided)."""
    figures: list[float] = []
    errors = 0
    repeated = 0
    # Only distinct runs are sized from a first estimate: a shared script needs none, and the
    # calibration (a second of wrk at full speed) is saved for the floor and the peer.
    estimate = 0.0
    if distinct:
        script = wrk_script(numbers.take(1500), path, 1, folder / "wrk-calibrate")
        estimate = run_wrk(f"http://127.0.0.1:{port}", script, 32, 1, 1).per_second
        if after_run is not None:
            after_run(False)
    shared = None if distinct else wrk_script(numbers.take(2000), path, 1, folder / "wrk-shared")
    for index in range(runs):
        if shared is None:
            count = int(estimate * seconds * 1.5) + 100
            script = wrk_script(numbers.take(count), path, 1, folder / f"wrk-{index}")
        else:
            count, script = 0, shared
        result = run_wrk(f"http://127.0.0.1:{port}", script, 32, 1, seconds)
        if after_run is not None:
            after_run(True)
        figures.append(result.per_second)
        errors += result.errors
        if shared is None and result.requests > count:
            repeated += result.requests - count
        estimate = max(estimate, result.per_second)
    return {
        "per_second": stats(figures),
        "errors": errors,
        "repeated_deliveries": repeated,
        "seconds_per_run": seconds,
    }


def _latency(port: int, path: str, batches: list[list[Delivery]], rate: float) -> dict[str, Any]:
    p50, p99, statuses = [], [], {}
    answers: list[bytes] = []
    for batch in batches:
        result = asyncio.run(fixed_rate("127.0.0.1", port, path, batch, rate, keep_bodies=True))
        p50.append(percentile(result.seconds, 0.5) * 1000)
        p99.append(percentile(result.seconds, 0.99) * 1000)
        for status, count in result.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
        answers.extend(result.bodies)
    return {"p50_ms": stats(p50), "p99_ms": stats(p99), "statuses": statuses, "answers": answers}


def run(quick: bool) -> dict[str, Any]:
    runs = bench_runs(quick)
    seconds = 1 if quick else 5
    rate = 200.0
    rate_size = 40 if quick else 2000  # requests per fixed-rate run (10 s at 200/s)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        folder = Path(tmp)
        for sub in ["wrk-calibrate", "wrk-shared", *(f"wrk-{i}" for i in range(runs))]:
            (folder / sub).mkdir()
        numbers = Numbers(10)
        measure = Measure(numbers, runs, seconds, folder, rate, rate_size)
        results["claude_hooks"] = measure.ours({}, _sqlite_count, _sqlite_pending)
        server = None if quick else postgres_server()
        if server is not None:
            with postgres_database(server) as url:
                env = {"CLAUDE_HOOKS_SERVER__DATABASE_URL": url}
                results["claude_hooks_postgresql"] = measure.ours(
                    env, _postgres_count(url), _postgres_pending(url)
                )
        with floor() as (port, path):
            results["floor"] = {
                "throughput": _throughput(port, path, numbers, runs, seconds, folder, False),
                "fixed_rate": _without_answers(
                    _latency(port, path, [numbers.take(rate_size) for _ in range(runs)], rate)
                ),
            }
        if _has("webhook"):
            with peer(folder) as (port, path):
                results["peer_webhook"] = {
                    "throughput": _throughput(port, path, numbers, runs, seconds, folder, False),
                    "fixed_rate": _without_answers(
                        _latency(port, path, [numbers.take(rate_size) for _ in range(runs)], rate)
                    ),
                }
    ours = results["claude_hooks"]["throughput"]["per_second"]["median"]
    floor_rate = results["floor"]["throughput"]["per_second"]["median"]
    results["ratio_to_floor"] = ours / floor_rate
    if "claude_hooks_postgresql" in results:
        on_postgres = results["claude_hooks_postgresql"]["throughput"]["per_second"]["median"]
        results["postgresql_ratio_to_floor"] = on_postgres / floor_rate
    if "peer_webhook" in results:
        peer_rate = results["peer_webhook"]["throughput"]["per_second"]["median"]
        results["ratio_to_peer"] = ours / peer_rate
    results["size"] = {
        "runs": runs,
        "seconds_per_throughput_run": seconds,
        "fixed_rate_requests_per_run": rate_size,
        "rate_per_second": rate,
        "body_bytes": len(issue_assigned(1).body),
    }
    return results


Counter = Callable[[Any, list[str]], tuple[int, int]]


def _sqlite_count(hooks: Any, task_ids: list[str]) -> tuple[int, int]:
    """(how many of `task_ids` are stored, how many tasks are queued) in the SQLite file."""
    with hooks.database() as db:
        placeholders = ",".join("?" * len(task_ids))
        stored = db.execute(
            f"SELECT count(*) FROM tasks WHERE id IN ({placeholders})", task_ids
        ).fetchone()[0]
        queued = db.execute("SELECT count(*) FROM tasks WHERE state='queued'").fetchone()[0]
    return int(stored), int(queued)


Pending = Callable[[Any], int]


def _sqlite_pending(hooks: Any) -> int:
    """Deliveries recorded and not yet decided (deferred by the crowded node, see `intake`)."""
    with hooks.database() as db:
        return int(db.execute("SELECT count(*) FROM pending_deliveries").fetchone()[0])


def _postgres_pending(url: str) -> Pending:
    def pending(_hooks: Any) -> int:
        with psycopg.connect(make_url(url).render_as_string(hide_password=False)) as conn:
            row = conn.execute("SELECT count(*) FROM pending_deliveries").fetchone()
        assert row is not None
        return int(row[0])

    return pending


class Backlog:
    """After each wrk run, the deliveries the service deferred, and how long deciding them took
    once the load had stopped: a 202 under a burst means recorded, its decision follows."""

    def __init__(self, hooks: Any, pending: Pending) -> None:
        self.hooks, self.pending = hooks, pending
        self.deferred: list[int] = []
        self.seconds: list[float] = []

    def drain(self, measured: bool) -> None:
        """Wait until the service has decided what it deferred (`measured`: record it)."""
        started = time.perf_counter()
        deferred = left = self.pending(self.hooks)
        deadline = started + 900
        while left and time.perf_counter() < deadline:
            time.sleep(0.1)
            left = self.pending(self.hooks)
        if left:
            raise RuntimeError(f"{left} deferred deliveries still undecided after 900 s")
        if not measured:
            return
        self.deferred.append(deferred)
        self.seconds.append(time.perf_counter() - started)

    def figures(self) -> dict[str, Any]:
        rates = [h / s for h, s in zip(self.deferred, self.seconds, strict=True) if h]
        return {
            "deferred_after_run": stats([float(h) for h in self.deferred]),
            "seconds_to_decide_them": stats(self.seconds),
            "decided_per_second": stats(rates) if rates else None,
        }


def _postgres_count(url: str) -> Counter:
    def count(_hooks: Any, task_ids: list[str]) -> tuple[int, int]:
        with psycopg.connect(make_url(url).render_as_string(hide_password=False)) as conn:
            stored = conn.execute(
                "SELECT count(*) FROM tasks WHERE id = ANY(%s)", (task_ids,)
            ).fetchone()
            queued = conn.execute("SELECT count(*) FROM tasks WHERE state='queued'").fetchone()
        assert stored is not None
        assert queued is not None
        return int(stored[0]), int(queued[0])

    return count


class Measure:
    """claude-hooks under the ingest load, on the database its environment names."""

    def __init__(
        self, numbers: Numbers, runs: int, seconds: int, folder: Path, rate: float, size: int
    ) -> None:
        self.numbers, self.runs, self.seconds = numbers, runs, seconds
        self.folder, self.rate, self.size = folder, rate, size

    def ours(self, env: dict[str, str], count: Counter, pending: Pending) -> dict[str, Any]:
        numbers = self.numbers
        with service(Agents(command=LONG_TASK, instances=2), env) as hooks:
            # Both dev instances busy on long tasks: every delivery below is queued.
            warm = asyncio.run(
                fixed_rate("127.0.0.1", hooks.port, "/webhook", numbers.take(2), 100, 2)
            )
            assert set(warm.statuses) == {202}, warm.statuses
            backlog = Backlog(hooks, pending)
            throughput = _throughput(
                hooks.port,
                "/webhook",
                numbers,
                self.runs,
                self.seconds,
                self.folder,
                True,
                backlog.drain,
            )
            latency = _latency(
                hooks.port,
                "/webhook",
                [numbers.take(self.size) for _ in range(self.runs)],
                self.rate,
            )
            accepted = latency.pop("answers")
            task_ids = [t["id"] for a in accepted for t in json.loads(a).get("tasks", [])]
            stored, queued = count(hooks, task_ids)
        return {
            "throughput": throughput,
            "deferred": backlog.figures(),
            "fixed_rate": latency,
            "accepted_with_task": len(task_ids),
            "tasks_in_database": stored,
            "queued_total": queued,
        }


def _without_answers(latency: dict[str, Any]) -> dict[str, Any]:
    latency.pop("answers", None)
    return latency


def _has(program: str) -> bool:
    return any(
        os.access(os.path.join(d, program), os.X_OK) for d in os.environ["PATH"].split(os.pathsep)
    )
