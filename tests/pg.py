"""A PostgreSQL server for the tests, and a database of their own on it.

Where the server comes from, first match wins:
1. `CLAUDE_HOOKS_TEST_DATABASE_URL`: a server URL whose user may create databases;
2. a server answering on 127.0.0.1:5432 (user postgres, trust auth, as on CI machines);
3. a throwaway cluster started here from Debian's `postgresql` binaries, as the `postgres`
   user when the tests run as root (PostgreSQL refuses root), in a temporary directory, on a
   free port, with its socket in that directory, stopped at the end.

Every test run, and each pytest-xdist worker of it, creates a database with a unique name
(the worker's id in it, to tell them apart) and drops only that one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

ENV = "CLAUDE_HOOKS_TEST_DATABASE_URL"
LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"


class NoServer(Exception):
    """No PostgreSQL to test against: no URL given, none on 5432, no binaries to start one."""


def _answers(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise NoServer("no /usr/lib/postgresql/*/bin/initdb: install Debian's postgresql package")
    return Path(found[-1]).parent


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Start a private cluster; yield a URL of its `postgres` database; stop and remove it."""
    bin_dir = _binaries()
    root = Path(tempfile.mkdtemp(prefix="claude-hooks-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(program: str, *args: str, check: bool = True) -> None:
        subprocess.run(
            [*as_user, str(bin_dir / program), "-D", str(data), *args],
            check=check,
            capture_output=True,
            timeout=60,
        )

    try:
        run("initdb", "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses='' -c fsync=off"
        try:
            # The server's output goes to a file: a pipe it inherits would never close.
            run("pg_ctl", "-o", options, "-l", str(root / "server.log"), "-w", "start")
            yield f"postgresql://postgres@/postgres?host={root}&port={port}"
        finally:
            run("pg_ctl", "-m", "immediate", "stop", check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The URL of a server's maintenance database, by the order in the module's docstring."""
    given = os.environ.get(ENV)
    if given:
        yield given
    elif _answers("127.0.0.1", 5432):
        yield LOCAL
    else:
        with throwaway_cluster() as url:
            yield url


def _libpq(url: str) -> str:
    """A URL psycopg itself takes (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def own_database(server_url: str) -> Iterator[str]:
    """Create a database with a unique name on the server; yield its URL; drop it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"claude_hooks_test_{worker}_{uuid.uuid4().hex[:12]}"
    admin = _libpq(server_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
