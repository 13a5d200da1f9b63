"""Storage for what a task's own row does not say: which task it retries, who cancelled it,
and when its log was pruned. One row per task that has any of these, written when it happens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from claude_hooks.store.schema import task_notes


@dataclass(frozen=True, slots=True)
class TaskNote:
    task_id: str
    retry_of: str | None = None
    cancelled_by: str | None = None
    cancelled_by_delivery: str | None = None
    log_pruned_at: float | None = None
    moved_from: str | None = None  # the instance it was stolen from (`rebalance = "steal"`)
    moved_at: float | None = None
    group_wait: str | None = None  # why it waits for its concurrency group (`groups`)


def write_cancelled_by(
    conn: sa.Connection, task_id: str, who: str, delivery_id: str | None = None
) -> None:
    """Note who asked to cancel a task, within the caller's transaction; who asked first wins."""
    values = {"cancelled_by": who, "cancelled_by_delivery": delivery_id}
    updated = conn.execute(
        task_notes.update()
        .where(task_notes.c.task_id == task_id, task_notes.c.cancelled_by.is_(None))
        .values(**values)
        .returning(task_notes.c.task_id)
    ).first()
    if updated is None:
        exists = conn.scalar(sa.select(task_notes.c.task_id).where(task_notes.c.task_id == task_id))
        if exists is None:
            conn.execute(task_notes.insert().values(task_id=task_id, **values))


class NoteStore(Protocol):
    async def get_note(self, task_id: str) -> TaskNote: ...
    async def retries_of(self, task_id: str) -> list[str]: ...
    async def link_retry(self, task_id: str, retry_of: str) -> None: ...
    async def cancelled_by_delivery(self, delivery_id: str) -> list[str]: ...


class SqlNotes:
    """`NoteStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def get_note(self, task_id: str) -> TaskNote:
        query = sa.select(task_notes).where(task_notes.c.task_id == task_id)
        with self.reader.connect() as conn:
            row = conn.execute(query).first()
        return TaskNote(**row._asdict()) if row is not None else TaskNote(task_id)

    async def retries_of(self, task_id: str) -> list[str]:
        query = (
            sa.select(task_notes.c.task_id)
            .where(task_notes.c.retry_of == task_id)
            .order_by(task_notes.c.task_id)
        )
        with self.reader.connect() as conn:
            return list(conn.scalars(query).all())

    async def link_retry(self, task_id: str, retry_of: str) -> None:
        self._upsert(task_id, retry_of=retry_of)

    async def cancelled_by_delivery(self, delivery_id: str) -> list[str]:
        query = (
            sa.select(task_notes.c.task_id)
            .where(task_notes.c.cancelled_by_delivery == delivery_id)
            .order_by(task_notes.c.task_id)
        )
        with self.reader.connect() as conn:
            return list(conn.scalars(query).all())

    def _upsert(self, task_id: str, **values: object) -> None:
        with self.engine.begin() as conn:
            updated = conn.execute(
                task_notes.update().where(task_notes.c.task_id == task_id).values(**values)
            )
            if updated.rowcount == 0:
                conn.execute(task_notes.insert().values(task_id=task_id, **values))
