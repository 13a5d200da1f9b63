"""Statements run on the driver's cursor (`store/prepared.py`) and the kept reader connection,
over SQLite and PostgreSQL: the same errors as through SQLAlchemy, and a connection the server
dropped fails one read, then is replaced."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from claude_hooks.store.intake import insert_delivery
from claude_hooks.store.prepared import Prepared, pipelined
from claude_hooks.store.schema import deliveries
from claude_hooks.store.sql import SqlStore
from tests.test_store_contract import delivery

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
    store = await SqlStore.open(pg_url)
    try:
        assert not await store.intake.has_delivery("d-1")
        backend = BACKEND.scalar(store.kept.connection())
        with store.engine.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
            admin.commit()
        with pytest.raises(sa.exc.DBAPIError):
            await store.intake.has_delivery("d-1")
        # The next read runs on a new connection.
        assert not await store.intake.has_delivery("d-1")
        assert BACKEND.scalar(store.kept.connection()) not in (None, backend)
    finally:
        await store.close()
