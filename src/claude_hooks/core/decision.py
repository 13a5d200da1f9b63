"""What a delivery decides, and the read-only view it decides from.

The flows and the loop guard read the state they need through `IntakeView` (the store
implements it) and return a `Decision` that carries every write the delivery makes: tasks,
cancels, pull links, fix attempts, review rounds, trips, CI watches, comments and labels. The
intake applies the whole decision in the transaction that records the delivery, so a
duplicate (raced on another node) or a delivery that fails while applying changes nothing but
its own record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from claude_hooks.core.domain import DispatchRequest
from claude_hooks.core.new_event import RunningTask
from claude_hooks.core.outcomes import OutcomeFact


@dataclass(frozen=True, slots=True)
class ForgeComment:
    """A comment the service itself posts, with the token of `as_type`."""

    as_type: str
    repo: str
    number: int
    body: str


@dataclass(frozen=True, slots=True)
class Label:
    """A label the service puts on an issue or pull request, with the token of `as_type`."""

    as_type: str
    repo: str
    number: int
    name: str


@dataclass(frozen=True, slots=True)
class ForgeCommand:
    """A command a comment addressed to an agent login, for the intake to carry out."""

    word: str  # one of flows.COMMANDS
    agent_type: str
    repo: str
    number: int  # the issue or PR commented on: replies go there
    session: str  # the session key the command is about
    keys: tuple[str, ...]  # the session keys whose work `stop` cancels
    comment_id: int
    sender: str
    allowed: bool  # False: the sender may not trigger work, and is refused


@dataclass(frozen=True, slots=True)
class PullLink:
    """An agent's pull request, and the issue whose conversation it continues."""

    repo: str
    pr_number: int
    author_type: str
    issue_number: int
    head_sha: str
    open: bool


@dataclass(frozen=True, slots=True)
class CiWatch:
    repo: str
    pr_number: int
    head_sha: str
    created_at: float


@dataclass(frozen=True, slots=True)
class IssueGuard:
    """An issue's lifecycle counters since `since` (a human's reset), and whether it tripped."""

    repo: str
    number: int
    since: float
    review_rounds: int
    tripped_at: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Trip:
    """An issue that needs a human from now on. Its comment and label go out only if the
    trip is new when applied: of two nodes tripping one issue at once, one asks the humans."""

    repo: str
    number: int
    reason: str
    at: float
    comment: ForgeComment | None = None
    label: Label | None = None


@dataclass(frozen=True, slots=True)
class PolicyFault:
    """A broken policy file met by a delivery of `repo`: its comment goes out only if no
    delivery (on any node) told the repository of this version of the file before."""

    repo: str
    file_sha: str
    comment: ForgeComment


Assigned = tuple[str, int, frozenset[str]]  # (repo, number, the agent types assigned now)
Reset = tuple[str, int, float]  # (repo, issue, since): a human's event resets its loop guard
FixAttempt = tuple[str, int, str]  # (repo, pull request, head sha): one more fix of its CI
ReviewRound = tuple[str, int]  # (repo, issue): one more changes-requested round
Labels = tuple[str, int, frozenset[str]]  # (repo, number, the labels on it now)
Retarget = tuple[str, dict[str, Any]]  # (session key, payload fields its queued review takes)


@dataclass(slots=True)
class Decision:
    reason: str = ""
    dispatch: list[tuple[str, DispatchRequest]] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)  # session keys whose active tasks stop
    comments: list[ForgeComment] = field(default_factory=list)  # to the outbox
    watch: CiWatch | None = None
    unwatch: list[tuple[str, int]] = field(default_factory=list)  # (repo, pr) CI watches dropped
    links: list[PullLink] = field(default_factory=list)  # agents' pull requests recorded
    fix_attempts: list[FixAttempt] = field(default_factory=list)
    review_rounds: list[ReviewRound] = field(default_factory=list)
    trips: list[Trip] = field(default_factory=list)
    # The agent types now assigned to (repo, number), saved once the dispatches are committed,
    # so an assignment whose work could not be queued is seen as new when replayed.
    assigned: Assigned | None = None
    cleanup: list[str] = field(default_factory=list)  # keys whose workdirs go once idle
    # Issues whose loop guard a human's event resets (see `loop_guard`).
    resets: list[Reset] = field(default_factory=list)
    # Commands in a comment (`service.forge_commands`), carried out by the intake.
    commands: list[ForgeCommand] = field(default_factory=list)
    # The labels now on (repo, number), saved with the dispatches (as `assigned`): not saved
    # when placing failed, so the label is seen as new when replayed.
    labels: Labels | None = None
    # Mentions to send into their session's running task, or else to dispatch (`steering`).
    steer: list[tuple[str, DispatchRequest]] = field(default_factory=list)
    # Queued reviews to point at a PR's new head, written with the decision.
    retarget: list[Retarget] = field(default_factory=list)
    # Running tasks a new event supersedes (`core.new_event`), stopped with the decision:
    # (the running task's id, the session key of the dispatch that supersedes it).
    stop: list[tuple[str, str]] = field(default_factory=list)
    # Repositories whose broken policy file this delivery met: one comment per file version.
    policy_faults: list[PolicyFault] = field(default_factory=list)
    # Outcome records (`core.outcomes`): what the delivery tells about the agents' work.
    outcomes: list[OutcomeFact] = field(default_factory=list)

    def keep(self, dispatch: list[tuple[str, DispatchRequest]]) -> None:
        """Dispatch only `dispatch`: a running task stays unless a kept dispatch supersedes it."""
        keys = {request.session_key for _, request in dispatch}
        self.dispatch = dispatch
        self.stop = [(task_id, key) for task_id, key in self.stop if key in keys]

    def link(self, repo: str, pr_number: int) -> PullLink | None:
        """A pull link this decision records, as the view will read it once applied."""
        return next((k for k in self.links if (k.repo, k.pr_number) == (repo, pr_number)), None)


def ignore(reason: str) -> Decision:
    return Decision(reason=reason)


class IntakeView(Protocol):
    """What the decide phase may read: the forge state the flows remembered and the loop
    guard's counters. Nothing here writes."""

    async def assigned_types(self, repo: str, number: int) -> set[str]: ...
    async def pull_link(self, repo: str, pr_number: int) -> PullLink | None: ...
    async def pull_link_for_head(self, repo: str, sha: str) -> PullLink | None: ...
    async def fix_attempts(self, repo: str, pr_number: int, sha: str) -> int: ...
    async def guard(self, repo: str, number: int) -> IssueGuard | None: ...
    async def issue_usage(self, repo: str, number: int, since: float) -> tuple[int, float]: ...
    async def labels(self, repo: str, number: int) -> set[str]: ...
    async def last_review(self, session_key: str) -> tuple[str, str] | None:
        """The session's last finished review: the head it looked at and its result."""
        ...

    async def running_task(self, session_key: str, kind: str) -> RunningTask | None:
        """The session's running task of `kind`, if one runs."""
        ...
