"""Statements run on the driver's cursor (`store/prepared.py`) and the kept reader connection,
over SQLite and PostgreSQL: the same errors as through SQLAlchemy, and a connection the server
dropped fails one read, then is replaced."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from claude_hooks.errors import StoreError
from claude_hooks.store.intake import insert_delivery
from claude_hooks.store.prepared import Prepared, pipelined
from claude_hooks.store.schema import deliveries
from claude_hooks.store.sql import SqlStore
from tests.store.test_store_contract import delivery

COUNT = Prepared(sa.select(sa.func.count()).select_from(deliveries))
BACKEND = Prepared(sa.select(sa.func.pg_backend_pid()))


def insert_deliveries(store: SqlStore, ids: list[str]) -> None:
    """The deliveries `ids` in one pipelined transaction."""
    with store.engine.begin() as conn, pipelined(conn):
        for delivery_id in ids:
            insert_delivery(conn, delivery(delivery_id, 1.0), None)


async def test_a_duplicate_row_fails_as_an_integrity_error_and_leaves_nothing(
    database_url: str,
) -> None:
    store = await SqlStore.open(database_url)
    try:
        insert_deliveries(store, ["d-1"])
        with pytest.raises(sa.exc.IntegrityError):
            insert_deliveries(store, ["d-2", "d-1"])
        with store.engine.connect() as conn:
            assert COUNT.scalar(conn) == 1
        stored = await store.intake.get_delivery("d-1")
        # Bind processing as through SQLAlchemy: the JSON list comes back as a list.
        assert stored is not None and stored.task_ids == ["t1"]
    finally:
        await store.close()


async def test_the_kept_reader_is_replaced_after_the_server_drops_it(pg_url: str) -> None:
    opened = await SqlStore.open(pg_url)
    # On PostgreSQL each of the offloading threads keeps its own reader: drive the SQL store
    # itself, on this thread, so the read uses the connection whose backend is dropped.
    store: SqlStore = getattr(opened, "_target", opened)
    try:
        assert not await store.intake.has_delivery("d-1")
        backend = BACKEND.scalar(store.kept.connection())
        with store.engine.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
            admin.commit()
            # pg_terminate_backend only asks: wait until the backend is gone.
            gone = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
            deadline = time.monotonic() + 5
            while admin.execute(gone, {"pid": backend}).scalar() and time.monotonic() < deadline:
                admin.commit()
                await asyncio.sleep(0.01)
        with pytest.raises(sa.exc.DBAPIError):
            await store.intake.has_delivery("d-1")
        # The next read runs on a new connection.
        assert not await store.intake.has_delivery("d-1")
        assert BACKEND.scalar(store.kept.connection()) not in (None, backend)
    finally:
        await opened.close()


async def test_a_parameter_used_twice_is_bound_as_execute_binds_it(database_url: str) -> None:
    twice = sa.select(
        sa.cast(sa.bindparam("p", type_=sa.JSON), sa.Text),
        sa.cast(sa.bindparam("p", type_=sa.JSON), sa.Text),
    )
    store = await SqlStore.open(database_url)
    try:
        with store.engine.connect() as conn:
            expected = tuple(conn.execute(twice, {"p": {"a": [1, 2]}}).one())
            assert tuple(Prepared(twice).run(conn, {"p": {"a": [1, 2]}}).fetchone()) == expected
    finally:
        await store.close()


async def test_a_restarted_server_costs_one_failed_write_not_one_per_pooled_connection(
    pg_url: str,
) -> None:
    store = await SqlStore.open(pg_url)
    try:
        held = [store.engine.connect() for _ in range(4)]  # four connections in the pool
        for conn in held:
            BACKEND.scalar(conn)
            conn.close()
        with store.reader.connect() as admin:
            admin.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        outcomes = []
        for number in range(5):
            try:
                insert_deliveries(store, [f"after-{number}"])
                outcomes.append("ok")
            except sa.exc.DBAPIError:
                outcomes.append("failed")
        assert outcomes.count("failed") <= 1 and outcomes[-4:] == ["ok"] * 4, outcomes
    finally:
        await store.close()


def test_a_locked_sqlite_database_fails_as_a_store_error(tmp_path: Path) -> None:
    """SQLite's BEGIN IMMEDIATE is sent by the driver; "database is locked" still comes out as
    SQLAlchemy's error, which `SqlStore.open` turns into a line naming the database."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    asyncio.run(_open_and_close(url))
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="database is locked"):
            asyncio.run(_open_and_close(url))
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def _open_and_close(url: str) -> None:
    await (await SqlStore.open(url)).close()
