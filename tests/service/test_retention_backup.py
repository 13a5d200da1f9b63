"""Retention prunes finished tasks' logs and old deliveries' bodies (rows stay, marked), on a
schedule; `claude-hooks backup` copies the database consistently while the service runs."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from claude_hooks.config import Config
from claude_hooks.core.domain import Task, TaskKind, TaskState
from claude_hooks.service.retention import DAY, Retention
from claude_hooks.service.runtime import Service
from claude_hooks.service.views import delivery_view, history_view
from claude_hooks.store.base import Outcome
from claude_hooks.store.intake import DeliveryRecord
from claude_hooks.store.rejections import Rejection
from claude_hooks.store.sql import SqlStore
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory
from tests.support import make_config, run_cli, wait_until

NOW = time.time()
OLD = NOW - 91 * DAY


async def finished_task(store: SqlStore, config: Config, task_id: str, at: float) -> Path:
    task = Task(
        id=task_id,
        type="dev",
        agent="dev-alpha",
        kind=TaskKind.WORK_ISSUE,
        session_key=f"dev:acme/widget:{task_id}",
        repo="acme/widget",
        number=1,
        state=TaskState.QUEUED,
        seq=0,
        enqueued_at=at,
    )
    if await store.get_agent("dev-alpha") is None:
        await store.add_agent("dev-alpha", "dev", at)
    await store.dispatch(task)
    claim = await store.claim_next("dev-alpha", at)
    assert claim.task is not None and claim.task.id == task_id
    await store.finish_task(task_id, Outcome(TaskState.SUCCEEDED, result="done"), at)
    log = config.data_dir / "logs" / f"{task_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("a long log\n" * 100)
    return log


def delivery(delivery_id: str, at: float, outcome: str = "ignored") -> DeliveryRecord:
    return DeliveryRecord(
        id=delivery_id,
        flavor="forgejo",
        event="push",
        event_type="push",
        received_at=at,
        body='{"ref": "refs/heads/main"}',
        outcome=outcome,
    )


async def test_prune_empties_old_logs_and_bodies_and_keeps_the_rows(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = await SqlStore.open(config.database_url)
    try:
        old_log = await finished_task(store, config, "old0000000000000", OLD)
        new_log = await finished_task(store, config, "new0000000000000", NOW - DAY)
        await store.intake.add_delivery(delivery("d-old", OLD))
        await store.intake.add_delivery(delivery("d-new", NOW))
        await store.pending.add_pending(delivery("d-pending", OLD, "pending"), NOW)
        await store.rejections.add_rejection(Rejection(OLD, 401, "old", 10))
        await store.rejections.add_rejection(Rejection(NOW, 401, "new", 10))

        retention = Retention(
            config, store, lambda i: config.data_dir / "logs" / f"{i}.log", lambda: NOW
        )
        pruned = await retention.prune()
        assert (pruned.logs, pruned.deliveries, pruned.rejections) == (1, 1, 1)

        assert not old_log.exists() and new_log.exists()
        assert await store.get_task("old0000000000000") is not None
        assert (await store.notes.get_note("old0000000000000")).log_pruned_at == NOW
        assert (await store.notes.get_note("new0000000000000")).log_pruned_at is None
        old = await store.intake.get_delivery("d-old")
        assert old is not None and old.body == "" and delivery_view(old)["pruned"] is True
        kept = await store.intake.get_delivery("d-new")
        assert kept is not None and kept.body and kept.pruned_at is None
        waiting = await store.intake.get_delivery("d-pending")
        assert waiting is not None and waiting.body, "a pending delivery still needs its body"
        assert [r.reason for r in await store.rejections.list_rejections(10, 0)] == ["new"]

        again = await retention.prune()
        assert (again.logs, again.deliveries, again.rejections) == (0, 0, 0)
    finally:
        await store.close()


async def test_the_service_prunes_on_a_schedule(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    config = make_config(tmp_path, server={"retention_days": 90, "retention_interval": 0.1})
    store = await SqlStore.open(config.database_url)
    old_log = await finished_task(store, config, "old0000000000000", OLD)
    await store.close()
    service: Service = await start_service(config)
    await wait_until(lambda: not old_log.exists())
    for _ in range(500):  # the mark follows the unlink in the same sweep
        if (await service.store.notes.get_note("old0000000000000")).log_pruned_at is not None:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the pruned log was never marked")
    task = await service.store.get_task("old0000000000000")
    assert task is not None and task.state is TaskState.SUCCEEDED
    assert (await history_view(service.store, task))["log_pruned"] is True
    # The API (what the dashboard shows) and `tasks log` say the same: pruned, and when.
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)),
        base_url="http://test",
        headers={"Authorization": "Bearer test-token"},
    )
    async with client:
        shown = (await client.get("/api/tasks/old0000000000000/log")).text
    assert shown.startswith("the log of task old0000000000000 was pruned on ")
    assert shown.endswith(" UTC (server.retention_days)\n")
    cli = await asyncio.to_thread(run_cli, "tasks", "log", "old0000000000000", config=config)
    assert (cli.returncode, cli.stdout) == (1, "")
    assert cli.stderr == f"error: {shown}"


async def test_backup_while_the_service_runs_and_never_overwrites(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    service: Service = await start_service(config)
    for number in range(20):
        await service.store.intake.add_delivery(delivery(f"d-{number}", NOW))
    target = tmp_path / "copy.db"
    made = run_cli("backup", str(target), config=config)
    assert made.returncode == 0, made.stderr
    assert "backed up" in made.stdout
    copy = sqlite3.connect(target)
    try:
        assert copy.execute("SELECT count(*) FROM deliveries").fetchone() == (20,)
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        copy.close()

    size = target.stat().st_size
    again = run_cli("backup", str(target), config=config)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert target.stat().st_size == size


def test_backup_of_postgresql_points_at_pg_dump(tmp_path: Path) -> None:
    path = tmp_path / "pg.toml"
    url = "postgresql://hooks:secret@127.0.0.1:5432/hooks"
    path.write_text(f"[server]\ndata_dir = {json.dumps(str(tmp_path))}\ndatabase_url = '{url}'\n")
    argv = [
        sys.executable,
        "-m",
        "claude_hooks",
        "backup",
        str(tmp_path / "x"),
        "--config",
        str(path),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "pg_dump" in message and "secret" not in message
    assert not (tmp_path / "x").exists()
