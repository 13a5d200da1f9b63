"""INSERT ... ON CONFLICT DO UPDATE, which SQLite and PostgreSQL spell the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite


def upsert(
    conn: sa.Connection,
    table: sa.Table,
    values: Mapping[str, Any],
    update: Mapping[str, Any] | None = None,
    returning: sa.Column[Any] | None = None,
) -> Any:
    """Insert `values`, or on a primary-key clash set `update` (default: the non-key values);
    the `returning` column's value afterwards when one is asked for."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = module.insert(table).values(**values)
    keys = [column.name for column in table.primary_key.columns]
    if update is None:
        update = {name: statement.excluded[name] for name in values if name not in keys}
    statement = statement.on_conflict_do_update(index_elements=keys, set_=dict(update))
    if returning is None:
        conn.execute(statement)
        return None
    return conn.execute(statement.returning(returning)).scalar_one()
