"""`claude-hooks report` over many recorded tasks: the store's report query and the arithmetic.

Fills a fresh database (SQLite, and PostgreSQL when one answers, outside quick mode) with
100,000 finished tasks (quick: 1,000) in 25,000 sessions of three types over 20
repositories, two models and two prompt variants, with an agent PR for each dev session
(merged, closed or open, review rounds, CI verdicts), then times the report as the CLI makes
it (the query and `summarise`), grouped each way and with a 30-day window. Target: <= 1 s on
each backend.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import stats
from bench.dispatch import postgres_database, postgres_server
from claude_hooks.core.outcome_report import GroupBy, report_json, summarise
from claude_hooks.store.schema import outcome_pulls, outcome_sessions, tasks
from claude_hooks.store.sql import SqlStore

DAY = 86400.0
KINDS = ("work_issue", "address_review", "fix_ci", "answer_mention")
GROUPINGS: tuple[GroupBy | None, ...] = (None, "type", "model", "variant", "repo")


def _rows(count: int, now: float) -> tuple[list[dict[str, Any]], ...]:
    """Tasks, sessions and PRs: four tasks a session, the first one the assignment."""
    rng = random.Random(23)
    sessions, pulls, task_rows = [], [], []
    for n in range(count // 4):
        agent_type = ("dev", "dev", "reviewer", "boss")[n % 4]
        repo = f"acme/repo-{n % 20}"
        key = f"{agent_type}:{repo}:{n}"
        began = now - rng.uniform(0, 60 * DAY)
        sessions.append(
            {
                "session_key": key,
                "type": agent_type,
                "repo": repo,
                "number": n,
                "variant": rng.choice(("terse", "verbose", None)),
                "model": rng.choice(("sonnet", "opus")),
                "first_at": began,
                "assigned_at": began if agent_type == "dev" else None,
                "commands": rng.randint(0, 1),
                "stops": 0,
                "escalations": int(rng.random() < 0.05),
                "human_commits": rng.randint(0, 2),
            }
        )
        if agent_type == "dev":
            fate = rng.random()
            approved = began + 3 * 3600 if fate < 0.8 else None
            pulls.append(
                {
                    "repo": repo,
                    "pr_number": 100_000 + n,
                    "session_key": key,
                    "type": "dev",
                    "opened_at": began + 3600,
                    "first_head": f"{n:040x}",
                    "first_ci": rng.random() < 0.7,
                    "review_rounds": rng.randint(0, 3),
                    "approved_at": approved,
                    "merged_at": began + 4 * 3600 if fate < 0.7 else None,
                    "closed_at": began + 4 * 3600 if 0.7 <= fate < 0.85 else None,
                }
            )
        for i in range(4):
            task_rows.append(
                {
                    "id": f"t{n:09d}{i}",
                    "type": agent_type,
                    "agent": f"{agent_type}-1",
                    "kind": KINDS[i],
                    "session_key": key,
                    "repo": repo,
                    "number": n,
                    "payload": {},
                    "state": "succeeded" if rng.random() < 0.9 else "failed",
                    "seq": n * 4 + i,
                    "enqueued_at": began + i * 600,
                    "started_at": began + i * 600 + 5,
                    "finished_at": began + i * 600 + 300,
                    "cost_usd": round(rng.uniform(0.05, 2.0), 4),
                }
            )
    return task_rows, sessions, pulls


def _fill(engine: sa.Engine, count: int, now: float) -> None:
    task_rows, sessions, pulls = _rows(count, now)
    with engine.begin() as conn:
        for table, rows in (
            (tasks, task_rows),
            (outcome_sessions, sessions),
            (outcome_pulls, pulls),
        ):
            for start in range(0, len(rows), 5000):
                conn.execute(table.insert(), rows[start : start + 5000])
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE"))


async def _measure(url: str, count: int, rounds: int) -> dict[str, Any]:
    store = await SqlStore.open(url)
    try:
        now = time.time()
        _fill(store.engine, count, now)
        figures: dict[str, Any] = {}
        for by in GROUPINGS:
            for window, since in (("all", None), ("30d", now - 30 * DAY)):
                seconds, cpu = [], []
                for _ in range(rounds):
                    started, used = time.perf_counter(), time.process_time()
                    rows = await store.outcomes.report(since, by)
                    report_json(summarise(rows, by), by, since)
                    seconds.append(time.perf_counter() - started)
                    cpu.append(time.process_time() - used)
                figures[f"{by or 'none'}_{window}_s"] = stats(seconds)
                # This process's CPU: SQLite's whole work, whatever else shares the machine
                # (on PostgreSQL the server's work is not in it).
                figures[f"{by or 'none'}_{window}_cpu_s"] = stats(cpu)
        walls = [f["median"] for k, f in figures.items() if not k.endswith("_cpu_s")]
        cpus = [f["median"] for k, f in figures.items() if k.endswith("_cpu_s")]
        figures["worst_s"], figures["worst_cpu_s"] = max(walls), max(cpus)
        return figures
    finally:
        await store.close()


def run(quick: bool) -> dict[str, Any]:
    count = 1_000 if quick else 100_000
    rounds = 1 if quick else 3
    results: dict[str, Any] = {"tasks": count}
    with tempfile.TemporaryDirectory(prefix="bench-outcomes-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'outcomes.db'}"
        results["sqlite"] = asyncio.run(_measure(url, count, rounds))
    server = None if quick else postgres_server()
    if server is not None:
        with postgres_database(server) as pg:
            results["postgresql"] = asyncio.run(_measure(pg, count, rounds))
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(False), indent=2))
