"""The labels last seen on each issue or PR, to tell what a label event added or removed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import sqlalchemy as sa

from claude_hooks.store.schema import issue_labels


def _of(repo: str, number: int) -> sa.ColumnElement[bool]:
    return sa.and_(issue_labels.c.repo == repo, issue_labels.c.number == number)


def read_labels(conn: sa.Connection, repo: str, number: int) -> set[str]:
    return set(conn.scalars(sa.select(issue_labels.c.name).where(_of(repo, number))))


def write_labels(conn: sa.Connection, repo: str, number: int, names: Iterable[str]) -> None:
    """Make `names` the labels of the issue, within the caller's transaction."""
    rows = [{"repo": repo, "number": number, "name": name} for name in sorted(set(names))]
    conn.execute(issue_labels.delete().where(_of(repo, number)))
    if rows:
        conn.execute(issue_labels.insert(), rows)


class LabelStore(Protocol):
    async def labels(self, repo: str, number: int) -> set[str]: ...
    async def put_labels(self, repo: str, number: int, names: Iterable[str]) -> None: ...


class SqlLabels:
    """`LabelStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def labels(self, repo: str, number: int) -> set[str]:
        with self.reader.connect() as conn:
            return read_labels(conn, repo, number)

    async def put_labels(self, repo: str, number: int, names: Iterable[str]) -> None:
        """Make `names` the labels of the issue: one transaction."""
        with self.engine.begin() as conn:
            write_labels(conn, repo, number, names)
