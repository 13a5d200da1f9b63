"""3. Delivery -> agent start: with an idle instance and the command runner, from the moment a
delivery is sent until the agent process runs in its sandbox (it writes its own clock on start,
into its workdir: the only place it can write)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common import Agents, percentile, runs, service, stats
from bench.deliveries import issue_assigned
from bench.load import fixed_rate

STAMP = 'echo "$EPOCHREALTIME" > stamp'


def _one_run(count: int, first: int, workdirs: Path, port: int) -> list[float]:
    latencies = []
    for number in range(first, first + count):
        delivery = issue_assigned(number)
        sent = time.time()
        result = asyncio.run(
            fixed_rate("127.0.0.1", port, "/webhook", [delivery], 1000, 1, keep_bodies=True)
        )
        assert set(result.statuses) == {202}, result.statuses
        key = result.bodies[0].split(b'"session_key":"')[1].split(b'"')[0].decode()
        stamp = workdirs / key.replace(":", "/") / "stamp"
        deadline = time.perf_counter() + 10
        while not stamp.exists() or not stamp.read_text().strip():
            assert time.perf_counter() < deadline, "the agent never started"
            time.sleep(0.0005)
        latencies.append((float(stamp.read_text()) - sent) * 1000)
    return latencies


def run(quick: bool) -> dict[str, Any]:
    count = 20 if quick else 200
    agents = Agents(command=["bash", "-c", STAMP], instances=1)
    p50, p99, everything = [], [], []
    with service(agents) as hooks:
        workdirs = hooks.folder / "data" / "workdirs"
        for run_index in range(runs(quick)):
            values = _one_run(count, 1 + run_index * count, workdirs, hooks.port)
            p50.append(percentile(values, 0.5))
            p99.append(percentile(values, 0.99))
            everything.extend(values)
    return {
        "p50_ms": stats(p50),
        "p99_ms": stats(p99),
        "max_ms": max(everything),
        "deliveries_per_run": count,
    }
