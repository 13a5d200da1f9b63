"""Storage faults as the service reports them: counted, and logged once a minute at most.

A database that is down fails every call: one line a minute says so, with the latest reason
and how many there were since; the count is in the metrics (`claude_hooks_storage_faults`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

LOG_EVERY = 60.0
# Seconds a client is told to wait before it tries again after a 503 of a storage fault.
RETRY_AFTER = 5


class StorageFaults:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.total = 0
        self.last_reason: str | None = None
        self._logged_at: float | None = None
        self._unlogged = 0

    def note(self, reason: str) -> None:
        self.total += 1
        self.last_reason = reason
        self._unlogged += 1
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY:
            more = f" ({self._unlogged} since the last such line)" if self._unlogged > 1 else ""
            log.warning("storage fault: %s%s", reason, more)
            self._logged_at = now
            self._unlogged = 0
