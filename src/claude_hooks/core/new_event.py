"""What a new event does to a session key's work of one task kind (`on_new_event`).

`coalesce`: a queued task of that kind and key takes the newer payload, else a new task
queues (the store's `merge_into_twin`). `queue`: always a new task. `supersede`: as coalesce,
and a running task of that kind and key is stopped so the new one runs — but not when both
name the same head of a pull request (nothing moved), and never for an event the type's own
account caused (its own push must not stop its own run). Pure: the flows read the running
task and apply the answer to their decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from claude_hooks.config import NewEventRule


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A running task of one session key and kind, as the new event meets it."""

    id: str
    payload: dict[str, Any]

    @property
    def head_sha(self) -> str | None:
        head = self.payload.get("head_sha")
        return head if isinstance(head, str) and head else None


def superseded(
    rule: NewEventRule, head_sha: str | None, running: RunningTask | None, own: bool
) -> str | None:
    """The id of the running task the new event's task stops, or None.

    `head_sha`: the PR head the new task works on (if any); `own`: the event was caused by
    the type's own account."""
    if rule != "supersede" or running is None or own:
        return None
    if head_sha is not None and running.head_sha == head_sha:
        return None  # the same head: the running task already does this work
    return running.id
