"""Statements run on the driver's cursor (`store/prepared.py`) and the kept reader connection,
over SQLite and PostgreSQL: the same errors as through SQLAlchemy, and a connection the server
dropped fails one read, then is replaced."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from claude_hooks.store.intake import DeliveryRecord, insert_delivery
from claude_hooks.store.prepared import Prepared, pipelined
from claude_hooks.store.schema import deliveries
from claude_hooks.store.sql import SqlStore

COUNT = Prepared(sa.select(sa.func.count()).select_from(deliveries))
BACKEND = Prepared(sa.select(sa.func.pg_backend_pid()))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(database_url)
    yield opened
    await opened.close()


def record(delivery_id: str) -> DeliveryRecord:
    return DeliveryRecord(
        id=delivery_id,
        flavor="forgejo",
        event="issues",
        event_type="issue_assign",
        received_at=1.0,
        body='{"action": "assigned"}',
        task_ids=["t1", "t2"],
    )


async def test_a_duplicate_row_fails_as_an_integrity_error_and_leaves_nothing(
    store: SqlStore,
) -> None:
    with store.engine.begin() as conn, pipelined(conn):
        insert_delivery(conn, record("d-1"), None)

    def twice() -> None:
        with store.engine.begin() as conn, pipelined(conn):
            insert_delivery(conn, record("d-2"), None)
            insert_delivery(conn, record("d-1"), None)

    with pytest.raises(sa.exc.IntegrityError):
        twice()
    with store.engine.connect() as conn:
        assert COUNT.scalar(conn) == 1
    stored = await store.intake.get_delivery("d-1")
    # Bind processing as through SQLAlchemy: the JSON list comes back as a list.
    assert stored is not None and stored.task_ids == ["t1", "t2"]


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
