"""Migrations: the recorded head is Alembic's head, and a fresh database matches the schema."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from claude_hooks.errors import StoreError
from claude_hooks.store import sql
from claude_hooks.store.schema import metadata
from claude_hooks.store.sql import HEAD_REVISION, SqlStore
from tests import pg


def test_head_revision_is_the_newest_migration() -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(sql.__file__).parent / "migrations"))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_migrated_database_has_every_table_and_index_of_the_schema(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        else:
            url = stack.enter_context(pg.own_database(request.getfixturevalue("pg_server")))
        await _check_schema(url)


async def _check_schema(url: str) -> None:
    store = await SqlStore.open(url)
    await store.close()
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(parsed)
    try:
        inspector = sa.inspect(engine)
        assert set(inspector.get_table_names()) == set(metadata.tables) | {"alembic_version"}
        for table in metadata.tables.values():
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
            indexes = {i["name"] for i in inspector.get_indexes(table.name)}
            assert indexes == {i.name for i in table.indexes}, table.name
    finally:
        engine.dispose()
    # Opening again finds the database at the head and migrates nothing.
    again = await SqlStore.open(url)
    await again.close()


def test_nodes_starting_together_migrate_one_after_another(pg_server: str) -> None:
    """Four stores open one fresh PostgreSQL database at once: the advisory lock lets one
    migrate and the others find it migrated, so none fails."""
    with pg.own_database(pg_server) as url:
        errors: list[BaseException] = []

        def open_and_close() -> None:
            async def run() -> None:
                await (await SqlStore.open(url)).close()

            try:
                asyncio.run(run())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_and_close) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        engine = sa.create_engine(make_url(url).set(drivername="postgresql+psycopg"))
        try:
            with engine.connect() as conn:
                versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        finally:
            engine.dispose()
        assert versions == [(HEAD_REVISION,)]


async def test_an_unsupported_database_url_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="SQLite or PostgreSQL"):
        await SqlStore.open("mysql://localhost/claude_hooks")


async def test_a_missing_postgresql_database_is_a_clear_error(pg_server: str) -> None:
    missing = make_url(pg_server).set(database="claude_hooks_no_such_database")
    with pytest.raises(StoreError, match=r"cannot open or migrate .*does not exist"):
        await SqlStore.open(missing.render_as_string(hide_password=False))


async def test_checkpoints_run_off_the_event_loop_and_close_truncates_the_wal(
    tmp_path: Path,
) -> None:
    store = await SqlStore.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    for number in range(200):
        await store.emit_signal("agents", f"dev-{number}" * 20, 0.0)
    wal = tmp_path / "db.sqlite-wal"
    assert wal.stat().st_size > 0
    await store.close()
    assert not wal.exists() or wal.stat().st_size == 0
