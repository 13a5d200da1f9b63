"""`claude-hooks backup PATH` and `claude-hooks restore PATH`: the SQLite database copied out
while the service runs, and copied back while it does not.

SQLite's online backup copies the database page by page under its own locking, so the copy
is a snapshot even while the service writes (WAL included); restoring goes the same way
into the live file, so its mode and its journal stay SQLite's business. PostgreSQL has its
own tools for both; the commands point at them rather than doing half their job.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from claude_hooks.errors import ConfigError, ConflictError, StoreError

FILE_MODE = 0o600  # a copy holds what the database holds: every delivery and task output


def _sqlite_file(database_url: str, doing: str, postgresql: str) -> Path:
    """The SQLite file of `database_url`; on PostgreSQL an error naming the tool to use."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        shown = url.set(drivername="postgresql").render_as_string(hide_password=True)
        raise ConfigError(
            f"the database is PostgreSQL ({shown}): {postgresql.format(url=shown)} "
            "(give the password as PGPASSWORD)"
        )
    if backend != "sqlite" or not url.database:
        raise ConfigError(f"cannot {doing} database_url {database_url!r}: not an SQLite file")
    return Path(url.database)


def backup(database_url: str, target: Path) -> int:
    """Copy the database to `target` (which must not exist), readable by its owner only; the
    copy's size in bytes."""
    source = _sqlite_file(
        database_url,
        "back up",
        f"back it up with pg_dump, e.g. pg_dump --format=custom --file {target} '{{url}}'",
    )
    if not source.exists():
        raise StoreError(f"no database at {source}: nothing to back up (check --config)")
    try:
        # Claims the name (never overwrite, even in a race) with the database's own mode.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        target.chmod(FILE_MODE)
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


def restore(database_url: str, source: Path) -> Path | None:
    """Make the database a copy of the backup at `source`; where the database it replaced is
    kept (None if there was none). The caller makes sure no service uses it meanwhile."""
    live = _sqlite_file(
        database_url,
        "restore",
        f"restore a pg_dump file with pg_restore, e.g. "
        f"pg_restore --clean --if-exists --dbname '{{url}}' {source}",
    )
    _check_backup(source)
    kept = None
    if live.exists():
        kept = live.with_name(f"{live.name}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
        backup(database_url, kept)  # nothing acknowledged is lost: the old one stays beside
    else:
        live.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(live, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    try:
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as copy, _connect(live) as db:
            copy.backup(db)
            check = db.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(
            f"cannot restore {source} into {live}: {exc}"
            + (f"; the previous database is kept at {kept}" if kept else "")
        ) from None
    if check is None or check[0] != "ok":
        raise StoreError(f"the restored database at {live} failed its integrity check: {check}")
    return kept


def _check_backup(source: Path) -> None:
    """`source` is a readable, sound SQLite database of claude-hooks."""
    if not source.is_file():
        raise StoreError(f"no backup at {source}: give the file 'claude-hooks backup' wrote")
    try:
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as copy:
            check = copy.execute("PRAGMA integrity_check").fetchone()
            tables = {row[0] for row in copy.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as exc:
        raise StoreError(f"{source} is not an SQLite database: {exc}") from None
    if check is None or check[0] != "ok":
        raise StoreError(f"{source} failed its integrity check: {check}")
    if not {"tasks", "alembic_version"} <= tables:
        raise StoreError(f"{source} is not a claude-hooks database (it has no tasks table)")


def _connect(source: Path) -> sqlite3.Connection:
    """The live database, never created: mode=rw fails on a missing file."""
    return sqlite3.connect(f"file:{source}?mode=rw", uri=True, timeout=30)
