"""Deliveries about one issue are taken one after another, in the order they arrived.

A delivery's decision reads what the deliveries answered before it wrote (an unassignment
cancels the work its assignment queued). Deliveries for different issues overlap freely (on
PostgreSQL their store calls wait on threads, their writes are committed together: see
`store.group_commit`); two for the same issue would otherwise decide on the same state, the
later one while the earlier one waits for the forge or the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from types import TracebackType


class InOrder:
    """A first-come, first-served turn per key (an issue or pull request: repository and
    number); the locks of keys nobody waits for are dropped."""

    def __init__(self) -> None:
        self._turns: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def turn(self, key: Hashable | None) -> Turn:
        """Wait for the deliveries of `key` that came before (None: no wait)."""
        return Turn(self._turns, key)


class Turn:
    """One delivery's turn at its key, as `async with`. A class rather than an async
    generator: every delivery takes one, and a generator's context manager cost ~20 calls."""

    __slots__ = ("_key", "_turns")

    def __init__(self, turns: dict[Hashable, tuple[asyncio.Lock, int]], key: Hashable | None):
        self._turns, self._key = turns, key

    async def __aenter__(self) -> None:
        if self._key is None:
            return
        lock, users = self._turns.get(self._key) or (asyncio.Lock(), 0)
        self._turns[self._key] = (lock, users + 1)
        try:
            await lock.acquire()  # asyncio's locks wake their waiters in arrival order
        except BaseException:  # cancelled while waiting: the turn is given up
            self._leave()
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._key is not None:
            self._turns[self._key][0].release()
            self._leave()

    def _leave(self) -> None:
        lock, users = self._turns[self._key]
        if users == 1:
            del self._turns[self._key]
        else:
            self._turns[self._key] = (lock, users - 1)
