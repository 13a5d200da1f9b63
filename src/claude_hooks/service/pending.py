"""Deliveries that wait for the forge, or that their node deferred while it was crowded.

Forgejo gives up on a delivery after 5 s and never sends it again, so the forge look-ups a
flow makes (the sender's permission above all) get a deadline inside `server.answer_deadline`.
A delivery whose look-up cannot finish in time is stored as `pending` and answered 202; the
`PendingRetrier` runs it through the flows again, with backoff, until the forge answers. The
schedule is in the database, so a restart picks up where the last run left off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from claude_hooks.config import Config
from claude_hooks.errors import ClaudeHooksError
from claude_hooks.forge.client import ForgejoUnavailable
from claude_hooks.service.loop import Loop
from claude_hooks.store.pending import PendingEntry, PendingStore

log = logging.getLogger(__name__)

# Forge look-ups may use this share of the answer deadline; the rest is for the database.
FORGE_SHARE = 0.8
BATCH = 50  # pending deliveries retried per look
CROWDED_PASS = 1.0  # seconds between passes while the node defers what arrives ...
CROWDED_BATCH = 10  # ... and deliveries retried in each, until the oldest waited
BEHIND = 10.0  # seconds

P = ParamSpec("P")
R = TypeVar("R")


class ForgeUnreachable(ClaudeHooksError):
    """The forge is down or did not answer before the delivery's answer was due."""


def within(call: Callable[P, Awaitable[R]], deadline: float | None) -> Callable[P, Awaitable[R]]:
    """`call`, raising ForgeUnreachable when the forge fails or is still busy at `deadline`
    (event-loop time; None: only the client's own timeouts and retries bound it)."""

    async def bounded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            async with asyncio.timeout_at(deadline):
                return await call(*args, **kwargs)
        except TimeoutError:
            raise ForgeUnreachable("Forgejo did not answer in time") from None
        except ForgejoUnavailable as exc:
            raise ForgeUnreachable(str(exc)) from None

    return bounded


def backoff(attempts: int, first: float, longest: float) -> float:
    """Seconds before the next try after `attempts` failed ones: doubling, capped."""
    return float(min(longest, first * 2 ** min(attempts, 32)))


class PendingRetrier(Loop):
    """Retries due pending deliveries in the background until each is settled."""

    def __init__(
        self,
        config: Config,
        store: PendingStore,
        clock: Callable[[], float],
        retry: Callable[[PendingEntry], Awaitable[str]],
        crowded: Callable[[], bool] = lambda: False,
        horizon: Callable[[], float | None] = lambda: None,
    ) -> None:
        """`retry` runs one entry through the flows again (`Intake.retry_pending`);
        `crowded`: deliveries arrive faster than they are decided (`Intake.crowded`);
        `horizon`: only deliveries due before it are taken (`Intake.horizon`)."""
        super().__init__("pending-deliveries", min(1.0, config.server.pending_retry_min))
        self.config = config
        self.store = store
        self.clock = clock
        self.retry = retry
        self.crowded = crowded
        self.horizon = horizon
        self._last_pass = float("-inf")  # event-loop time the last pass ended
        self._behind = False  # the oldest due delivery waited more than BEHIND seconds

    async def run_once(self) -> float | None:
        loop = asyncio.get_running_loop()
        # Deliveries arrive faster than they are decided: answering them goes first (a
        # decision costs the event loop the time of dozens of deferrals), and a pass of
        # CROWDED_BATCH of what they leave starts CROWDED_PASS seconds after the last one
        # ended, so the agents get work while the burst lasts; once the oldest waited
        # BEHIND seconds, passes of BATCH run back to back again (a burst that does not end
        # shares the node with them rather than grow the backlog).
        crowded = self.crowded() and not self._behind
        if crowded:
            since = loop.time() - self._last_pass
            if since < CROWDED_PASS:
                return CROWDED_PASS - since
        most = CROWDED_BATCH if crowded else BATCH
        now = self.clock()
        horizon = self.horizon()
        # A delivery still being deferred may be due before those already recorded.
        due = await self.store.due(now if horizon is None else min(now, horizon - 1e-6), most)
        self._behind = bool(due) and now - due[0].next_attempt_at > BEHIND
        await self.run_due(due)
        self._last_pass = loop.time()
        if crowded:
            return CROWDED_PASS
        # A full batch: more may be due, the next pass at once.
        return 0 if len(due) == most else None

    async def run_due(self, due: list[PendingEntry]) -> None:
        """Retry `due` (due pending deliveries, earliest first) together (their decisions
        are committed together: see `store.group_commit`), each started in due order so that
        deliveries about one issue take their turns in that order."""
        await asyncio.gather(*(self._retry(entry) for entry in due))

    async def _retry(self, entry: PendingEntry) -> None:
        try:
            await self.retry(entry)
        except Exception as exc:
            # One delivery that cannot be retried must not hold up the others: it waits
            # its backoff like one whose forge is down, and the log says why.
            log.exception("retrying pending delivery %s failed", entry.id)
            server = self.config.server
            attempts = entry.attempts + 1
            wait = backoff(attempts, server.pending_retry_min, server.pending_retry_max)
            await self.store.reschedule(
                entry.id, attempts, self.clock() + wait, f"retry failed: {exc!r}"
            )
