"""PostgreSQL: the deliveries a crowded node defers, written from the event loop itself.

A deferral is one short statement (`pending.DEFER_ALL_SQL`) whose rows arrive many at a time.
Sent from a thread (`group_commit`), each delivery crossed to the thread and back, and the
thread's Python took the interpreter's lock from the loop that answers the requests: under a
burst that hand-off, not the database, bounded how fast deliveries were answered
(bench/history.md). Here the deferrals waiting at once go as one statement on an async
connection of this writer's own, in autocommit (one round trip); the next ones gather while
it runs. Every wait is bounded: the connection's own timeouts, and `bound` around each
statement, after which the connection is dropped and made again for the next deferrals.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from claude_hooks.store.group_commit import MOST
from claude_hooks.store.intake import DeliveryRecord, delivery_arrays
from claude_hooks.store.pending import DEFER_ALL_SQL, deferred, first_of_each

if TYPE_CHECKING:  # psycopg is imported where PostgreSQL is used: ~9 MB a SQLite node keeps
    import psycopg

# psycopg's placeholders, binary: each array's elements go as they are.
_SQL = re.sub(r":(\w+)", r"%(\1)b", DEFER_ALL_SQL)

_Waiting = list[tuple[DeliveryRecord, "asyncio.Future[bool]"]]
# Statements in flight at once, each on its connection: while one waits for the server, the
# deferrals gathered meanwhile go on the other.
WRITERS = 2


def _fault(exc: Exception) -> Exception:
    """A driver's error as SQLAlchemy's (a storage fault: see `faults`), others as they are."""
    import psycopg

    if isinstance(exc, psycopg.Error):
        return sa.exc.DBAPIError.instance(_SQL, None, exc, psycopg.Error)
    return exc


class LoopDeferrals:
    """One event loop's deferral writer: `defer` answers once its record is committed."""

    def __init__(self, conninfo: str, connect_args: dict[str, Any], bound: float) -> None:
        self._conninfo = conninfo
        self._connect_args = connect_args
        self._bound = bound
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: _Waiting = []
        self._writers: set[asyncio.Task[None]] = set()
        self._idle: list[psycopg.AsyncConnection[Any]] = []  # connections no writer uses

    async def defer(self, record: DeliveryRecord) -> bool:
        """Record `record` as pending with whatever else waits; False if its id was seen."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a store used from another loop than before (tests)
            self._loop, self._waiting, self._writers, self._idle = loop, [], set(), []
        future: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((record, future))
        if len(self._writers) < WRITERS:
            writer = loop.create_task(self._write(), name="deferrals")
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        return await future

    async def _write(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MOST], self._waiting[MOST:]
                batch = [(r, f) for r, f in batch if not f.done()]  # a caller gave up
                if batch:
                    conn = await self._commit(batch, conn)
        finally:
            if conn is not None:
                self._idle.append(conn)

    async def _commit(
        self, batch: _Waiting, conn: psycopg.AsyncConnection[Any] | None
    ) -> psycopg.AsyncConnection[Any] | None:
        """Write `batch`; the connection to write the next one on (None: make one)."""
        records = [record for record, _ in batch]
        try:
            async with asyncio.timeout(self._bound):
                if conn is None:
                    conn = self._idle.pop() if self._idle else await self._connect()
                params = delivery_arrays(first_of_each(records))
                cursor = await conn.execute(_SQL, params)
                inserted = {row[0] for row in await cursor.fetchall()}
        except Exception as exc:
            await _close(conn)
            error = _fault(exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return None
        for (_, future), new in zip(batch, deferred(records, inserted), strict=True):
            if not future.done():
                future.set_result(new)
        return conn

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        import psycopg

        return await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, **self._connect_args
        )

    async def close(self) -> None:
        """Stop writing (deferrals still waiting fail) and close the connections."""
        if self._loop is not asyncio.get_running_loop():
            return  # the loop they belong to is gone, and they with it
        for writer in list(self._writers):
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        for _, future in self._waiting:
            if not future.done():
                future.cancel()
        self._waiting = []
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close(conn)


async def _close(conn: psycopg.AsyncConnection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()
