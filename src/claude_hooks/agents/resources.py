"""Running out of file descriptors or processes is a passing state, not a task's failure.

When the process (or the system) has no descriptor or process slot left, a task that could
not start goes back to the head of its queue and starts again once something is freed; the log
says so once per episode, not once per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM, errno.ENOBUFS})
BACKOFF_SECONDS = 1.0
QUIET_SECONDS = 60.0


def exhausted(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, is a lack of descriptors or processes."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in EXHAUSTED:
            return True
        error = error.__cause__ or error.__context__
    return False


class Notice:
    """Logs the first of a run of like events, then at most once per `QUIET_SECONDS`,
    with how many were not logged."""

    def __init__(self, quiet: float = QUIET_SECONDS) -> None:
        self.quiet = quiet
        self.last = -quiet
        self.unlogged = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last < self.quiet:
            self.unlogged += 1
            return
        more = f" ({self.unlogged} more like it not logged)" if self.unlogged else ""
        log.warning(message + more, *args)
        self.last, self.unlogged = now, 0


_accept_notice = Notice()


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's handler: a failed accept() for want of descriptors is one line a
    minute (the loop retries by itself), everything else goes to the default handler."""
    if exhausted(context.get("exception")):
        _accept_notice("%s: %s", context.get("message", "out of resources"), context["exception"])
        return
    loop.default_exception_handler(context)
