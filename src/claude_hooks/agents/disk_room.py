"""Room kept on the data dir's disk for what must be written: the delivery spool and the
database come before the service's own non-essential writes (task logs beyond their head,
saved worktree states), which are refused while less than `server.min_free_disk` is free."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

# statvfs is cheap, but a log writes often: the answer is kept this long.
RECHECK_SECONDS = 1.0


class DiskRoom:
    def __init__(self, path: Path, minimum: int) -> None:
        self.path = path
        self.minimum = minimum
        self._checked = -RECHECK_SECONDS
        self._ok = True

    def free(self) -> int:
        found = os.statvfs(self.path)
        return found.f_bavail * found.f_frsize

    def ok(self) -> bool:
        """Whether a non-essential write may go ahead now."""
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return self._ok
        self._checked = now
        try:
            ok = self.free() >= self.minimum
        except OSError:
            ok = True  # the data dir's own writes will say what is wrong
        if ok != self._ok:
            if ok:
                log.info("free disk at %s back above server.min_free_disk", self.path)
            else:
                log.warning(
                    "less than server.min_free_disk (%d bytes) free at %s: task logs stop "
                    "after their head and worktree states are not saved, to keep room for "
                    "the delivery spool and the database",
                    self.minimum,
                    self.path,
                )
        self._ok = ok
        return ok
