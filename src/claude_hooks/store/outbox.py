"""Storage for the outbox: forge comments written when decided, deleted once posted.

A comment's row is added in one transaction (with a wake-up for the drainer's node), and
deleted after the forge took it; a failed post moves its `next_at` on. Rows are read in id
order, which is the order the comments were decided in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from claude_hooks.store import wakeups
from claude_hooks.store.schema import outbox


@dataclass(frozen=True, slots=True)
class Letter:
    """A comment waiting in the outbox."""

    id: int
    as_type: str
    repo: str
    number: int
    body: str
    attempts: int  # failed posts so far
    next_at: float  # not posted before this time


def write_letter(
    conn: sa.Connection, as_type: str, repo: str, number: int, body: str, now: float
) -> int:
    """Add a comment to the outbox, with a wake-up for the drainer, within the caller's
    transaction; its id."""
    letter_id = conn.execute(
        outbox.insert()
        .values(as_type=as_type, repo=repo, number=number, body=body, created_at=now, next_at=now)
        .returning(outbox.c.id)
    ).scalar_one()
    wakeups.notify(conn, wakeups.OUTBOX)
    return int(letter_id)


class OutboxStore(Protocol):
    async def put(self, as_type: str, repo: str, number: int, body: str, now: float) -> int: ...
    async def waiting(self, limit: int) -> list[Letter]: ...
    async def remove(self, letter_id: int) -> None: ...
    async def retry_at(self, letter_id: int, next_at: float, error: str) -> None: ...


class SqlOutbox:
    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def put(self, as_type: str, repo: str, number: int, body: str, now: float) -> int:
        with self.engine.begin() as conn:
            return write_letter(conn, as_type, repo, number, body, now)

    async def waiting(self, limit: int) -> list[Letter]:
        query = (
            sa.select(
                outbox.c.id,
                outbox.c.as_type,
                outbox.c.repo,
                outbox.c.number,
                outbox.c.body,
                outbox.c.attempts,
                outbox.c.next_at,
            )
            .order_by(outbox.c.id)
            .limit(limit)
        )
        with self.reader.connect() as conn:
            return [Letter(*row) for row in conn.execute(query)]

    async def remove(self, letter_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(outbox.delete().where(outbox.c.id == letter_id))

    async def retry_at(self, letter_id: int, next_at: float, error: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id == letter_id)
                .values(attempts=outbox.c.attempts + 1, next_at=next_at, last_error=error[:2000])
            )
