"""The delivery spool in process, on SQLite: a database locked past the bound spools
deliveries (202 "spooled"), a full spool answers 503 with the reason, the spool is replayed in
arrival order once the lock goes; a torn last record is skipped with a log line, the rest
replayed at start; `deliveries list --outcome spooled` and `spool replay PATH` from the CLI.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from claude_hooks.config import Config
from claude_hooks.service.spool import FILE_NAME, encode
from claude_hooks.store.base import TaskFilter
from claude_hooks.store.intake import DeliveryRecord
from claude_hooks.store.sql import SqlStore
from tests.conftest import ServiceFactory
from tests.support import GateRunner, fixture, forgejo_headers, make_config, run_cli, wait_until


def _config(tmp_path: Path, **server: object) -> Config:
    return make_config(
        tmp_path,
        agents=[{"name": "dev-alpha", "type": "dev"}],
        security={"allowed_senders": ["alice"]},
        server=server,
    )


def _delivery(number: int, padding: int = 0) -> tuple[bytes, dict[str, str]]:
    data = json.loads(fixture("issues_assigned_dev")[0])
    data["number"] = data["issue"]["number"] = number
    data["issue"]["body"] = "x" * padding
    body = json.dumps(data).encode()
    return body, forgejo_headers("issue_assign", body, f"delivery-{number}")


def _record(number: int) -> DeliveryRecord:
    body, _headers = _delivery(number)
    return DeliveryRecord(
        id=f"delivery-{number}",
        flavor="forgejo",
        event="issues",
        event_type="issue_assign",
        received_at=time.time(),
        body=body.decode(),
    )


async def test_a_locked_database_spools_and_a_full_spool_answers_503_then_all_replay_in_order(
    start_service: ServiceFactory, gate: GateRunner, tmp_path: Path
) -> None:
    config = _config(
        tmp_path, database_lock_timeout=0.2, spool_max_bytes=1024 * 1024, answer_deadline=1.0
    )
    service = await start_service(config, runner=gate)
    assert config.sqlite_file is not None
    holder = sqlite3.connect(config.sqlite_file, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another session holds the write lock
    answers, took = [], []
    try:
        for number in range(1, 6):
            started = time.monotonic()
            body, headers = _delivery(number, padding=300_000)
            answers.append(await service.intake.receive(headers, body))
            took.append(time.monotonic() - started)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert max(took) < config.server.answer_deadline
    assert [a.status for a in answers] == [202, 202, 202, 503, 503]
    assert answers[0].body["status"] == "spooled"
    assert answers[0].body["reason"] == "database: database is locked"
    assert answers[1].body["reason"] == "earlier deliveries wait in the spool"
    assert "the delivery spool is full" in answers[3].body["error"]
    assert answers[3].retry_after is not None
    await wait_until(lambda: not service.intake.spool.waiting, 10)
    tasks = await service.store.list_tasks(TaskFilter(), 10, 0)
    in_order = [t.delivery_id for t in sorted(tasks, key=lambda t: t.seq)]
    assert in_order == ["delivery-1", "delivery-2", "delivery-3"]
    assert (config.data_dir / FILE_NAME).stat().st_size == 0


async def test_a_torn_last_record_is_skipped_with_a_log_line_and_the_rest_replayed(
    start_service: ServiceFactory,
    gate: GateRunner,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = _config(tmp_path)
    whole = [encode(_record(n), "database: no answer") for n in (1, 2, 3)]
    config.data_dir.mkdir(parents=True)
    (config.data_dir / FILE_NAME).write_bytes(whole[0] + whole[1] + whole[2][:-9])
    service = await start_service(config, runner=gate)
    # Replayed at start, before the service takes anything new.
    assert await service.store.intake.has_delivery("delivery-1")
    assert await service.store.intake.has_delivery("delivery-2")
    assert not await service.store.intake.has_delivery("delivery-3")
    assert "it is cut short" in caplog.text
    assert not service.intake.spool.waiting


def test_the_cli_lists_a_spool_and_loads_it_from_any_host(tmp_path: Path) -> None:
    config = _config(tmp_path)
    elsewhere = tmp_path / "from-another-host.spool"
    elsewhere.write_bytes(b"".join(encode(_record(n), "database: no answer") for n in (1, 2)))
    config.data_dir.mkdir(parents=True)
    (config.data_dir / FILE_NAME).write_bytes(elsewhere.read_bytes())
    listed = run_cli("deliveries", "list", "--outcome", "spooled", "--json", config=config)
    assert listed.returncode == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == ["delivery-2", "delivery-1"]

    async def made() -> None:
        await (await SqlStore.open(config.database_url)).close()

    asyncio.run(made())
    loaded = run_cli("spool", "replay", str(elsewhere), config=config)
    assert loaded.returncode == 0, loaded.stderr
    assert "2 of 2 spooled deliveries loaded as pending" in loaded.stdout
    again = run_cli("spool", "replay", str(elsewhere), config=config)
    assert "0 of 2 spooled deliveries loaded" in again.stdout
    missing = run_cli("spool", "replay", str(tmp_path / "nothing"), config=config)
    assert missing.returncode == 1
    assert "no spool at" in missing.stderr


async def test_nodes_list_tells_a_node_with_unreplayed_deliveries(
    start_service: ServiceFactory, gate: GateRunner, tmp_path: Path
) -> None:
    service = await start_service(_config(tmp_path), runner=gate)
    # Three deliveries wait in the spool (for a database locked for writes but not reads,
    # say): the heartbeat tells, and every later one too.
    service.node.spooled = lambda: 3
    await service.node.beat()
    listed = await asyncio.to_thread(run_cli, "nodes", "list", "--json", config=service.config)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["spooled"] == 3
    table = await asyncio.to_thread(run_cli, "nodes", "list", config=service.config)
    assert "3 not replayed" in table.stdout
