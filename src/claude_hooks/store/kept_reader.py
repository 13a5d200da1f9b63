"""The reader connection that the webhook path's reads share.

Taking a connection from SQLAlchemy's pool and giving it back costs more than one of these reads
(about 25 us on SQLite, where the read itself takes 5-20 us), and a delivery makes five. The
connection is used only by `Prepared` statements, which run to completion on the event loop's
thread and never open a transaction on it: each read sees what was committed before it.
"""

from __future__ import annotations

import sqlalchemy as sa


class KeptReader:
    """One connection of the reader engine, kept open and reopened once it breaks."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._conn: sa.Connection | None = None

    def connection(self) -> sa.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._conn = self.engine.connect()
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
