"""The service's files are its own: the data dir, the database and the task logs.

They hold every delivery body, every task's output and the agents' state, so they are created
0700 (folders) and 0600 (files) whatever the umask the service was started with, and existing
ones are tightened at start.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """`path` as a folder only its owner can enter (its parents are left as they are)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.chmod(DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """`path` as a file only its owner can read, created empty if missing, never truncated."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE))
    path.chmod(FILE_MODE)
    return path


def prepare_data_dir(data_dir: Path, database_url: str) -> None:
    """The data dir and its logs folder 0700; a SQLite database (and its journals) 0600.

    SQLite creates its WAL and shared-memory files with the database file's mode, so creating
    the database file first is enough for them."""
    private_dir(data_dir)
    private_dir(data_dir / "logs")
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(url.database)
        if not database.parent.exists():
            private_dir(database.parent)
        private_file(database)
        for suffix in ("-wal", "-shm"):
            journal = Path(f"{database}{suffix}")
            if journal.exists():
                journal.chmod(FILE_MODE)
