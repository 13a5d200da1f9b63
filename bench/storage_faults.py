"""Storage faults: the answer's latency at 200 deliveries/s while PostgreSQL is cut off (each
delivery spooled), and how fast the spool is replayed into the database once it is back.

The service reaches PostgreSQL through a TCP proxy the benchmark cuts (connections dropped,
new ones refused: a restarting server), as tests/cluster/test_storage_faults.py does.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from bench.common import TOKEN, Agents, Service, percentile, stats
from bench.common import runs as bench_runs
from bench.deliveries import issue_assigned
from bench.dispatch import postgres_database, postgres_server
from bench.load import fixed_rate
from bench.tcp_proxy import proxy

LONG_TASK = ["sleep", "3600"]
RATE = 200.0


def _spooled(url: str) -> int:
    with httpx.Client(timeout=2.0, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        answer = client.get(f"{url}/readyz")
        return int(answer.json()["spooled"]) if answer.status_code == 200 else -1


def run(quick: bool) -> dict[str, Any]:
    server = postgres_server()
    if server is None:
        return {"skipped": "no PostgreSQL on 127.0.0.1:5432 or $CLAUDE_HOOKS_BENCH_DATABASE_URL"}
    size = 40 if quick else 1000  # deliveries per run: 5 s at 200/s
    p50, p99, replay_rates, statuses = [], [], [], {}
    number = 10
    with postgres_database(server) as url, proxy(*_host_port(url)) as gate:
        through = make_url(url).set(host="127.0.0.1", port=gate.port)
        env = {"CLAUDE_HOOKS_SERVER__DATABASE_URL": through.render_as_string(hide_password=False)}
        with tempfile.TemporaryDirectory(prefix="bench-storage-faults-") as tmp:
            hooks = Service(Path(tmp), Agents(command=LONG_TASK, instances=2), env)
            hooks.start()
            try:
                for _ in range(bench_runs(quick)):
                    batch = [issue_assigned(number + i) for i in range(size)]
                    number += size
                    gate.cut()
                    result = asyncio.run(
                        fixed_rate("127.0.0.1", hooks.port, "/webhook", batch, RATE)
                    )
                    gate.resume()
                    resumed = time.perf_counter()
                    while _spooled(hooks.url) != 0:
                        time.sleep(0.01)
                    replay_rates.append(size / (time.perf_counter() - resumed))
                    p50.append(percentile(result.seconds, 0.5) * 1000)
                    p99.append(percentile(result.seconds, 0.99) * 1000)
                    for status, count in result.statuses.items():
                        statuses[status] = statuses.get(status, 0) + count
            finally:
                hooks.stop()
    return {
        "spooled_answer_p50_ms": stats(p50),
        "spooled_answer_p99_ms": stats(p99),
        "replay_per_second": stats(replay_rates),
        "statuses": statuses,
        "size": {"deliveries_per_run": size, "rate_per_second": RATE},
    }


def _host_port(url: str) -> tuple[str, int]:
    parsed = make_url(url)
    return parsed.host or "127.0.0.1", parsed.port or 5432
