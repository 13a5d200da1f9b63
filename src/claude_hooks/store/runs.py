"""Every run of a task, whatever its runner: where and when it ran, how it ended, and where its
output begins in the task's log.

A run is opened by the claim that starts it and closed by whatever ends it (the finish, a
return to the queue, the recovery of a stopped service, the rescue of a dead node's work), each
in the transaction that already does so: recording runs adds statements, never a transaction.
A task's log file is on the node that ran it and grows by one part per run there, so a run's
bytes go from its `log_offset` to the next run's on the same node (or the end of the file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import sqlalchemy as sa

from claude_hooks.core.domain import TaskState
from claude_hooks.errors import NotFoundError
from claude_hooks.store.prepared import Prepared
from claude_hooks.store.schema import task_runs


class RunOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETURNED = "returned"  # put back in its queue on purpose (the API breaker, a stop, ...)
    LOST = "lost"  # its process was gone: its node died, or the service stopped under it


@dataclass(frozen=True, slots=True)
class TaskRun:
    task_id: str
    run: int  # 1, 2, ... in the order the runs started
    node: str | None
    agent: str  # the instance that ran it
    started_at: float
    log_offset: int  # where its output begins in the log file on `node`
    finished_at: float | None = None  # None: running
    outcome: RunOutcome | None = None  # None: running
    error: str | None = None  # the error, or why it went back to the queue

    @property
    def duration_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


def log_end(runs: Sequence[TaskRun], run: TaskRun) -> int | None:
    """Where `run`'s output ends in its node's log file: the offset of the next run there;
    None for the last run on that node (its output goes to the end of the file)."""
    later = [r.log_offset for r in runs if r.run > run.run and r.node == run.node]
    return min(later) if later else None


def pick_run(task_id: str, runs: Sequence[TaskRun], number: int) -> TaskRun:
    """Run `number` of the task's `runs`; NotFoundError, saying how many there are, if none."""
    chosen = next((r for r in runs if r.run == number), None)
    if chosen is None:
        times = "never ran" if not runs else f"ran {len(runs)} time{'s' if len(runs) > 1 else ''}"
        raise NotFoundError(
            f"task {task_id} has no run {number}: it {times} (its runs are on its page and in "
            "'claude-hooks tasks show')"
        )
    return chosen


# Run on the driver's cursor (`prepared`): a claim and a finish are on every task's path.
_OPEN = Prepared(
    task_runs.insert().from_select(
        ["task_id", "run", "node", "agent", "started_at", "log_offset"],
        sa.select(
            sa.bindparam("b_task", type_=sa.String),
            sa.select(sa.func.coalesce(sa.func.max(task_runs.c.run), 0) + 1)
            .where(task_runs.c.task_id == sa.bindparam("b_task"))
            .scalar_subquery(),
            sa.bindparam("b_node", type_=sa.String),
            sa.bindparam("b_agent", type_=sa.String),
            sa.bindparam("b_now", type_=sa.Float),
            sa.bindparam("b_offset", type_=sa.BigInteger),
        ),
    )
)
_CLOSE = Prepared(
    task_runs.update()
    .where(task_runs.c.task_id == sa.bindparam("b_task"), task_runs.c.finished_at.is_(None))
    .values(
        finished_at=sa.bindparam("b_now"),
        outcome=sa.bindparam("b_outcome"),
        error=sa.bindparam("b_error"),
    )
)


def open_run(
    conn: sa.Connection, task_id: str, agent: str, node: str | None, now: float, offset: int
) -> None:
    """Record the start of a task's next run, within the claim's transaction."""
    params = {"b_task": task_id, "b_node": node, "b_agent": agent, "b_now": now}
    _OPEN.run(conn, {**params, "b_offset": offset}).close()


def close_run(
    conn: sa.Connection,
    task_ids: str | Sequence[str],
    outcome: RunOutcome,
    now: float,
    error: str | None = None,
) -> None:
    """End the open run of each task, within the caller's transaction."""
    ids = [task_ids] if isinstance(task_ids, str) else task_ids
    for task_id in ids:
        params = {"b_task": task_id, "b_now": now, "b_outcome": outcome.value, "b_error": error}
        _CLOSE.run(conn, params).close()


def ended(state: TaskState) -> RunOutcome:
    """How a run ended, from the state its task finished in."""
    if state is TaskState.SUCCEEDED:
        return RunOutcome.SUCCEEDED
    if state is TaskState.CANCELLED:
        return RunOutcome.CANCELLED
    return RunOutcome.FAILED


def _run(row: sa.Row[tuple[object, ...]]) -> TaskRun:
    m = row._mapping
    return TaskRun(
        task_id=m["task_id"],
        run=m["run"],
        node=m["node"],
        agent=m["agent"],
        started_at=m["started_at"],
        log_offset=int(m["log_offset"]),
        finished_at=m["finished_at"],
        outcome=None if m["outcome"] is None else RunOutcome(m["outcome"]),
        error=m["error"],
    )


class RunStore(Protocol):
    async def of_task(self, task_id: str) -> list[TaskRun]: ...


class SqlRuns:
    """`RunStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def of_task(self, task_id: str) -> list[TaskRun]:
        """The task's runs, first first."""
        query = sa.select(task_runs).where(task_runs.c.task_id == task_id).order_by(task_runs.c.run)
        with self.reader.connect() as conn:
            return [_run(row) for row in conn.execute(query)]
