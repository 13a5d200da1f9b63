"""A node's ear on PostgreSQL: LISTEN on the wake-up channel, on a connection of its own.

SQLAlchemy's pooled connections cannot wait for notifications, so the listener holds one
psycopg 3 async connection outside the pool. When it drops (server restart, network), the
listener connects again with a growing pause, and `on_connect` runs after each LISTEN: the
service then looks once at the signals and wakes every worker, so nothing sent while it was
deaf is missed. A silent connection is checked every `HEALTH_SECONDS` with a round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

from claude_hooks.service.loop import Loop
from claude_hooks.store.wakeups import CHANNEL, Wake, parse

log = logging.getLogger(__name__)

RETRY_FIRST = 0.1  # seconds before the first reconnect; doubled after each failure
RETRY_MOST = 5.0
HEALTH_SECONDS = 10.0


def listen_url(database_url: str) -> str | None:
    """The libpq URL of a PostgreSQL database_url; None for SQLite (it has no NOTIFY)."""
    parsed = make_url(database_url)
    if parsed.get_backend_name() != "postgresql":
        return None
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener(Loop):
    """Hands every wake-up to `on_wake`; calls `on_connect` after each (re)connection."""

    def __init__(
        self, url: str, on_wake: Callable[[Wake], None], on_connect: Callable[[], None]
    ) -> None:
        super().__init__("listen", RETRY_MOST, first=0.0)
        self.url = url
        self.on_wake = on_wake
        self.on_connect = on_connect
        self.connected = asyncio.Event()
        self.backend_pid: int | None = None  # the server process of the connection, if any
        self._pause = RETRY_FIRST

    async def run_once(self) -> float:
        """Listen until the connection fails; the pause before connecting again."""
        try:
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                self.backend_pid = conn.info.backend_pid
                self.connected.set()
                self._pause = RETRY_FIRST
                self.on_connect()
                await self._hear(conn)
        except psycopg.Error as exc:
            log.warning(
                "the wake-up connection to PostgreSQL failed (%s): connecting again in %g s",
                str(exc).strip() or exc.__class__.__name__,
                self._pause,
            )
        finally:
            self.connected.clear()
            self.backend_pid = None
        pause, self._pause = self._pause, min(self._pause * 2, RETRY_MOST)
        return pause

    async def _hear(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        while True:
            async for note in conn.notifies(timeout=HEALTH_SECONDS):
                wake = parse(note.payload)
                if wake is None:
                    continue
                try:
                    self.on_wake(wake)
                except Exception:
                    log.exception("acting on the wake-up %r failed", note.payload)
            await conn.execute("SELECT 1")  # a connection that died silently fails here
