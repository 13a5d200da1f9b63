"""The reader connection that the webhook path's reads share.

Taking a connection from SQLAlchemy's pool and giving it back costs more than one of these reads
(about 25 us on SQLite, where the read itself takes 5-20 us), and a delivery makes five. The
connection is used only by `Prepared` statements, which run to completion on their thread
and never open a transaction on it: each read sees what was committed before it.
"""

from __future__ import annotations

import contextlib
import threading

import sqlalchemy as sa


class KeptReader:
    """One connection of the reader engine per thread (the event loop's, or each of the threads
    PostgreSQL's calls run on: see `offload`), kept open and reopened once it breaks."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._local = threading.local()
        self._all: list[sa.Connection] = []
        self._lock = threading.Lock()

    def connection(self) -> sa.Connection:
        conn: sa.Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._local.conn = self.engine.connect()
            with self._lock:
                self._all = [c for c in self._all if not c.closed] + [conn]
        return conn

    def close(self) -> None:
        with self._lock:
            kept, self._all = self._all, []
        for conn in kept:
            # A connection of a thread still in a hung call is the pool's to drop.
            with contextlib.suppress(Exception):
                conn.close()
