"""The tests' PostgreSQL databases: one per run and per pytest-xdist worker, named for it."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests import pg


def test_each_worker_creates_and_drops_a_database_named_for_it(
    pg_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        with pg.own_database(pg_server) as url:
            names.append(make_url(url).database)
    assert names[0] is not None and names[0].startswith("claude_hooks_test_gw0_")
    assert names[1] is not None and names[1].startswith("claude_hooks_test_gw1_")
    with psycopg.connect(pg._libpq(pg_server)) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,)
        ).fetchall()
    assert left == []
