"""The outbox's drainer: posts the forge comments the notifier wrote, in order, with retries.

One node drains (the leader, once there are several): `start` and `stop` are called when it
gains or loses the duty. Comments are posted in the order they were decided; one that fails
waits with a growing pause, and the later comments on the same issue or PR wait behind it, so
a thread never reads out of order. A comment is deleted once the forge took it: a crash
between the post and the delete posts it again after the restart (at least once, never lost).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from claude_hooks.forge.client import ForgejoError
from claude_hooks.forge.gateway import Forge
from claude_hooks.service.loop import Loop
from claude_hooks.store.outbox import Letter, OutboxStore

log = logging.getLogger(__name__)

BATCH = 100
LOOK_SECONDS = 5.0  # the longest wait between looks, for comments whose pause has passed
BACKOFF_FIRST = 2.0
BACKOFF_MOST = 600.0
GIVE_UP_AFTER = 12  # failed posts (about an hour of pauses): the comment is dropped, logged
# Answers that say the request itself is wrong (gone issue, no permission): retrying won't help.
_RETRYABLE_4XX = frozenset({401, 408, 409, 429})


def backoff(attempts: int) -> float:
    """The pause after the `attempts`-th failed post."""
    return float(min(BACKOFF_MOST, BACKOFF_FIRST * 2 ** max(0, attempts - 1)))


def final(exc: Exception) -> bool:
    """Whether a failed post is not worth another try."""
    status = exc.status if isinstance(exc, ForgejoError) else None
    return status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX


class Drainer(Loop):
    """Posts the outbox's comments and edits its living comments; woken (`wake`) when one is
    written."""

    def __init__(
        self,
        forge: Forge,
        store: OutboxStore,
        clock: Callable[[], float],
        edit_gap: float = 10.0,
    ) -> None:
        super().__init__("outbox", LOOK_SECONDS, first=0.0)
        self.forge = forge
        self.edit_gap = edit_gap  # seconds between two writes of one living comment
        self.store = store
        self.clock = clock
        self.posted = 0
        self.failed = 0

    async def run_once(self) -> float:
        return await self.drain() if self.forge.enabled else LOOK_SECONDS

    async def drain(self) -> float:
        """Post every comment that is due, in order; the seconds until one is due again."""
        now = self.clock()
        letters = await self.store.waiting(BATCH)
        held: set[tuple[str, int]] = set()  # issues with an earlier comment still waiting
        pause = LOOK_SECONDS
        for letter in letters:
            thread = (letter.repo, letter.number)
            if thread in held:
                continue
            if letter.next_at > now and letter.comment_id is not None:
                # A throttled edit: it changes a comment in place, later ones need not wait.
                pause = min(pause, letter.next_at - now)
            elif letter.next_at > now:
                held.add(thread)
                pause = min(pause, letter.next_at - now)
            elif not await self._post(letter):
                held.add(thread)
                pause = min(pause, backoff(letter.attempts + 1))
        return 0.0 if len(letters) == BATCH and not held else pause

    async def _post(self, letter: Letter) -> bool:
        """Post one comment; True if it left the outbox (posted, or given up)."""
        try:
            comment_id = letter.comment_id
            if comment_id is not None:
                await self.forge.edit_comment(letter.as_type, letter.repo, comment_id, letter.body)
            else:
                comment_id = await self.forge.comment(
                    letter.as_type, letter.repo, letter.number, letter.body
                )
        except Exception as exc:
            attempts = letter.attempts + 1
            where = f"{letter.repo}#{letter.number}"
            if final(exc) or attempts >= GIVE_UP_AFTER:
                self.failed += 1
                log.warning("gave up the comment on %s after %d tries: %s", where, attempts, exc)
                await self.store.remove(letter.id)
                return True
            pause = backoff(attempts)
            log.warning("could not comment on %s (%s): trying again in %g s", where, exc, pause)
            await self.store.retry_at(letter.id, self.clock() + pause, str(exc))
            return False
        self.posted += 1
        if letter.living_key is not None:
            await self.store.written(letter, comment_id, self.clock(), self.edit_gap)
        else:
            await self.store.remove(letter.id)
        return True
