"""The JSON shapes of agents and tasks, shared by the HTTP API and the CLI's --json output."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from claude_hooks.domain import Task, TaskState
from claude_hooks.store.intake import DeliveryRecord

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
    }
    if with_body:
        view["body"] = record.body
    return view
