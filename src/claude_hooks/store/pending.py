"""Storage for pending deliveries: accepted while the forge could not answer, retried later.

The delivery itself is a row of `deliveries` with outcome `pending`; its retry schedule is a
row of `pending_deliveries`. Both are written in one transaction, and settled in one, so a
restart finds every pending delivery and none is processed twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from claude_hooks.core.decision import Assigned, Reset
from claude_hooks.errors import ClaudeHooksError
from claude_hooks.store.intake import DeliveryRecord, write_assignment
from claude_hooks.store.schema import deliveries, pending_deliveries
from claude_hooks.store.spend import write_reset


@dataclass(frozen=True, slots=True)
class PendingEntry:
    id: str
    attempts: int
    next_attempt_at: float
    last_error: str | None


class AlreadySettled(ClaudeHooksError):
    """The pending delivery was settled by someone else (another node's retrier) first."""


def settle_pending(
    conn: sa.Connection,
    record: DeliveryRecord,
    assigned: Assigned | None,
    resets: Sequence[Reset] = (),
) -> None:
    """Give a pending delivery its outcome, the state it leaves, and drop its schedule,
    within the caller's transaction; AlreadySettled if it was no longer pending, so the
    caller's transaction, and all it wrote, is rolled back."""
    gone = conn.execute(
        pending_deliveries.delete()
        .where(pending_deliveries.c.id == record.id)
        .returning(pending_deliveries.c.id)
    ).first()
    if gone is None:
        raise AlreadySettled(f"delivery {record.id} is no longer pending")
    conn.execute(
        deliveries.update()
        .where(deliveries.c.id == record.id)
        .values(outcome=record.outcome, reason=record.reason, task_ids=record.task_ids)
    )
    if assigned is not None:
        write_assignment(conn, *assigned)
    for repo, number, since in resets:
        write_reset(conn, repo, number, since)


class PendingStore(Protocol):
    async def add_pending(self, record: DeliveryRecord, next_attempt_at: float) -> bool: ...
    async def due(self, now: float, limit: int) -> list[PendingEntry]: ...
    async def get_pending(self, delivery_id: str) -> PendingEntry | None: ...
    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None: ...
    async def count_pending(self) -> int: ...


def _entry(row: sa.Row[tuple[str, int, float, str | None]]) -> PendingEntry:
    return PendingEntry(row.id, row.attempts, row.next_attempt_at, row.last_error)


class SqlPending:
    """`PendingStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def add_pending(self, record: DeliveryRecord, next_attempt_at: float) -> bool:
        """Record a delivery as pending, with its first retry; False if its id was seen."""
        try:
            with self.engine.begin() as conn:
                conn.execute(deliveries.insert(), dataclasses.asdict(record))
                conn.execute(
                    pending_deliveries.insert().values(
                        id=record.id,
                        attempts=0,
                        next_attempt_at=next_attempt_at,
                        last_error=record.reason,
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    async def due(self, now: float, limit: int) -> list[PendingEntry]:
        query = (
            sa.select(pending_deliveries)
            .where(pending_deliveries.c.next_attempt_at <= now)
            .order_by(pending_deliveries.c.next_attempt_at)
            .limit(limit)
        )
        with self.reader.connect() as conn:
            return [_entry(row) for row in conn.execute(query)]

    async def get_pending(self, delivery_id: str) -> PendingEntry | None:
        query = sa.select(pending_deliveries).where(pending_deliveries.c.id == delivery_id)
        with self.reader.connect() as conn:
            row = conn.execute(query).first()
        return _entry(row) if row is not None else None

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                pending_deliveries.update()
                .where(pending_deliveries.c.id == delivery_id)
                .values(attempts=attempts, next_attempt_at=next_attempt_at, last_error=error)
            )
            conn.execute(
                deliveries.update().where(deliveries.c.id == delivery_id).values(reason=error)
            )

    async def settle(
        self, record: DeliveryRecord, assigned: tuple[str, int, frozenset[str]] | None
    ) -> bool:
        """Give a pending delivery its outcome and drop its schedule, in one transaction;
        False if it was no longer pending (settled by someone else)."""
        with self.engine.begin() as conn:
            gone = conn.execute(
                pending_deliveries.delete().where(pending_deliveries.c.id == record.id)
            )
            if gone.rowcount == 0:
                return False
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id == record.id)
                .values(outcome=record.outcome, reason=record.reason, task_ids=record.task_ids)
            )
            if assigned is not None:
                write_assignment(conn, *assigned)
        return True

    async def count_pending(self) -> int:
        with self.reader.connect() as conn:
            query = sa.select(sa.func.count()).select_from(pending_deliveries)
            return int(conn.scalar(query) or 0)
