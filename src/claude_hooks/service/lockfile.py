"""One service per data dir: an exclusive lock, which also tells the CLI a service is running."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from claude_hooks.errors import ConflictError

LOCK_NAME = "service.lock"


@dataclass(frozen=True, slots=True)
class RunningService:
    pid: int
    url: str


class ServiceLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self, url: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # 0600: it names the service's pid and URL, for the CLI run as the same user only.
        handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise ConflictError(
                f"another claude-hooks service already uses {str(self.path.parent)!r} "
                f"({holder or 'pid unknown'}): stop it, or give this one another data_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "url": url}))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def running_service(data_dir: Path) -> RunningService | None:
    """The service holding the data dir's lock, if one is running."""
    path = data_dir / LOCK_NAME
    try:
        handle = path.open("r")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(handle.read() or "{}")
                return RunningService(pid=int(info.get("pid", 0)), url=str(info.get("url", "")))
            except (ValueError, TypeError):
                return RunningService(pid=0, url="")
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
