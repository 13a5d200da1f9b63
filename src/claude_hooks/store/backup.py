"""`claude-hooks backup PATH`: a consistent copy of the database while the service runs.

SQLite's online backup copies the database page by page under its own locking, so the copy
is a snapshot even while the service writes (WAL included). PostgreSQL has its own tool for
that; the command points at it rather than doing half its job.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url

from claude_hooks.errors import ConfigError, ConflictError, StoreError


def backup(database_url: str, target: Path) -> int:
    """Copy the database to `target` (which must not exist); the copy's size in bytes."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        shown = url.set(drivername="postgresql").render_as_string(hide_password=True)
        raise ConfigError(
            f"the database is PostgreSQL ({shown}): back it up with pg_dump, e.g. "
            f"pg_dump --format=custom --file {target} '{shown}' (give the password as PGPASSWORD)"
        )
    if backend != "sqlite" or not url.database:
        raise ConfigError(f"cannot back up database_url {database_url!r}: not an SQLite file")
    source = Path(url.database)
    if not source.exists():
        raise StoreError(f"no database at {source}: nothing to back up (check --config)")
    try:
        target.open("xb").close()  # claims the name: never overwrite, even in a race
    except FileExistsError:
        raise ConflictError(f"{target} already exists: a backup never overwrites a file") from None
    except OSError as exc:
        raise ConflictError(f"cannot create {target}: {exc.strerror}") from None
    try:
        with _connect(source) as live, sqlite3.connect(target) as copy:
            live.backup(copy)
            check = copy.execute("PRAGMA integrity_check").fetchone()
        if check is None or check[0] != "ok":
            raise StoreError(f"the copy at {target} failed its integrity check: {check}")
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise StoreError(f"cannot back up {source}: {exc}") from None
    return target.stat().st_size


def _connect(source: Path) -> sqlite3.Connection:
    """The live database, never created: mode=rw fails on a missing file."""
    return sqlite3.connect(f"file:{source}?mode=rw", uri=True, timeout=30)
