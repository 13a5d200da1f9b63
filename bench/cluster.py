"""7. PostgreSQL and several nodes: `dispatch_by_type` at 100 instances once the planner has
statistics; delivery -> agent start when the delivery reaches the node holding the instance
and when it reaches another node; the time from `kill -9` of a node to its interrupted task
starting on the other.

Two `claude-hooks serve` processes on a fresh database (see `dispatch.postgres_server`): node
`a` starts first and holds the one instance (a node claims only unheld instances), then node
`b`. The agent (bash, not sandboxed: it writes its clock into the benchmark's folder) records
`$EPOCHREALTIME` when it starts, in a file named after its task and attempt.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.engine import make_url

from bench.common import (
    SECRET,
    TOKEN,
    free_port,
    percentile,
    runs,
    stats,
    stop_process,
    wait_healthy,
)
from bench.deliveries import issue_assigned
from bench.dispatch import _end_to_end, postgres_database, postgres_server

LEASE_SECONDS = 2.0
AGENT = (
    'echo "$EPOCHREALTIME" > "$STAMPS/$CLAUDE_HOOKS_TASK_ID.$CLAUDE_HOOKS_ATTEMPT"; '
    'exec sleep "$HOLD"'
)


@dataclass
class Node:
    """One `claude-hooks serve` on the shared database."""

    name: str
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, config: Path) -> None:
        with (self.folder / "service.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "claude_hooks", "serve", "--config", str(config)],
                stdout=log,
                stderr=log,
            )
        wait_healthy(self.url, 30, self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Pair:
    """Node `a` holding the instance, node `b` beside it, and where agents stamp their start."""

    a: Node
    b: Node
    stamps: Path
    database_url: str

    def stamp(self, task_id: str, attempt: int, timeout: float) -> float:
        """The clock the agent wrote when the task's `attempt` started."""
        path = self.stamps / f"{task_id}.{attempt}"
        deadline = time.perf_counter() + timeout
        while not path.exists() or not path.read_text().strip():
            if time.perf_counter() > deadline:
                raise RuntimeError(f"task {task_id} (attempt {attempt}) did not start")
            time.sleep(0.0005)
        return float(path.read_text())

    def wait(self, sql: str, *params: object, timeout: float = 10.0) -> None:
        wait_until(self.database_url, sql, *params, timeout=timeout)


def wait_until(database_url: str, sql: str, *params: object, timeout: float = 10.0) -> None:
    """Until the query's first value is true, on one connection."""
    url = make_url(database_url).set(drivername="postgresql")
    deadline = time.perf_counter() + timeout
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        while True:
            row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
            if row is not None and row[0]:
                return
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not in {timeout} s: {sql}")
            time.sleep(0.005)


def _config(node: Node, database_url: str, stamps: Path, hold: float) -> Path:
    config = node.folder / "claude-hooks.toml"
    config.write_text(
        f"""
[server]
port = {node.port}
data_dir = "{node.folder / "data"}"
node = "{node.name}"
lease_seconds = {LEASE_SECONDS}
database_url = "{database_url}"
webhook_secret = "{SECRET}"
api_token = "{TOKEN}"
log_level = "warning"
cancel_grace = 1.0

[security]
allowed_senders = ["alice"]

[types.dev]
login = "dev-bot"
runner = "command"
command = ["bash", "-c", '{AGENT}']
env = {{ STAMPS = "{stamps}", HOLD = "{hold}" }}
workdir = "none"
sandbox = false  # the agent writes its clock into the benchmark's folder
comments = false

[[agents]]
name = "dev-000"
type = "dev"
"""
    )
    return config


