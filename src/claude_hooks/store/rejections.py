"""Storage for rejected deliveries: what arrived and why it was refused, never its body."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import sqlalchemy as sa

from claude_hooks.store.schema import rejections


@dataclass(frozen=True, slots=True)
class Rejection:
    received_at: float
    status: int
    reason: str
    size: int
    remote: str | None = None
    event: str | None = None
    delivery_id: str | None = None
    user_agent: str | None = None
    content_type: str | None = None
    content_length: str | None = None
    id: int | None = None


class RejectionStore(Protocol):
    async def add_rejection(self, rejection: Rejection) -> None: ...
    async def list_rejections(self, limit: int, offset: int) -> list[Rejection]: ...
    async def count_rejections(self, since: float | None = None) -> int: ...


class SqlRejections:
    """`RejectionStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def add_rejection(self, rejection: Rejection) -> None:
        values = asdict(rejection)
        del values["id"]
        with self.engine.begin() as conn:
            conn.execute(rejections.insert(), values)

    async def list_rejections(self, limit: int, offset: int) -> list[Rejection]:
        query = (
            sa.select(rejections)
            .order_by(rejections.c.received_at.desc(), rejections.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self.reader.connect() as conn:
            return [Rejection(**row._asdict()) for row in conn.execute(query)]

    async def count_rejections(self, since: float | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(rejections)
        if since is not None:
            query = query.where(rejections.c.received_at >= since)
        with self.reader.connect() as conn:
            return int(conn.scalar(query) or 0)
