"""The one shape of a background duty (as River's `startstop.Service`): started and stopped
as one task, a pass every `interval` seconds or at once when woken, and supervised: a pass
that raises is logged and counted (`failures`, the metric `claude_hooks_loop_failures_total`)
and the duty starts again after the interval, so a fault never ends it while the service
runs. `stop` is bounded: a pass that does not end when cancelled is left behind, logged,
after `stop_grace` seconds, so one stuck duty cannot hold the service's stop up."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from claude_hooks.errors import ClaudeHooksError

log = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds a cancelled pass is given to end


class Loop(abc.ABC):
    """Subclasses write `run_once`; `first`: the wait before the first pass (default: the
    interval)."""

    def __init__(
        self,
        name: str,
        interval: float,
        first: float | None = None,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self.name = name
        self.interval = interval
        self.first = interval if first is None else first
        self.stop_grace = stop_grace
        self.failures = 0  # passes that raised since the service started
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def run_once(self) -> float | None:
        """One pass; the seconds until the next (None: the interval; 0: at once)."""

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the duty and wait for it, at most `stop_grace` seconds."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.stop_grace)
        if not done:
            log.warning("%s did not stop within %g s: left to end", self.name, self.stop_grace)
            return
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def wake(self) -> None:
        """Run the next pass now rather than at the end of the wait."""
        self._wake.set()

    async def _run(self) -> None:
        pause = self.first
        while True:
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
            else:
                await asyncio.sleep(0)  # a pass at once still lets the others run first
            self._wake.clear()
            try:
                found = await self.run_once()
                pause = self.interval if found is None else found
            except ClaudeHooksError as exc:  # says what went wrong: no traceback needed
                self.failures += 1
                log.warning("%s failed: %s; again in %g s", self.name, exc, self.interval)
                pause = self.interval
            except Exception:
                self.failures += 1
                log.exception("%s failed; again in %g s", self.name, self.interval)
                pause = self.interval


class Every(Loop):
    """A loop whose pass is one method of a larger object (the node's heartbeat, the
    service's signal watcher), so that object need not be a loop itself."""

    def __init__(
        self,
        name: str,
        interval: float,
        step: Callable[[], Awaitable[float | None]],
        first: float | None = None,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        super().__init__(name, interval, first, stop_grace)
        self.step = step

    async def run_once(self) -> float | None:
        return await self.step()
