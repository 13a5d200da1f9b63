"""Dashboard login sessions: a random id in the cookie, the session itself in this process.

A session ends at logout or after `server.session_hours`, whichever comes first, and a stolen
cookie is worth nothing after either. Sessions live in memory: one service process serves a
data dir, and a restart logs every browser out (they log in again). Only a digest of each id
is kept, and at most `LIMIT` sessions (the oldest go first).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

LIMIT = 10_000


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


class Sessions:
    def __init__(self, lifetime: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._expiry: dict[str, float] = {}

    def start(self) -> str:
        """A new session's id, for the cookie."""
        now = self.clock()
        self._expiry = {key: end for key, end in self._expiry.items() if end > now}
        while len(self._expiry) >= LIMIT:
            del self._expiry[next(iter(self._expiry))]
        session_id = secrets.token_urlsafe(32)
        self._expiry[_digest(session_id)] = now + self.lifetime
        return session_id

    def valid(self, session_id: str) -> bool:
        key = _digest(session_id)
        end = self._expiry.get(key)
        if end is None:
            return False
        if end <= self.clock():
            del self._expiry[key]
            return False
        return True

    def end(self, session_id: str) -> None:
        self._expiry.pop(_digest(session_id), None)
