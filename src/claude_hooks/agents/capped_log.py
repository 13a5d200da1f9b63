"""A task's log with a ceiling: its head and its tail are kept, and it says what was dropped.

An agent can print without end; the disk must not fill. The first part of the output is
written as it comes (so it can be followed live); once the head is full, only the last
`tail` bytes are held in memory, and they are written after a line that counts the bytes
dropped when the log is closed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

TAIL_SHARE = 4  # the tail is a quarter of the ceiling ...
TAIL_MAX = 1024 * 1024  # ... and at most 1 MiB, held in memory while the agent runs
NOTICE = (
    "\n[claude-hooks] {dropped} bytes of output dropped here (server.max_log_bytes = {limit})\n"
)


class CappedLog:
    """Append-only writer of one task log, at most `limit` bytes plus one notice line.

    With `lines`, every write is one whole line (the claude runner's JSON lines), and lines
    are kept or dropped whole.
    """

    def __init__(
        self,
        path: Path,
        limit: int,
        notice: str = NOTICE,
        lines: bool = False,
        room: Callable[[], bool] | None = None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.stream: IO[bytes] = path.open("ab")
        self.limit = limit
        self.tail_limit = min(limit // TAIL_SHARE, TAIL_MAX)
        self.head_room = max(limit - self.tail_limit - max(self.stream.tell(), 0), 0)
        self.notice = notice
        self.lines = lines  # each write is one line: keep or drop it whole
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.dropped = 0
        self.failed = False
        # False while the disk is short (`DiskRoom`): what comes after the head is dropped.
        self.room = room

    def write(self, data: bytes) -> None:
        if self.lines and len(data) > self.head_room:
            self.head_room = 0
        if self.head_room > 0:
            head, data = data[: self.head_room], data[self.head_room :]
            self.head_room -= len(head)
            self._put(head)
        if not data:
            return
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail and self.tail_size > self.tail_limit:
            first = self.tail[0]
            extra = self.tail_size - self.tail_limit
            if extra >= len(first) or self.lines:
                self.tail.popleft()
                self.tail_size -= len(first)
                self.dropped += len(first)
            else:
                self.tail[0] = first[extra:]
                self.tail_size -= extra
                self.dropped += extra

    def _put(self, data: bytes) -> None:
        if self.failed or not data:
            return
        if self.room is not None and not self.room() and self.stream.tell() > 0:
            self.failed = True
            log.warning("task log %s stops here: the disk is short of room", self.path)
            return
        try:
            self.stream.write(data)
            self.stream.flush()
        except OSError as exc:  # a full disk must not end the run: the log just stops
            self.failed = True
            log.warning("cannot write the task log %s: %s", self.path, exc)

    def close(self) -> None:
        if self.dropped:
            self._put(self.notice.format(dropped=self.dropped, limit=self.limit).encode())
        self._put(b"".join(self.tail))
        self.tail.clear()
        self.stream.close()

    def __enter__(self) -> CappedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
