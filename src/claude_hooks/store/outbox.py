"""Storage for the outbox: forge comments written when decided, deleted once posted.

A comment's row is added in one transaction (with a wake-up for the drainer's node), and
deleted after the forge took it; a failed post moves its `next_at` on. Rows are read in id
order, which is the order the comments were decided in.

A living comment (`comments = "living"`) is one comment per task, created by its first letter
and edited by the later ones: a task has at most one letter waiting (a newer body replaces
the waiting one's), and a letter written after an edit waits out the throttle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from claude_hooks.store import wakeups
from claude_hooks.store.schema import living_comments, outbox
from claude_hooks.store.upsert import upsert


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
    living_key: str | None = None  # the task whose living comment this creates or edits
    comment_id: int | None = None  # that comment, once posted: this letter edits it


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
    async def put_living(
        self, key: str, as_type: str, repo: str, number: int, body: str, now: float, gap: float
    ) -> int: ...
    async def written(self, letter: Letter, comment_id: int, now: float, gap: float) -> None: ...


class SqlOutbox:
    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def put(self, as_type: str, repo: str, number: int, body: str, now: float) -> int:
        with self.engine.begin() as conn:
            return write_letter(conn, as_type, repo, number, body, now)

    async def put_living(
        self, key: str, as_type: str, repo: str, number: int, body: str, now: float, gap: float
    ) -> int:
        """Write the living comment of `key` anew: the waiting letter takes the new body (its
        place and time kept), or a new one waits until `gap` seconds after the last write."""
        with self.engine.begin() as conn:
            waiting = conn.execute(
                sa.select(outbox.c.id).where(outbox.c.living_key == key).order_by(outbox.c.id)
            ).first()
            if waiting is not None:
                conn.execute(outbox.update().where(outbox.c.id == waiting.id).values(body=body))
                return int(waiting.id)
            last = conn.execute(
                sa.select(living_comments.c.written_at).where(living_comments.c.key == key)
            ).scalar()
            due = now if last is None else max(now, float(last) + gap)
            letter_id = conn.execute(
                outbox.insert()
                .values(
                    as_type=as_type,
                    repo=repo,
                    number=number,
                    body=body,
                    created_at=now,
                    next_at=due,
                    living_key=key,
                )
                .returning(outbox.c.id)
            ).scalar_one()
            wakeups.notify(conn, wakeups.OUTBOX)
        return int(letter_id)

    async def written(self, letter: Letter, comment_id: int, now: float, gap: float) -> None:
        """A living comment's letter was posted: remember the comment and drop the letter,
        unless a newer body replaced it meanwhile: then it waits `gap` to edit the comment."""
        assert letter.living_key is not None
        with self.engine.begin() as conn:
            upsert(
                conn,
                living_comments,
                {"key": letter.living_key, "comment_id": comment_id, "written_at": now},
            )
            gone = conn.execute(
                outbox.delete().where(outbox.c.id == letter.id, outbox.c.body == letter.body)
            )
            if gone.rowcount == 0:
                conn.execute(
                    outbox.update()
                    .where(outbox.c.id == letter.id)
                    .values(attempts=0, next_at=now + gap)
                )

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
                outbox.c.living_key,
                living_comments.c.comment_id,
            )
            .outerjoin(living_comments, living_comments.c.key == outbox.c.living_key)
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
