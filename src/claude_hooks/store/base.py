"""The narrow storage interface the pool, the service and the CLI use.

Everything the scheduler needs persisted goes through these calls, so a PostgreSQL backend
can serve the same code: each method is one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from claude_hooks.core.decision import Assigned, Decision, Reset
from claude_hooks.core.domain import AgentInstance, Task, TaskState
from claude_hooks.errors import NoInstanceError
from claude_hooks.store.commands import CommandStore
from claude_hooks.store.decisions import Cause, Written
from claude_hooks.store.egress import EgressStore
from claude_hooks.store.elastic import ElasticStore
from claude_hooks.store.intake import DeliveryRecord, IntakeStore
from claude_hooks.store.labels import LabelStore
from claude_hooks.store.nodes import NodeStore, Recovered
from claude_hooks.store.notes import NoteStore
from claude_hooks.store.outbox import OutboxStore
from claude_hooks.store.outcomes import OutcomeStore
from claude_hooks.store.pending import PendingStore
from claude_hooks.store.rejections import RejectionStore
from claude_hooks.store.retention import RetentionStore
from claude_hooks.store.runs import RunStore
from claude_hooks.store.spend import SpendStore
from claude_hooks.store.steering import SteerStore
from claude_hooks.store.transcripts import SqlSessionStore
from claude_hooks.store.worktree_states import WorktreeStateStore


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """Where a queued task waits: its instance, type, session key, and place (`seq`)."""

    id: str
    agent: str
    type: str
    session_key: str
    kind: str
    seq: int


@dataclass(frozen=True, slots=True)
class Placement:
    """A task just queued by `Store.dispatch`, and what its instance was doing then."""

    task: Task
    position: int  # 1-based place in its instance's queue
    busy: bool  # the instance was running or had a queue: the task does not start at once


# What to record with the tasks a delivery placed: given them, the queued tasks its requests
# were merged into, the tasks it cancelled and the error that stopped the placing (if any),
# the delivery with its outcome, the assignment state and the loop-guard resets it leaves.
Settle = Callable[
    [list[Placement], list[Task], list[str], NoInstanceError | None],
    tuple[DeliveryRecord, Assigned | None, Sequence[Reset]],
]


@dataclass(frozen=True, slots=True)
class Dispatched:
    """What `Store.dispatch_all` applied, and why it stopped placing early (if it did)."""

    placements: list[Placement]
    failure: NoInstanceError | None
    recorded: bool  # False: the delivery's id was recorded before, and nothing was written
    # The requests merged into a queued twin, each with the twin's id (the twin has the newer
    # payload now).
    merged: list[Task] = field(default_factory=list)
    written: Written = field(default_factory=Written)


@dataclass(frozen=True, slots=True)
class Stolen:
    """Tasks `Store.steal` moved to an idle instance, in their new queue order."""

    source: str  # the instance they were queued on
    tasks: tuple[Task, ...]


@dataclass(frozen=True, slots=True)
class Claim:
    """What a worker got from the head of its queue."""

    task: Task | None
    blocked: bool = False  # the head waits for its session key to end on another instance
    waiting: str | None = None  # the head waits for its concurrency group: why, for people


@dataclass(frozen=True, slots=True)
class RunningLimit:
    """A repository's concurrency group as the head of a queue meets it: at most `of_type`
    tasks of `agent_type` and `of_all` of every type running at once in `repo` (None: no
    limit), across all nodes."""

    repo: str
    agent_type: str
    of_type: int | None = None
    of_all: int | None = None


@dataclass(frozen=True, slots=True)
class InstanceView:
    """An instance as the database has it: the one read model of the pool that the API, the
    dashboard, the metrics and the CLI all show."""

    name: str
    type: str
    enabled: bool
    running: str | None  # the id of the task it runs
    queue: tuple[str, ...]  # the ids of its queued tasks, head first
    node: str | None = None  # the node holding it; None: it waits for a node with room
    pinned_node: str | None = None
    auto: bool = False  # added by the elastic rule (`<type>-auto-N`)

    @property
    def state(self) -> str:
        if self.running is not None:
            return "busy"
        return "idle" if self.enabled else "disabled"


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """A node by name, and where its API answers (None until it said)."""

    name: str
    url: str | None


@dataclass(frozen=True, slots=True)
class TaskFilter:
    state: TaskState | None = None
    type: str | None = None
    agent: str | None = None
    repo: str | None = None
    session_key: str | None = None
    delivery_id: str | None = None


@dataclass(frozen=True, slots=True)
class Signal:
    """A change made outside the service (by the CLI) that the running service must act on."""

    id: int
    kind: str
    target: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended, as recorded on its task."""

    state: TaskState
    exit_code: int | None = None
    result: str | None = None
    error: str | None = None
    cost_usd: float | None = None
    claude_session_id: str | None = None


@dataclass(frozen=True, slots=True)
class TaskTally:
    """Finished tasks of one type, kind and end state: how many, their cost and run time."""

    type: str
    kind: str
    state: str
    count: int
    cost_usd: float
    run_seconds: float
    runs: int  # how many of them started (the rest were cancelled while queued)


@dataclass(frozen=True, slots=True)
class DeliveryTally:
    event_type: str
    outcome: str
    count: int


