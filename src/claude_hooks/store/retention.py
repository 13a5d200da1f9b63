"""Storage side of retention: which finished tasks still have a log, and the pruned marks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import sqlalchemy as sa

from claude_hooks.core.domain import TaskState
from claude_hooks.store.schema import (
    command_refusals,
    deliveries,
    living_comments,
    outbox,
    rejections,
    task_notes,
    tasks,
)

_FINISHED = [state.value for state in TaskState if state.finished]


class RetentionStore(Protocol):
    async def unpruned_logs(
        self, before: float, limit: int, node: str | None = None
    ) -> list[str]: ...
    async def mark_logs_pruned(self, task_ids: Iterable[str], now: float) -> None: ...
    async def prune_deliveries(self, before: float, now: float) -> int: ...
    async def drop_rejections(self, before: float) -> int: ...
    async def drop_comment_state(self, before: float) -> int: ...


class SqlRetention:
    """`RetentionStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def unpruned_logs(self, before: float, limit: int, node: str | None = None) -> list[str]:
        """Tasks that finished before `before` and whose log has not been pruned yet; with a
        `node`, only those whose log file is on that node (it ran them, or none did)."""
        query = (
            sa.select(tasks.c.id)
            .select_from(tasks.outerjoin(task_notes, task_notes.c.task_id == tasks.c.id))
            .where(
                tasks.c.state.in_(_FINISHED),
                tasks.c.finished_at < before,
                task_notes.c.log_pruned_at.is_(None),
                sa.true() if node is None else sa.or_(tasks.c.node == node, tasks.c.node.is_(None)),
            )
            .order_by(tasks.c.finished_at)
            .limit(limit)
        )
        with self.reader.connect() as conn:
            return list(conn.scalars(query).all())

    async def mark_logs_pruned(self, task_ids: Iterable[str], now: float) -> None:
        ids = list(task_ids)
        if not ids:
            return
        with self.engine.begin() as conn:
            noted = set(
                conn.scalars(sa.select(task_notes.c.task_id).where(task_notes.c.task_id.in_(ids)))
            )
            if noted:
                conn.execute(
                    task_notes.update()
                    .where(task_notes.c.task_id.in_(noted))
                    .values(log_pruned_at=now)
                )
            fresh = [{"task_id": i, "log_pruned_at": now} for i in ids if i not in noted]
            if fresh:
                conn.execute(task_notes.insert(), fresh)

    async def prune_deliveries(self, before: float, now: float) -> int:
        """Empty the bodies of settled deliveries received before `before`; rows stay."""
        with self.engine.begin() as conn:
            result = conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.received_at < before,
                    deliveries.c.pruned_at.is_(None),
                    deliveries.c.outcome != "pending",
                )
                .values(body="", pruned_at=now)
            )
            return int(result.rowcount)

    async def drop_rejections(self, before: float) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(rejections.delete().where(rejections.c.received_at < before))
            return int(result.rowcount)

    async def drop_comment_state(self, before: float) -> int:
        """Forget living comments last written, and refusals sent, before `before` (a living
        comment with a letter still waiting is kept: that letter edits it)."""
        with self.engine.begin() as conn:
            waiting = sa.select(outbox.c.living_key).where(outbox.c.living_key.is_not(None))
            living = conn.execute(
                living_comments.delete().where(
                    living_comments.c.written_at < before, living_comments.c.key.not_in(waiting)
                )
            )
            refusals = conn.execute(
                command_refusals.delete().where(command_refusals.c.refused_at < before)
            )
            return int(living.rowcount) + int(refusals.rowcount)
