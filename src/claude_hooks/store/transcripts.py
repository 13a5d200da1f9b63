"""Claude Code transcripts in the database: the SDK's own `SessionStore` interface.

The CLI still writes its transcript on the node that runs it; the SDK hands every batch of
new entries to `append` (`ClaudeAgentOptions(session_store=…)`), so the database holds a copy
any node can `load` to resume the conversation. One row per entry, in append order (the
autoincrement id); an entry's `uuid` is stored once per transcript, since the SDK retries a
batch that may have partly landed. The same statements run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from claude_hooks.store.schema import transcript_entries as entries_table

if TYPE_CHECKING:  # the SDK takes about a second to import: only Claude runs need it
    from claude_agent_sdk import (
        SessionKey,
        SessionListSubkeysKey,
        SessionStoreEntry,
        SessionStoreListEntry,
    )

MAIN = ""  # the subpath of a main transcript (subagents' have "subagents/agent-…")


def _where(key: SessionKey) -> list[sa.ColumnElement[bool]]:
    return [
        entries_table.c.project_key == key["project_key"],
        entries_table.c.session_id == key["session_id"],
        entries_table.c.subpath == (key.get("subpath") or MAIN),
    ]


class SqlSessionStore:
    """`SessionStore` over our database (SQLAlchemy Core, the store's sync engine).

    Duck-typed, as the SDK allows, so the store does not import the SDK; it implements
    every method but `list_session_summaries` (the SDK then lists through `load`).
    """

    def __init__(
        self,
        engine: sa.Engine,
        reader: sa.Engine | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.reader = reader or engine
        self.clock = clock

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        mtime = int(self.clock() * 1000)
        subpath = key.get("subpath") or MAIN
        rows: list[dict[str, Any]] = [
            {
                "project_key": key["project_key"],
                "session_id": key["session_id"],
                "subpath": subpath,
                "uuid": uuid if isinstance(uuid := entry.get("uuid"), str) else None,
                "entry": entry,
                "mtime": mtime,
            }
            for entry in entries
        ]
        with self.engine.begin() as conn:
            module = postgresql if conn.dialect.name == "postgresql" else sqlite
            statement = module.insert(entries_table).on_conflict_do_nothing(
                index_elements=["project_key", "session_id", "subpath", "uuid"]
            )
            conn.execute(statement, rows)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        query = sa.select(entries_table.c.entry).where(*_where(key)).order_by(entries_table.c.id)
        with self.reader.connect() as conn:
            found = list(conn.scalars(query))
        return found or None

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        query = (
            sa.select(entries_table.c.session_id, sa.func.max(entries_table.c.mtime))
            .where(entries_table.c.project_key == project_key, entries_table.c.subpath == MAIN)
            .group_by(entries_table.c.session_id)
        )
        with self.reader.connect() as conn:
            rows = conn.execute(query).all()
        return [{"session_id": session_id, "mtime": int(mtime)} for session_id, mtime in rows]

    async def delete(self, key: SessionKey) -> None:
        """A main transcript goes with its subagents' transcripts; a subpath goes alone."""
        clauses = _where(key) if key.get("subpath") else _where(key)[:2]
        with self.engine.begin() as conn:
            conn.execute(entries_table.delete().where(*clauses))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        query = (
            sa.select(entries_table.c.subpath)
            .where(
                entries_table.c.project_key == key["project_key"],
                entries_table.c.session_id == key["session_id"],
                entries_table.c.subpath != MAIN,
            )
            .distinct()
            .order_by(entries_table.c.subpath)
        )
        with self.reader.connect() as conn:
            return list(conn.scalars(query))