@dataclass(frozen=True, slots=True)
class Histogram:
    """Observations under some labels: their count, their sum, and how many fall at or under
    each bound (cumulative, in the order of the bounds asked for)."""

    labels: tuple[str, ...]
    count: int
    total: float
    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """The Claude conversation of a session key, resumed by the next task with that key."""

    key: str
    claude_session_id: str
    total_cost_usd: float | None
    updated_at: float


class Store(Protocol):
    @property
    def intake(self) -> IntakeStore: ...
    @property
    def pending(self) -> PendingStore: ...
    @property
    def rejections(self) -> RejectionStore: ...
    @property
    def notes(self) -> NoteStore: ...
    @property
    def egress(self) -> EgressStore: ...
    @property
    def outbox(self) -> OutboxStore: ...
    @property
    def retention(self) -> RetentionStore: ...
    @property
    def spend(self) -> SpendStore: ...
    @property
    def nodes(self) -> NodeStore: ...
    @property
    def elastic(self) -> ElasticStore: ...
    @property
    def transcripts(self) -> SqlSessionStore: ...
    @property
    def worktree_states(self) -> WorktreeStateStore: ...
    @property
    def commands(self) -> CommandStore: ...
    @property
    def labels(self) -> LabelStore: ...
    @property
    def steering(self) -> SteerStore: ...
    @property
    def outcomes(self) -> OutcomeStore: ...
    @property
    def runs(self) -> RunStore: ...
    @property
    def shared(self) -> bool: ...

    node: str | None  # the node this process is (`SqlStore.open`'s); None outside a service

    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def database_time(self) -> float: ...

    # agents
    async def list_agents(self) -> list[AgentInstance]: ...
    async def get_agent(self, name: str) -> AgentInstance | None: ...
    async def add_agent(
        self, name: str, agent_type: str, now: float, pinned_node: str | None = None
    ) -> AgentInstance: ...
    async def seed_agents(self, seeds: Iterable[tuple[str, str]], now: float) -> list[str]: ...
    async def set_agent_enabled(self, name: str, enabled: bool) -> None: ...
    async def remove_agent(self, name: str) -> None: ...

    # tasks
    async def dispatch(self, task: Task) -> Placement: ...
    async def dispatch_all(
        self,
        tasks: Sequence[Task],
        settle: Settle | None,
        decision: Decision | None = None,
        cause: Cause | None = None,
        pending: bool = False,
        separate: frozenset[str] = frozenset(),
    ) -> Dispatched: ...
    async def reassign_task(self, task_id: str) -> Task | None: ...
    async def orphaned_tasks(self) -> list[QueueEntry]: ...
    async def get_task(self, task_id: str) -> Task | None: ...
    async def task_ids_ending(self, tail: str, limit: int) -> list[str]: ...
    async def node_of(self, task_id: str) -> NodeAddress | None: ...
    async def list_tasks(self, where: TaskFilter, limit: int, offset: int) -> list[Task]: ...
    async def count_tasks(self, where: TaskFilter) -> int: ...
    async def claim_next(
        self,
        agent: str,
        now: float,
        group: RunningLimit | None = None,
        head: str | None = None,
        log_size: Callable[[str], int] | None = None,
    ) -> Claim: ...
    async def steal(self, agent: str, now: float) -> Stolen | None: ...
    async def queue_head(self, agent: str) -> str | None: ...
    async def group_waits(self) -> dict[str, str]:
        """Instance -> why its queue's head waits for its concurrency group (any node's)."""
        ...

    async def set_process(self, task_id: str, pid: int | None, pid_start: int | None) -> None: ...
    async def finish_task(self, task_id: str, outcome: Outcome, now: float) -> bool: ...
    async def fail_queued(self, task_id: str, reason: str, now: float) -> bool: ...
    async def cancel_tasks(self, task_ids: Sequence[str], cause: Cause) -> Written: ...
    async def requeue_interrupted(self, task_id: str, now: float, why: str) -> bool: ...
    async def recover(
        self, max_attempts: int, now: float, why: str = "the service stopped"
    ) -> list[Recovered]: ...

    # the pool's read model and summaries
    async def instances(self) -> list[InstanceView]: ...
    async def queue_positions(self, task_ids: Iterable[str]) -> dict[str, int]: ...
    async def task_tallies(self, since: float | None = None) -> list[TaskTally]: ...
    async def delivery_tallies(self, since: float | None = None) -> list[DeliveryTally]: ...
    async def cost_by_agent(self) -> dict[tuple[str, str], float]: ...
    async def run_durations(self, bounds: Sequence[float]) -> list[Histogram]: ...
    async def start_latencies(self, bounds: Sequence[float]) -> list[Histogram]: ...
    async def queue_waits(self, bounds: Sequence[float]) -> list[Histogram]: ...
    async def waiting_beside_idle(self) -> dict[str, int]: ...
    async def recently_finished(self, limit: int) -> list[Task]: ...

    # cursors and sessions
    async def load_cursors(self) -> dict[str, int]: ...
    async def get_session(self, key: str) -> SessionRecord | None: ...
    async def put_session(
        self, key: str, claude_session_id: str, total_cost_usd: float | None, now: float
    ) -> None: ...
    async def forget_session(self, key: str) -> None: ...

    # signals from the CLI to a running service
    async def emit_signal(self, kind: str, target: str, now: float) -> None: ...
    async def signals_after(self, last_id: int) -> list[Signal]: ...
    async def last_signal_id(self) -> int: ...
