"""Steering messages: mentions sent into a running task instead of queueing behind it.

A message is written only while its session's task runs (checked in the same transaction,
under the task row's lock on PostgreSQL), so one that arrives as the run ends either reaches
the run or is seen by the end-of-run pass, which turns whatever the agent did not take into
follow-up tasks: never lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from claude_hooks.core.domain import TaskState
from claude_hooks.store import wakeups
from claude_hooks.store.schema import steers, tasks


@dataclass(frozen=True, slots=True)
class Steer:
    id: int
    task_id: str
    sender: str
    body: str
    comment_id: int | None
    payload: dict[str, Any]
    at: float
    delivered_at: float | None = None
    followed_up_at: float | None = None


class SteerStore(Protocol):
    async def steer(
        self,
        session_key: str,
        sender: str,
        body: str,
        comment_id: int | None,
        payload: dict[str, Any],
        now: float,
    ) -> str | None: ...
    async def take(self, task_id: str, now: float) -> list[Steer]: ...
    async def leftovers(self, task_id: str) -> list[Steer]: ...
    async def followed_up(self, steer_id: int, now: float) -> None: ...
    async def of_task(self, task_id: str) -> list[Steer]: ...


def _steer(row: sa.Row[Any]) -> Steer:
    return Steer(**row._asdict())


class SqlSteering:
    """`SteerStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def steer(
        self,
        session_key: str,
        sender: str,
        body: str,
        comment_id: int | None,
        payload: dict[str, Any],
        now: float,
    ) -> str | None:
        """Send a message to the session's running task: its id, or None if none runs."""
        with self.engine.begin() as conn:
            running = (
                sa.select(tasks.c.id)
                .where(
                    tasks.c.session_key == session_key,
                    tasks.c.state == TaskState.RUNNING.value,
                    tasks.c.cancel_requested == sa.false(),
                )
                .with_for_update()
            )
            task_id = conn.execute(running).scalar()
            if task_id is None:
                return None
            conn.execute(
                steers.insert().values(
                    task_id=task_id,
                    sender=sender,
                    body=body,
                    comment_id=comment_id,
                    payload=payload,
                    at=now,
                )
            )
            wakeups.notify(conn, wakeups.STEER, task_id)
            return str(task_id)

    async def take(self, task_id: str, now: float) -> list[Steer]:
        """The messages not yet given to the task's agent, marked given."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                steers.update()
                .where(steers.c.task_id == task_id, steers.c.delivered_at.is_(None))
                .values(delivered_at=now)
                .returning(*steers.c)
            ).all()
        return sorted((_steer(row) for row in rows), key=lambda s: s.id)

    async def leftovers(self, task_id: str) -> list[Steer]:
        """The messages of an ended task that its agent never took, not yet followed up."""
        with self.reader.connect() as conn:
            rows = conn.execute(
                sa.select(steers)
                .where(
                    steers.c.task_id == task_id,
                    steers.c.delivered_at.is_(None),
                    steers.c.followed_up_at.is_(None),
                )
                .order_by(steers.c.id)
            ).all()
        return [_steer(row) for row in rows]

    async def followed_up(self, steer_id: int, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(steers.update().where(steers.c.id == steer_id).values(followed_up_at=now))

    async def of_task(self, task_id: str) -> list[Steer]:
        with self.reader.connect() as conn:
            rows = conn.execute(
                sa.select(steers).where(steers.c.task_id == task_id).order_by(steers.c.id)
            ).all()
        return [_steer(row) for row in rows]
