"""Where an agent works: one directory per session key, the same for every instance of a type."""

from __future__ import annotations

import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def key_path(session_key: str) -> Path:
    """`dev:acme/widget:17` -> `dev/acme/widget/17`, each part made safe for a file name."""
    parts = re.split(r"[:/]", session_key)
    safe = [_UNSAFE.sub("_", part).strip(".") or "_" for part in parts]
    return Path(*safe)


class Workspaces:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "workdirs"

    def workdir(self, session_key: str) -> Path:
        return (self.root / key_path(session_key)).resolve()