@contextmanager
def pair(server: str, hold: float) -> Iterator[Pair]:
    """Nodes `a` (holding the instance) and `b` on a fresh database, stopped afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="claude-hooks-bench-cluster-") as folder,
        postgres_database(server) as url,
        ExitStack() as stack,
    ):
        root = Path(folder)
        stamps = root / "stamps"
        stamps.mkdir()
        nodes = []
        for name in ("a", "b"):
            (root / name).mkdir()
            node = Node(name, root / name, free_port())
            stack.callback(node.stop)
            node.start(_config(node, url, stamps, hold))
            nodes.append(node)
            if name == "a":
                wait_until(url, "SELECT count(*) FROM agents WHERE node = 'a'")
        yield Pair(nodes[0], nodes[1], stamps, url)


def _deliver(client: httpx.Client, node: Node, number: int) -> tuple[str, float]:
    """Send one delivery to `node`: its task id and the clock just before sending."""
    delivery = issue_assigned(number)
    sent = time.time()
    answer = client.post(f"{node.url}/webhook", content=delivery.body, headers=delivery.headers)
    if answer.status_code != 202:
        raise RuntimeError(f"{answer.status_code}: {answer.text}")
    return str(answer.json()["tasks"][0]["id"]), sent


def start_latency(
    server: str, quick: bool, places: tuple[str, ...] = ("same_node", "other_node")
) -> dict[str, Any]:
    """Delivery -> agent start, the delivery sent to the holder (`a`, "same_node") or the
    other node (`b`, "other_node")."""
    count = 10 if quick else 50
    figures: dict[str, dict[str, list[float]]] = {where: {"p50": [], "p99": []} for where in places}
    with pair(server, hold=0) as nodes, httpx.Client(timeout=10) as client:
        number = 0
        for _ in range(runs(quick)):
            for where in places:
                node = nodes.a if where == "same_node" else nodes.b
                latencies = []
                for _ in range(count):
                    number += 1
                    task_id, sent = _deliver(client, node, number)
                    latencies.append((nodes.stamp(task_id, 1, 10) - sent) * 1000)
                    # The instance idle again before the next delivery.
                    nodes.wait("SELECT finished_at FROM tasks WHERE id = %s", task_id)
                figures[where]["p50"].append(percentile(latencies, 0.5))
                figures[where]["p99"].append(percentile(latencies, 0.99))
    return {
        "deliveries_per_run": count,
        **{
            f"{where}_{p}_ms": stats(values)
            for where, by_p in figures.items()
            for p, values in by_p.items()
        },
    }


def adoption(server: str, quick: bool) -> dict[str, Any]:
    """`kill -9` of the node running a task -> that task's agent starting on the other node."""
    seconds = []
    for run_index in range(runs(quick)):
        with pair(server, hold=3600) as nodes, httpx.Client(timeout=10) as client:
            task_id, _sent = _deliver(client, nodes.a, 1 + run_index)
            nodes.stamp(task_id, 1, 10)
            killed = time.time()
            nodes.a.kill()
            seconds.append(nodes.stamp(task_id, 2, LEASE_SECONDS + 30) - killed)
    return {"lease_seconds": LEASE_SECONDS, "kill_to_start_s": stats(seconds)}


def dispatch_analyzed(server: str, quick: bool) -> dict[str, Any]:
    """`dispatch` measures a fresh database, whose planner has no statistics yet (autovacuum
    has not looked); here ANALYZE runs after 200 dispatches, as on a database in use."""
    dispatches = 100 if quick else 2000
    figures = []
    for _ in range(runs(quick)):
        with postgres_database(server) as url:
            asyncio.run(_end_to_end(100, 200, url))
            libpq = make_url(url).set(drivername="postgresql")
            with psycopg.connect(libpq.render_as_string(hide_password=False)) as conn:
                conn.execute("ANALYZE")
            figures.append(asyncio.run(_end_to_end(100, dispatches, url)))
    return {"dispatch_by_type_100_analyzed_us": stats(figures)}


def run(quick: bool) -> dict[str, Any]:
    """Not in the quick mode (as PostgreSQL in `dispatch`); needs a PostgreSQL server."""
    server = None if quick else postgres_server()
    if server is None:
        return {"skipped": "quick mode" if quick else "no PostgreSQL server (--database-url)"}
    return {
        **dispatch_analyzed(server, quick),
        "start_latency": start_latency(server, quick),
        "adoption": adoption(server, quick),
    }


def _m(figure: dict[str, float], digits: int = 1) -> str:
    return f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"


def markdown(r: dict[str, Any]) -> list[str]:
    """The PostgreSQL section of RESULTS.md: dispatch beside SQLite, and the nodes' figures."""
    on_postgres = (
        r.get("dispatch", {}).get("end_to_end", {}).get("dispatch_by_type_100_postgresql_us")
    )
    nodes = r.get("cluster", {})
    analyzed = nodes.get("dispatch_by_type_100_analyzed_us")
    if on_postgres is None and analyzed is None and "start_latency" not in nodes:
        return []
    lines = ["", "## 7. PostgreSQL and several nodes", ""]
    if on_postgres is not None:
        on_sqlite = r["dispatch"]["end_to_end"]["dispatch_by_type_100_us"]
        lines += [
            "`dispatch_by_type` with its commit at 100 instances, 2,000 dispatches onto busy "
            f"instances: SQLite {_m(on_sqlite, 0)} us; PostgreSQL (localhost, psycopg), a "
            f"fresh database {_m(on_postgres, 0)} us"
            + (f", after ANALYZE {_m(analyzed, 0)} us." if analyzed else "."),
        ]
    if "start_latency" in nodes:
        s, a = nodes["start_latency"], nodes["adoption"]
        lines += [
            "",
            "Two `serve` nodes on one PostgreSQL database, node a holding the instance; "
            f"{s['deliveries_per_run']} deliveries per run, one at a time, the `command` "
            "runner without the sandbox.",
            "",
            "| delivery sent to | p50 to agent start (ms) | p99 (ms) |",
            "|---|---|---|",
            *(
                f"| {label} | {_m(s[f'{where}_p50_ms'])} | {_m(s[f'{where}_p99_ms'])} |"
                for where, label in (
                    ("same_node", "the node holding the instance"),
                    ("other_node", "the other node"),
                )
                if f"{where}_p50_ms" in s
            ),
            "",
            f"`kill -9` of the node running a task to the task's agent starting on the other "
            f"node, with `lease_seconds = {a['lease_seconds']:g}`: "
            f"{_m(a['kill_to_start_s'], 2)} s.",
        ]
    return lines
