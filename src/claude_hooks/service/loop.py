"""The one shape of a background duty (as River's `startstop.Service`): started and stopped
as one task, a pass every `interval` seconds or at once when woken, and supervised: a pass
that raises is logged and the next one comes after the interval, so a fault never ends the
duty while the service runs."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


class Loop(abc.ABC):
    """Subclasses write `run_once`; `first`: the wait before the first pass (default: the
    interval)."""

    def __init__(self, name: str, interval: float, first: float | None = None) -> None:
        self.name = name
        self.interval = interval
        self.first = interval if first is None else first
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def run_once(self) -> float | None:
        """One pass; the seconds until the next (None: the interval)."""

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """Run the next pass now rather than at the end of the wait."""
        self._wake.set()

    async def _run(self) -> None:
        pause = self.first
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
            self._wake.clear()
            try:
                found = await self.run_once()
                pause = self.interval if found is None else found
            except Exception:
                log.exception("%s failed; trying again in %g s", self.name, self.interval)
                pause = self.interval
