"""Concurrency groups: at most N tasks running at once in a repository (of one type, or of
every type), held where the claim is made so two nodes cannot both start one.

On PostgreSQL the claim takes a transaction-scoped advisory lock on the repository's group
before counting, so the count and the claim of two nodes never interleave; SQLite's single
writer does the same by itself. A head that does not fit waits in its queue (head-of-line):
the queue stays first in, first out, and a finishing task wakes it. Why it waits is written
on its note with the claim, so every node's dashboard and `status` show it.
"""

from __future__ import annotations

import sqlalchemy as sa

from claude_hooks.core.domain import TaskState
from claude_hooks.store.base import RunningLimit
from claude_hooks.store.schema import task_notes, tasks
from claude_hooks.store.upsert import upsert

_HEAD = (
    sa.select(tasks.c.id, tasks.c.repo, tasks.c.type)
    .where(tasks.c.agent == sa.bindparam("b_agent"), tasks.c.state == TaskState.QUEUED.value)
    .order_by(tasks.c.seq)
    .limit(1)
)
_RUNNING = sa.select(tasks.c.type, tasks.c.number).where(
    tasks.c.repo == sa.bindparam("b_repo"), tasks.c.state == TaskState.RUNNING.value
)
_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(sa.bindparam("b_key"))))

STALE = "the queue's head changed: looked at again"


def wait_reason(conn: sa.Connection, agent: str, group: RunningLimit) -> str | None:
    """Why the head of `agent`'s queue may not start now, or None if it fits its group.

    `group` was read for the head the worker saw; if the head is another task now, the
    claim waits for the worker to look again (`STALE`)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK, {"b_key": f"claude-hooks:running:{group.repo}"})
    head = conn.execute(_HEAD, {"b_agent": agent}).first()
    if head is None or head.repo != group.repo or head.type != group.agent_type:
        return STALE
    reason = _full(conn, group)
    _note(conn, head.id, reason)
    return reason


def _full(conn: sa.Connection, group: RunningLimit) -> str | None:
    running = conn.execute(_RUNNING, {"b_repo": group.repo}).all()
    of_type = sorted(r.number for r in running if r.type == group.agent_type)
    if group.of_type is not None and len(of_type) >= group.of_type:
        return _reason(f"{group.agent_type} max_running {group.of_type}", group.repo, of_type)
    if group.of_all is not None and len(running) >= group.of_all:
        numbers = sorted(r.number for r in running)
        return _reason(f"max_running {group.of_all}", group.repo, numbers)
    return None


def _note(conn: sa.Connection, task_id: str, reason: str | None) -> None:
    """Keep why the head waits on its note (cleared once it fits), written only on a change."""
    noted = conn.execute(
        sa.select(task_notes.c.group_wait).where(task_notes.c.task_id == task_id)
    ).first()
    if (noted.group_wait if noted is not None else None) != reason:
        upsert(conn, task_notes, {"task_id": task_id, "group_wait": reason})


def group_waits(conn: sa.Connection) -> dict[str, str]:
    """Instance -> why the head of its queue waits for its concurrency group, from the notes
    the claims of every node wrote."""
    rows = conn.execute(
        sa.select(tasks.c.agent, task_notes.c.group_wait)
        .join(task_notes, task_notes.c.task_id == tasks.c.id)
        .where(tasks.c.state == TaskState.QUEUED.value, task_notes.c.group_wait.is_not(None))
        .order_by(tasks.c.seq)
    ).all()
    waits: dict[str, str] = {}
    for agent, reason in rows:
        waits.setdefault(agent, reason)
    return waits


def _reason(limit: str, repo: str, numbers: list[int]) -> str:
    held = ", ".join(f"#{n}" for n in dict.fromkeys(numbers))
    return f"waiting: {limit} in {repo}, held by {held}"
