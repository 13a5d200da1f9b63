"""The labels last seen on each issue or PR, to tell what a label event added or removed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import sqlalchemy as sa

from claude_hooks.store.schema import issue_labels


class LabelStore(Protocol):
    async def labels(self, repo: str, number: int) -> set[str]: ...
    async def put_labels(self, repo: str, number: int, names: Iterable[str]) -> None: ...


class SqlLabels:
    """`LabelStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    def _of(self, repo: str, number: int) -> sa.ColumnElement[bool]:
        return sa.and_(issue_labels.c.repo == repo, issue_labels.c.number == number)

    async def labels(self, repo: str, number: int) -> set[str]:
        with self.reader.connect() as conn:
            return set(conn.scalars(sa.select(issue_labels.c.name).where(self._of(repo, number))))

    async def put_labels(self, repo: str, number: int, names: Iterable[str]) -> None:
        """Make `names` the labels of the issue: one transaction."""
        rows = [{"repo": repo, "number": number, "name": name} for name in sorted(set(names))]
        with self.engine.begin() as conn:
            conn.execute(issue_labels.delete().where(self._of(repo, number)))
            if rows:
                conn.execute(issue_labels.insert(), rows)
