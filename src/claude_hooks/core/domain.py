"""The nouns every layer shares: task kinds and states, dispatch requests, tasks, agents."""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from typing import Any

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# Every pair of digits (10 bits): an id is 8 look-ups, where a loop over its 16 digits cost
# more than the rest of making it.
_PAIRS = [first + second for first in _CROCKFORD for second in _CROCKFORD]
_ID_BITS = (1 << 80) - 1  # an id's 16 digits (48 bits of milliseconds: until the year 10889)


# What became of a recorded webhook delivery. `cancelled`: it placed no work but cancelled some
# (an unassignment, a closed PR).
RECORDED_OUTCOMES = ("queued", "cancelled", "ignored", "duplicate", "error", "pending")
# The deliveries' lists (API, CLI, dashboard) also show what never became a recorded delivery:
# requests refused at the door, and deliveries waiting in a node's spool (see `spool`).
REJECTED = "rejected"
SPOOLED = "spooled"
DELIVERY_OUTCOMES = (*RECORDED_OUTCOMES, REJECTED, SPOOLED)


class TaskKind(enum.StrEnum):
    WORK_ISSUE = "work_issue"
    REVIEW_PR = "review_pr"
    ADDRESS_REVIEW = "address_review"
    MERGE_PR = "merge_pr"
    FIX_CI = "fix_ci"
    ANSWER_MENTION = "answer_mention"


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    HELD = "held"  # its session is paused (`@<login> pause`): out of the queue until resumed
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


def session_key(agent_type: str, repo: str, number: int) -> str:
    """One conversation per (type, repository, issue): any instance of the type can resume it."""
    return f"{agent_type}:{repo}:{number}"


class _Ids:
    """Time-sortable ids, unique within the process: within one millisecond a counter (from a
    random start) makes the low 32 bits, so two ids never collide however fast they come."""

    def __init__(self) -> None:
        self.last_ms = -1
        self.counter = 0

    def next(self, now: float | None) -> str:
        ms = int((time.time() if now is None else now) * 1000)
        if ms <= self.last_ms:
            ms = self.last_ms
            self.counter = (self.counter + 1) & 0xFFFFFFFF
        else:
            self.last_ms = ms
            self.counter = int.from_bytes(os.urandom(4), "big") >> 1
        value = ((ms << 32) | self.counter) & _ID_BITS
        pairs = _PAIRS
        return (
            pairs[value >> 70]
            + pairs[(value >> 60) & 1023]
            + pairs[(value >> 50) & 1023]
            + pairs[(value >> 40) & 1023]
            + pairs[(value >> 30) & 1023]
            + pairs[(value >> 20) & 1023]
            + pairs[(value >> 10) & 1023]
            + pairs[value & 1023]
        )


_ids = _Ids()


def new_task_id(now: float | None = None) -> str:
    """A 16-character id that sorts by creation time (48 bits of milliseconds, 32 bits more)."""
    return _ids.next(now)


@dataclass(frozen=True, slots=True)
class DispatchRequest:
    """What a flow asks of a type: the pool decides which instance does it."""

    kind: TaskKind
    repo: str
    number: int
    session_key: str
    payload: dict[str, Any] = field(default_factory=dict)
    delivery_id: str | None = None
    # False: never merged into a queued task of its key and kind (`on_new_event = "queue"`).
    coalesce: bool = True

    @classmethod
    def for_type(
        cls,
        agent_type: str,
        kind: TaskKind,
        repo: str,
        number: int,
        payload: dict[str, Any] | None = None,
        delivery_id: str | None = None,
    ) -> DispatchRequest:
        return cls(
            kind=kind,
            repo=repo,
            number=number,
            session_key=session_key(agent_type, repo, number),
            payload=payload or {},
            delivery_id=delivery_id,
        )

    def task(self, agent_type: str, now: float) -> Task:
        """The queued task this request becomes, before the store places it."""
        return Task(
            id=new_task_id(now),
            type=agent_type,
            agent="",
            kind=self.kind,
            session_key=self.session_key,
            repo=self.repo,
            number=self.number,
            state=TaskState.QUEUED,
            seq=0,
            enqueued_at=now,
            payload=self.payload,
            delivery_id=self.delivery_id,
        )


@dataclass(slots=True)
class Task:
    """A task as stored: the request, where it was placed, and how it went."""

    id: str
    type: str
    agent: str
    kind: TaskKind
    session_key: str
    repo: str
    number: int
    state: TaskState
    seq: int
    enqueued_at: float
    payload: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    result: str | None = None
    error: str | None = None
    cost_usd: float | None = None
    claude_session_id: str | None = None
    delivery_id: str | None = None
    cancel_requested: bool = False
    pid: int | None = None
    pid_start: int | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return round(end - self.started_at, 3)


@dataclass(frozen=True, slots=True)
class AgentInstance:
    """An instance row: one worker runs per enabled instance."""

    name: str
    type: str
    enabled: bool = True
    created_at: float = 0.0
    node: str | None = None  # the live node holding it, if any
    pinned_node: str | None = None  # only this node may hold it
    auto: bool = False  # added by the elastic rule (`<type>-auto-N`), retired when idle
