"""Record a workload through the real pool, with a concurrency group, for `simulate`.

`python -m bench.record_workload OUT.csv [--hours H] [--scale S] [--max-running N]`: issues
arrive for `dev` as `simulate --arrivals poisson:30 --durations lognormal:6m,40m --follow-ups
0.2 --repos 3` draws them, and are dispatched to the service's real pool (SQLite, 12 instances,
`[policy] max_running = {all = N}`, so the claim holds each repository's group) by stand-in
agents that sleep their run time; time runs `S` times faster (60: a minute is a second). The
tasks the database recorded are written to OUT.csv (`arrival,type,session_key,duration`, in
real-life seconds) for `simulate --workload OUT.csv`, and the waits the pool really had are
printed, to compare with what `simulate --max-running N --group-wait head` says of the file.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sqlite3
import sys
import tempfile
from pathlib import Path

from claude_hooks.agents.runners.base import RunContext, RunResult
from claude_hooks.capacity.report import percentile
from claude_hooks.capacity.workload import synthetic
from claude_hooks.config import Config
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter

INSTANCES = 12


class StandIn:
    """An agent that takes its recorded run time, scaled, and succeeds."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    async def run(self, ctx: RunContext) -> RunResult:
        await asyncio.sleep(float(ctx.task.payload["duration"]) / self.scale)
        return RunResult(succeeded=True, exit_code=0)


async def _drained(service: Service) -> None:
    """Return once no task is queued or running."""
    while True:
        active = [
            await service.store.count_tasks(TaskFilter(state=state))
            for state in (TaskState.QUEUED, TaskState.RUNNING)
        ]
        if not any(active):
            return
        await asyncio.sleep(0.5)


async def record(out: Path, hours: float, scale: float, max_running: int) -> None:
    workload = synthetic(["dev"], "poisson:30", "lognormal:6m,40m", hours, 1, 0.2, 3)
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(
            server={
                "data_dir": tmp,
                "webhook_secret": "bench-secret",
                "api_token": "bench-token",
                "poll_interval": 0.05,
            },
            types={"dev": {"runner": "command", "command": ["true"], "workdir": "none"}},
            agents=[{"name": f"dev-{n:02d}", "type": "dev"} for n in range(INSTANCES)],
            policy={"max_running": {"all": max_running}},
        )
        service = await Service.open(config, lambda _type: StandIn(scale))
        await service.start()
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for job in workload.jobs:
                await asyncio.sleep(max(0.0, start + job.arrival / scale - loop.time()))
                _type, repo, number = job.session_key.split(":")
                request = DispatchRequest.for_type(
                    "dev",
                    TaskKind.WORK_ISSUE,
                    repo.replace("synthetic/", "acme/"),
                    int(number),
                    {"duration": job.duration},
                )
                await service.pool.dispatch("dev", request)
            await _drained(service)
        finally:
            await service.stop()
        rows = sqlite3.connect(Path(tmp) / "claude-hooks.db").execute(
            "SELECT session_key, enqueued_at, started_at, finished_at FROM tasks "
            "ORDER BY enqueued_at, id"
        )
        recorded = list(rows)
    first = recorded[0][1]
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arrival", "type", "session_key", "duration"])
        for key, enqueued, started, finished in recorded:
            arrival = round((enqueued - first) * scale, 1)
            writer.writerow([arrival, "dev", key, round((finished - started) * scale, 1)])
    waits = sorted((started - enqueued) * scale / 60 for _key, enqueued, started, _f in recorded)
    print(
        f"{len(recorded)} tasks recorded into {out}; the pool's waits (scaled back): "
        f"p90 {percentile(waits, 90):.0f} min, p99 {percentile(waits, 99):.0f} min, "
        f"max {waits[-1]:.0f} min"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--scale", type=float, default=60.0)
    parser.add_argument("--max-running", type=int, default=4)
    args = parser.parse_args(argv)
    asyncio.run(record(args.out, args.hours, args.scale, args.max_running))
    return 0


if __name__ == "__main__":
    sys.exit(main())
