"""Storage for pending deliveries: accepted while the forge could not answer, or deferred
while their node was crowded, and run through the flows later.

The delivery itself is a row of `deliveries` with outcome `pending`; its retry schedule is a
row of `pending_deliveries`. Both are written in one transaction, and settled in one, so a
restart finds every pending delivery and none is processed twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from claude_hooks.core.decision import Assigned, Reset
from claude_hooks.errors import ClaudeHooksError
from claude_hooks.store.intake import (
    INSERT_DELIVERIES_SQL,
    DeliveryRecord,
    delivery_arrays,
    delivery_of,
    delivery_row,
    write_assignment,
)
from claude_hooks.store.prepared import Prepared
from claude_hooks.store.schema import deliveries, pending_deliveries
from claude_hooks.store.spend import write_reset


@dataclass(frozen=True, slots=True)
class PendingEntry:
    id: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    repo: str | None = None  # the issue or pull request the delivery is about, if any
    number: int | None = None
    record: DeliveryRecord | None = None  # the delivery, read with its schedule by `due`


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


# SQLite: insert deliveries, skipping an id recorded before; the ids inserted come back.
_NEW_DELIVERIES = (
    sqlite.insert(deliveries)
    .on_conflict_do_nothing(index_elements=["id"])
    .returning(deliveries.c.id)
)
# PostgreSQL: every delivery and its schedule in one statement, its arrays sent in binary
# (the parameters: `delivery_arrays` of `first_of_each`; the ids inserted come back).
DEFER_ALL_SQL = (
    "WITH new AS ("
    + INSERT_DELIVERIES_SQL
    + " ON CONFLICT (id) DO NOTHING RETURNING id, received_at, reason)"
    " INSERT INTO pending_deliveries (id, attempts, next_attempt_at, last_error)"
    " SELECT id, 0, received_at, reason FROM new RETURNING id"
)
_DEFER_ALL = Prepared(sa.text(DEFER_ALL_SQL), binary=True)


def first_of_each(records: Sequence[DeliveryRecord]) -> list[DeliveryRecord]:
    """The first record of each delivery id, in order: a second one is a duplicate."""
    first: dict[str, DeliveryRecord] = {}
    for record in records:
        first.setdefault(record.id, record)
    return list(first.values())


def deferred(records: Sequence[DeliveryRecord], inserted: set[str]) -> list[bool]:
    """For each of `records`, whether it was deferred: its id was inserted, by this record
    (not an earlier one of the same id)."""
    firsts = {record.id: record for record in reversed(records)}
    return [record.id in inserted and firsts[record.id] is record for record in records]


def defer_all(conn: sa.Connection, records: Sequence[DeliveryRecord]) -> list[bool]:
    """Record `records` as pending, each due at its arrival (so the retrier takes them in
    arrival order), within the caller's transaction; for each, False if its id was recorded
    before (or earlier in `records`)."""
    new = first_of_each(records)
    if conn.dialect.name == "postgresql":
        inserted = {row[0] for row in _DEFER_ALL.run(conn, delivery_arrays(new)).fetchall()}
    else:
        rows = [delivery_row(record) for record in new]
        inserted = {row[0] for row in conn.execute(_NEW_DELIVERIES, rows).fetchall()}
        schedule = [
            {
                "id": record.id,
                "attempts": 0,
                "next_attempt_at": record.received_at,
                "last_error": record.reason,
            }
            for record in new
            if record.id in inserted
        ]
        if schedule:
            conn.execute(pending_deliveries.insert(), schedule)
    return deferred(records, inserted)


class PendingStore(Protocol):
    async def add_pending(self, record: DeliveryRecord, next_attempt_at: float) -> bool: ...
    async def defer(self, record: DeliveryRecord) -> bool: ...
    async def due(self, now: float, limit: int) -> list[PendingEntry]: ...
    async def get_pending(self, delivery_id: str) -> PendingEntry | None: ...
    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None: ...
    async def count_pending(self, reason: str | None = None) -> int: ...


def _entry(row: sa.Row[Any], record: DeliveryRecord | None = None) -> PendingEntry:
    return PendingEntry(
        row.id, row.attempts, row.next_attempt_at, row.last_error, row.repo, row.number, record
    )


# A pending delivery's schedule, with the issue its delivery is about.
_ENTRIES = sa.select(pending_deliveries, deliveries.c.repo, deliveries.c.number).join(
    deliveries, deliveries.c.id == pending_deliveries.c.id
)
# The same with the whole delivery: the retrier reads a batch in one round trip.
_DUE = sa.select(
    deliveries,
    pending_deliveries.c.attempts,
    pending_deliveries.c.next_attempt_at,
    pending_deliveries.c.last_error,
).join(pending_deliveries, deliveries.c.id == pending_deliveries.c.id)


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

    def defer_batch(self, records: Sequence[DeliveryRecord]) -> list[bool]:
        """`defer_all` in a transaction of its own: several deliveries, one commit. (A
        service on PostgreSQL sends its deferrals from the event loop: `deferrals`.)"""
        with self.engine.begin() as conn:
            return defer_all(conn, records)

    async def defer(self, record: DeliveryRecord) -> bool:
        """Record a delivery deferred by its crowded node, due at once (as `add_pending`, due at
        its arrival); False if its id was seen. On PostgreSQL deferrals are committed together
        (see `offload`)."""
        return self.defer_batch([record])[0]

    async def due(self, now: float, limit: int) -> list[PendingEntry]:
        """The pending deliveries due by `now`, earliest first, each with its record."""
        query = (
            _DUE.where(pending_deliveries.c.next_attempt_at <= now)
            .order_by(pending_deliveries.c.next_attempt_at)
            .limit(limit)
        )
        with self.reader.connect() as conn:
            return [_entry(row, delivery_of(row)) for row in conn.execute(query)]

    async def get_pending(self, delivery_id: str) -> PendingEntry | None:
        query = _ENTRIES.where(pending_deliveries.c.id == delivery_id)
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

    async def count_pending(self, reason: str | None = None) -> int:
        """Pending deliveries (`reason`: only those still waiting for that reason)."""
        query = sa.select(sa.func.count()).select_from(pending_deliveries)
        if reason is not None:
            query = query.where(pending_deliveries.c.last_error == reason)
        with self.reader.connect() as conn:
            return int(conn.scalar(query) or 0)
