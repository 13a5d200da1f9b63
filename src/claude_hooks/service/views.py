"""The JSON shapes of agents and tasks, shared by the HTTP API and the CLI's --json output."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from claude_hooks.core.domain import Task, TaskState
from claude_hooks.service.rejections import hint
from claude_hooks.store.base import Store
from claude_hooks.store.intake import DeliveryRecord
from claude_hooks.store.rejections import Rejection
from claude_hooks.store.runs import TaskRun

# Pagination offsets beyond this are a client's mistake, not a page (and overflow SQLite).
MAX_OFFSET = 10**9


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def task_view(task: Task, queue_position: int | None = None) -> dict[str, Any]:
    return {
        "id": task.id,
        "type": task.type,
        "agent": task.agent,
        "kind": task.kind.value,
        "state": task.state.value,
        "session_key": task.session_key,
        "repo": task.repo,
        "number": task.number,
        "attempts": task.attempts,
        "enqueued_at": iso(task.enqueued_at),
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
        "duration_s": task.duration_s,
        "cost_usd": task.cost_usd,
        "outcome": task.state.value if task.state.finished else None,
        "exit_code": task.exit_code,
        "result": task.result,
        "error": task.error,
        "claude_session_id": task.claude_session_id,
        "delivery_id": task.delivery_id,
        "cancel_requested": task.cancel_requested,
        "queue_position": queue_position if task.state is TaskState.QUEUED else None,
    }


def run_view(run: TaskRun) -> dict[str, Any]:
    return {
        "run": run.run,
        "node": run.node,
        "agent": run.agent,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_s": run.duration_s,
        "outcome": run.outcome.value if run.outcome is not None else None,
        "error": run.error,
        "log_offset": run.log_offset,
    }


async def history_view(store: Store, task: Task) -> dict[str, Any]:
    """What a single task's view adds: the task it retries, its retries, who cancelled it,
    whether its log was pruned, what its egress proxy refused and metered, every run."""
    note = await store.notes.get_note(task.id)
    egress = await store.egress.get_egress(task.id)
    return {
        "egress_blocked": [
            {"host": b.host, "port": b.port, "count": b.count} for b in egress.blocked
        ],
        "metered": egress.metered,
        "retry_of": note.retry_of,
        "retries": await store.notes.retries_of(task.id),
        "cancelled_by": note.cancelled_by if task.state is TaskState.CANCELLED else None,
        "log_pruned": note.log_pruned_at is not None,
        "moved_from": note.moved_from,
        "moved_at": iso(note.moved_at),
        "runs": [run_view(run) for run in await store.runs.of_task(task.id)],
    }


def delivery_view(record: DeliveryRecord, with_body: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": record.id,
        "flavor": record.flavor,
        "event": record.event,
        "event_type": record.event_type,
        "action": record.action,
        "repo": record.repo,
        "number": record.number,
        "sender": record.sender,
        "received_at": iso(record.received_at),
        "outcome": record.outcome,
        "reason": record.reason,
        "task_ids": record.task_ids,
        "replay_of": record.replay_of,
        "pruned": record.pruned_at is not None,
    }
    if with_body:
        view["body"] = record.body
    return view


def rejection_view(rejection: Rejection) -> dict[str, Any]:
    """A refused delivery, in the shape of a delivery where the two share a meaning."""
    return {
        "id": f"rejected-{rejection.id}",
        "received_at": iso(rejection.received_at),
        "outcome": "rejected",
        "status": rejection.status,
        "reason": rejection.reason,
        "hint": hint(rejection.status, rejection.reason),
        "remote": rejection.remote,
        "event_type": rejection.event,
        "delivery_id": rejection.delivery_id,
        "user_agent": rejection.user_agent,
        "content_type": rejection.content_type,
        "content_length": rejection.content_length,
        "size": rejection.size,
    }
