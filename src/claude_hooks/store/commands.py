"""What forge commands leave in the database: paused sessions (whose tasks wait as `held`)
and the last refusal sent to a sender on an issue (one an hour at most)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from claude_hooks.core.domain import TaskState
from claude_hooks.store import wakeups
from claude_hooks.store.schema import command_refusals, paused_sessions, tasks

_QUEUED, _HELD = TaskState.QUEUED.value, TaskState.HELD.value


@dataclass(frozen=True, slots=True)
class Paused:
    session_key: str
    paused_by: str
    paused_at: float


class CommandStore(Protocol):
    async def pause(self, session_key: str, by: str, now: float) -> list[str] | None: ...
    async def resume(self, session_key: str) -> list[str] | None: ...
    async def paused(self) -> list[Paused]: ...
    async def refusal_due(
        self, repo: str, number: int, sender: str, now: float, window: float
    ) -> bool: ...


class SqlCommands:
    """`CommandStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def pause(self, session_key: str, by: str, now: float) -> list[str] | None:
        """Pause a session and hold its queued tasks: the ids held; None if already paused."""
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(paused_sessions.c.session_key).where(
                    paused_sessions.c.session_key == session_key
                )
            ).first()
            if exists is not None:
                return None
            conn.execute(
                paused_sessions.insert().values(
                    session_key=session_key, paused_by=by, paused_at=now
                )
            )
            held = conn.scalars(
                tasks.update()
                .where(tasks.c.session_key == session_key, tasks.c.state == _QUEUED)
                .values(state=_HELD)
                .returning(tasks.c.id)
            ).all()
            return sorted(held)

    async def resume(self, session_key: str) -> list[str] | None:
        """Resume a session: its held tasks go back to their place in their instance's queue.
        The instances to wake; None if the session was not paused."""
        with self.engine.begin() as conn:
            gone = conn.execute(
                paused_sessions.delete().where(paused_sessions.c.session_key == session_key)
            )
            if gone.rowcount == 0:
                return None
            agents = sorted(
                set(
                    conn.scalars(
                        tasks.update()
                        .where(tasks.c.session_key == session_key, tasks.c.state == _HELD)
                        .values(state=_QUEUED)
                        .returning(tasks.c.agent)
                    ).all()
                )
            )
            for agent in agents:
                wakeups.notify(conn, wakeups.TASK, agent)
            return agents

    async def paused(self) -> list[Paused]:
        with self.reader.connect() as conn:
            rows = conn.execute(sa.select(paused_sessions).order_by(paused_sessions.c.paused_at))
            return [Paused(r.session_key, r.paused_by, r.paused_at) for r in rows]

    async def refusal_due(
        self, repo: str, number: int, sender: str, now: float, window: float
    ) -> bool:
        """Whether to refuse `sender` on this issue out loud: not within `window` seconds of
        the last time. One statement, so two nodes never both answer."""
        with self.engine.begin() as conn:
            module = postgresql if conn.dialect.name == "postgresql" else sqlite
            insert = module.insert(command_refusals).values(
                repo=repo, number=number, sender=sender.lower(), refused_at=now
            )
            statement = insert.on_conflict_do_update(
                index_elements=["repo", "number", "sender"],
                set_={"refused_at": now},
                where=command_refusals.c.refused_at <= now - window,
            ).returning(command_refusals.c.refused_at)
            return conn.execute(statement).first() is not None
