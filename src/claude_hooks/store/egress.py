"""Storage for what a sandboxed task's egress proxy saw: one row per task, rewritten at most once
a second while it runs and when it ends (the proxy counts in memory, so a refusal loop costs one
write a second)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from claude_hooks.store.schema import task_egress


@dataclass(frozen=True, slots=True)
class EgressBlock:
    host: str
    port: int
    count: int


@dataclass(frozen=True, slots=True)
class TaskEgress:
    task_id: str
    blocked: tuple[EgressBlock, ...] = ()
    metered: dict[str, Any] | None = None  # the Messages API usage the proxy relayed


class EgressStore(Protocol):
    async def put_egress(
        self,
        task_id: str,
        agent_type: str,
        blocked: list[EgressBlock],
        metered: dict[str, Any] | None,
    ) -> None: ...
    async def get_egress(self, task_id: str) -> TaskEgress: ...
    async def blocked_by_type(self) -> dict[str, int]: ...


class SqlEgress:
    """`EgressStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def put_egress(
        self,
        task_id: str,
        agent_type: str,
        blocked: list[EgressBlock],
        metered: dict[str, Any] | None,
    ) -> None:
        """One row per run: a retried task's later run replaces the earlier one's."""
        values = {
            "type": agent_type,
            "blocked_total": sum(block.count for block in blocked),
            "blocked": json.dumps([[b.host, b.port, b.count] for b in blocked]),
            "metered": None if metered is None else json.dumps(metered),
        }
        with self.engine.begin() as conn:
            updated = conn.execute(
                task_egress.update().where(task_egress.c.task_id == task_id).values(**values)
            )
            if updated.rowcount == 0:
                conn.execute(task_egress.insert().values(task_id=task_id, **values))

    async def get_egress(self, task_id: str) -> TaskEgress:
        query = sa.select(task_egress).where(task_egress.c.task_id == task_id)
        with self.reader.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return TaskEgress(task_id)
        blocked = tuple(EgressBlock(str(h), int(p), int(n)) for h, p, n in json.loads(row.blocked))
        metered = json.loads(row.metered) if row.metered is not None else None
        return TaskEgress(task_id, blocked, metered)

    async def blocked_by_type(self) -> dict[str, int]:
        query = sa.select(task_egress.c.type, sa.func.sum(task_egress.c.blocked_total)).group_by(
            task_egress.c.type
        )
        with self.reader.connect() as conn:
            return {str(t): int(n or 0) for t, n in conn.execute(query).all()}
