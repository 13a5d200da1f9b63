"""What a user does to a task through the service besides cancelling it (`Pool.cancel_task`,
over `control.cancel_task`): retry it."""

from __future__ import annotations

from claude_hooks.core.domain import DispatchRequest, Task, TaskState
from claude_hooks.errors import ConflictError
from claude_hooks.service.pool import Pool
from claude_hooks.service.task_lookup import find_task

RETRYABLE = (TaskState.FAILED, TaskState.CANCELLED)


async def retry(pool: Pool, task_id: str) -> Task:
    """A new task with the old one's key, kind and payload, placed by the pool as usual and
    linked to the old one; only a failed or cancelled task can be retried."""
    old = await find_task(pool.store, task_id)
    if old.state not in RETRYABLE:
        raise ConflictError(
            f"task {old.id} is {old.state.value}: only a failed or cancelled task can be "
            "retried (cancel it first if it should start over)"
        )
    if old.type not in pool.config.types:
        raise ConflictError(
            f"task {old.id} is for type {old.type!r}, which is no longer configured: "
            f"add a [types.{old.type}] table to retry it"
        )
    request = DispatchRequest(
        kind=old.kind,
        repo=old.repo,
        number=old.number,
        session_key=old.session_key,
        payload=old.payload,
        delivery_id=old.delivery_id,
    )
    new = await pool.dispatch(old.type, request)
    await pool.store.notes.link_retry(new.id, old.id)
    return new
