"""Storage for worktree states: each session's workdir as its last run left it, as a git
bundle, so the node that runs the session next continues from exactly that tree."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from claude_hooks.store.schema import worktree_states
from claude_hooks.store.upsert import upsert


@dataclass(frozen=True, slots=True)
class WorktreeState:
    """`head`: the commit checked out (on `branch`, or detached when None); `worktree` and
    `index_commit`: commits whose trees are the files and the index, children of `head`; the
    bundle carries them as `refs/claude-hooks/worktree` and `refs/claude-hooks/index`."""

    session_key: str
    branch: str | None
    head: str
    worktree: str
    index_commit: str
    bundle: bytes
    node: str | None
    updated_at: float


class WorktreeStateStore(Protocol):
    async def saved_worktree(self, session_key: str) -> str | None: ...
    async def get_state(self, session_key: str) -> WorktreeState | None: ...
    async def put_state(self, state: WorktreeState) -> None: ...
    async def forget_state(self, session_key: str) -> None: ...


class SqlWorktreeStates:
    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def saved_worktree(self, session_key: str) -> str | None:
        """The saved state's worktree commit, without reading its bundle."""
        query = sa.select(worktree_states.c.worktree).where(
            worktree_states.c.session_key == session_key
        )
        with self.reader.connect() as conn:
            found: str | None = conn.scalar(query)
            return found

    async def get_state(self, session_key: str) -> WorktreeState | None:
        query = sa.select(worktree_states).where(worktree_states.c.session_key == session_key)
        with self.reader.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return WorktreeState(**{**row._asdict(), "bundle": bytes(row.bundle)})

    async def put_state(self, state: WorktreeState) -> None:
        with self.engine.begin() as conn:
            upsert(conn, worktree_states, dataclasses.asdict(state))

    async def forget_state(self, session_key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                worktree_states.delete().where(worktree_states.c.session_key == session_key)
            )
