"""Migrations: the recorded head is Alembic's head, and a fresh database matches the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from claude_hooks.errors import StoreError
from claude_hooks.store import sql
from claude_hooks.store.schema import metadata
from claude_hooks.store.sql import HEAD_REVISION, SqlStore


def test_head_revision_is_the_newest_migration() -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(sql.__file__).parent / "migrations"))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


async def test_migrated_database_has_every_table_and_index_of_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = await SqlStore.open(url)
    await store.close()
    engine = sa.create_engine(url)
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


async def test_an_unsupported_database_url_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="SQLite only"):
        await SqlStore.open("postgresql://localhost/claude_hooks")


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
