"""3. Delivery -> agent start: with an idle instance and the command runner, from the moment a
delivery is sent until the agent process runs (it writes its own clock on start)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Agents, percentile, runs, service, stats
from bench.deliveries import issue_assigned
from bench.load import fixed_rate

STAMP = 'echo "$EPOCHREALTIME" > "$STAMPS/$CLAUDE_HOOKS_TASK_ID"'


def _one_run(count: int, first: int, stamps: Path, port: int) -> list[float]:
    latencies = []
    for number in range(first, first + count):
        delivery = issue_assigned(number)
        sent = time.time()
        result = asyncio.run(
            fixed_rate("127.0.0.1", port, "/webhook", [delivery], 1000, 1, keep_bodies=True)
        )
        assert set(result.statuses) == {202}, result.statuses
        task_id = result.bodies[0].split(b'"id":"')[1].split(b'"')[0].decode()
        stamp = stamps / task_id
        deadline = time.perf_counter() + 10
        while not stamp.exists() or not stamp.read_text().strip():
            assert time.perf_counter() < deadline, "the agent never started"
            time.sleep(0.0005)
        latencies.append((float(stamp.read_text()) - sent) * 1000)
    return latencies


def run(quick: bool) -> dict[str, Any]:
    count = 20 if quick else 200
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        stamps = Path(tmp)
        agents = Agents(command=["bash", "-c", STAMP], instances=1, env={"STAMPS": str(stamps)})
        p50, p99, everything = [], [], []
        with service(agents) as hooks:
            for run_index in range(runs(quick)):
                values = _one_run(count, 1 + run_index * count, stamps, hooks.port)
                p50.append(percentile(values, 0.5))
                p99.append(percentile(values, 0.99))
                everything.extend(values)
    return {
        "p50_ms": stats(p50),
        "p99_ms": stats(p99),
        "max_ms": max(everything),
        "deliveries_per_run": count,
    }
