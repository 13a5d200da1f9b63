"""4. Restart: with 100,000 queued tasks in the database, the time from starting the service to
/healthz answering and to the first new delivery being accepted."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Agents, Service, runs, stats
from bench.deliveries import issue_assigned
from bench.load import fixed_rate

LONG_TASK = ["sleep", "3600"]


def _fill(service: Service, count: int) -> None:
    """Queue `count` tasks on the two instances, as dispatch_by_type would have."""
    now = time.time()
    rows = []
    for n in range(count):
        agent = f"dev-{n % 2:03d}"
        rows.append(
            (
                f"bench{n:011d}",
                "dev",
                agent,
                "work_issue",
                f"dev:acme/widget:{1_000_000 + n}",
                "acme/widget",
                1_000_000 + n,
                json.dumps({"title": f"Issue {n}", "body": "x" * 200}),
                "queued",
                n + 10,
                0,
                now,
            )
        )
    with service.database() as db:
        db.executemany(
            "INSERT INTO tasks (id, type, agent, kind, session_key, repo, number, payload, "
            "state, seq, attempts, enqueued_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )


def _first_delivery(port: int, number: int) -> float:
    started = time.perf_counter()
    result = asyncio.run(
        fixed_rate("127.0.0.1", port, "/webhook", [issue_assigned(number)], 1000, 1)
    )
    assert set(result.statuses) == {202}, result.statuses
    return time.perf_counter() - started


def run(quick: bool) -> dict[str, Any]:
    count = 2_000 if quick else 100_000
    healthy, accepted = [], []
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        running = Service(Path(tmp), Agents(command=LONG_TASK, instances=2))
        running.start()
        running.stop()
        _fill(running, count)
        for run_index in range(runs(quick)):
            started = time.perf_counter()
            running.start()
            healthy.append(time.perf_counter() - started)
            accepted.append(
                time.perf_counter() - started + _first_delivery(running.port, 10 + run_index)
            )
            running.stop()
        with running.database() as db:
            queued = db.execute("SELECT count(*) FROM tasks WHERE state = 'queued'").fetchone()[0]
    return {
        "queued_tasks": count,
        "queued_after": queued,
        "to_healthz_s": stats(healthy),
        "to_first_delivery_s": stats(accepted),
    }
