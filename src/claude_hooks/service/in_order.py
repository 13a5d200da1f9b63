"""Deliveries about one issue are taken one after another, in the order they arrived.

A delivery's decision reads what the deliveries answered before it wrote (an unassignment
cancels the work its assignment queued). Deliveries for different issues overlap freely (on
PostgreSQL their store calls wait on threads, their writes are committed together: see
`store.group_commit`); two for the same issue would otherwise decide on the same state, the
later one while the earlier one waits for the forge or the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable


class InOrder:
    """A first-come, first-served turn per key (an issue or pull request: repository and
    number); the locks of keys nobody waits for are dropped."""

    def __init__(self) -> None:
        self._turns: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, key: Hashable | None) -> AsyncIterator[None]:
        """Wait for the deliveries of `key` that came before (None: no wait)."""
        if key is None:
            yield
            return
        lock, users = self._turns.get(key) or (asyncio.Lock(), 0)
        self._turns[key] = (lock, users + 1)
        try:
            async with lock:  # asyncio's locks wake their waiters in arrival order
                yield
        finally:
            lock, users = self._turns[key]
            if users == 1:
                del self._turns[key]
            else:
                self._turns[key] = (lock, users - 1)
