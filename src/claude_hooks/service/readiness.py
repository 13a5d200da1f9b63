"""Whether this node can do its work now: the database answers (readiness, `/readyz`).

A probe asks the database for one round trip every second, each bounded, on the store's
path (its own thread on PostgreSQL: see `store.offload`), so a hung database makes this node
unready within seconds while liveness (`/healthz`) keeps answering. When the database answers
again, the spool's deliveries are replayed (`replay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from claude_hooks.service.loop import Loop
from claude_hooks.store.base import Store
from claude_hooks.store.faults import fault_reason

log = logging.getLogger(__name__)

PROBE_EVERY = 1.0
# The database is unready once its last answer is older than this.
STALE_AFTER = 2.5


class Readiness(Loop):
    def __init__(
        self,
        store: Store,
        replay: Callable[[], Awaitable[None]],
        bound: float,
    ) -> None:
        super().__init__("readiness", PROBE_EVERY, first=0.0)
        self.store = store
        self.replay = replay
        self.bound = bound
        self._answered = time.monotonic()
        self._error: str | None = None
        self._asked: float | None = None  # when the probe under way was sent
        self._replaying: asyncio.Task[None] | None = None

    def database_problem(self) -> str | None:
        """Why the database is not ready, in one line; None while it answers. Counted from a
        probe that failed or waits, not from the last answer alone: an event loop busy for a
        while (SQLite runs on it) does not make the database unready."""
        now = time.monotonic()
        silent = now - self._answered
        waiting = self._asked is not None and now - self._asked >= STALE_AFTER
        if waiting or (self._error is not None and silent >= STALE_AFTER):
            detail = f" ({self._error})" if self._error not in (None, "timed out") else ""
            return f"database: no answer for {silent:.1f} s{detail}"
        return None

    def start(self) -> None:
        self._answered = time.monotonic()
        super().start()

    async def stop(self) -> None:
        await super().stop()
        if self._replaying is not None:
            self._replaying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replaying

    async def _replay(self) -> None:
        try:
            await self.replay()
        except Exception as exc:  # the database failed again: after the next probe
            log.info("replaying the spool stopped: %s", fault_reason(exc))

    async def run_once(self) -> None:
        """One probe; after an answer, the spool's replay if none is under way."""
        self._asked = time.monotonic()
        try:
            async with asyncio.timeout(self.bound):
                await self.store.ping()
            self._answered, self._error = time.monotonic(), None
        except Exception as exc:
            self._error = "timed out" if isinstance(exc, TimeoutError) else fault_reason(exc)
        self._asked = None
        if self._error is None and (self._replaying is None or self._replaying.done()):
            # Apart from the probes: a replay the database holds up must not stop them.
            self._replaying = asyncio.create_task(self._replay(), name="spool-replay")
