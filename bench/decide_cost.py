"""The Python cost of one delivery's decide-and-apply path: `Intake.receive` in process on a
SQLite file, no HTTP, with the deliveries of `bench.deliveries` (every one a new issue).

Wall-clock rates on a shared machine move with the load; this measures what does not:

    python -m bench.decide_cost                 # CPU time per delivery (process_time)
    python -m bench.decide_cost --callgrind     # instructions per delivery (valgrind)
    python -m bench.decide_cost --profile 20    # cProfile: the calls of a delivery, top 20

`--callgrind` runs this module twice under valgrind (`--count` deliveries after the same
warm-up) and divides the difference of the two totals by the difference of the counts: start-up,
imports and warm-up cancel out, what is left is the steady cost of a delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Agents, free_port, write_config
from bench.deliveries import issue_assigned
from claude_hooks.config import load_config
from claude_hooks.service.runtime import Service

LONG_TASK = ["sleep", "3600"]
WARM_UP = 50


async def _deliver(count: int, warm_up: int, profile: cProfile.Profile | None) -> float:
    """Deliver `warm_up` then `count` new issues' assignments; the CPU seconds the `count` took
    (every one must be queued: a refused or failed delivery would measure something else)."""
    with tempfile.TemporaryDirectory(prefix="claude-hooks-decide-") as folder:
        path = write_config(Path(folder), free_port(), Agents(command=LONG_TASK, instances=2))
        config = load_config(path)
        service = await Service.open(config)
        try:
            seeds = [(seed.name, seed.type) for seed in config.agents]
            await service.store.seed_agents(seeds, time.time())
            # The bus's two readers take a delivery's events as under `serve`; the workers do
            # not run (the tasks stay queued) and neither do the node's loops.
            service.notifier.start()
            service.budget_watch.start()
            deliveries = [issue_assigned(number) for number in range(1, warm_up + count + 1)]
            for delivery in deliveries[:warm_up]:
                await _one(service, delivery.headers, delivery.body)
            if profile is not None:
                profile.enable()
            started = time.process_time()
            for delivery in deliveries[warm_up:]:
                await _one(service, delivery.headers, delivery.body)
            spent = time.process_time() - started
            if profile is not None:
                profile.disable()
            return spent
        finally:
            await service.budget_watch.stop()
            await service.notifier.stop()
            await service.store.close()


async def _one(service: Service, headers: dict[str, str], body: bytes) -> None:
    answer = await service.intake.receive(headers, body, "127.0.0.1")
    if answer.status != 202:
        raise RuntimeError(f"delivery not queued: {answer.status} {answer.body}")
    await asyncio.sleep(0)  # a turn of the loop, as between two requests: the bus is read


def _instructions(count: int) -> int:
    """Instructions of a whole run of this module under callgrind with `count` deliveries."""
    with tempfile.TemporaryDirectory(prefix="claude-hooks-callgrind-") as folder:
        out = Path(folder) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.decide_cost",
                "--count",
                str(count),
                "--quiet",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONMALLOC": "malloc"},
        )
        found = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no summary in {out}")
        return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="deliveries measured")
    parser.add_argument("--callgrind", action="store_true", help="instructions per delivery")
    parser.add_argument("--profile", type=int, metavar="TOP", help="cProfile's top functions")
    parser.add_argument("--quiet", action="store_true", help="print nothing (under callgrind)")
    args = parser.parse_args()
    if args.callgrind:
        few, many = 100, 100 + args.count
        difference = _instructions(many) - _instructions(few)
        print(f"{difference / args.count / 1e6:.3f} M instructions a delivery")
        return
    profile = cProfile.Profile() if args.profile else None
    spent = asyncio.run(_deliver(args.count, WARM_UP, profile))
    if args.quiet:
        return
    print(f"{spent / args.count * 1e6:.0f} us of CPU a delivery ({args.count} after {WARM_UP})")
    if profile is not None:
        stats = pstats.Stats(profile)
        calls = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
        print(f"{calls / args.count:.0f} calls a delivery")
        stats.sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
