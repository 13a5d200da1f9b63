"""Outcome facts: what a delivery tells about how the agents' work turned out.

The decide phase derives them from the events it already receives (`service/outcomes.py`)
and puts them in the `Decision`; the transaction that records the delivery writes them as
outcome records (`store/outcomes.py`), which retention never prunes. `claude-hooks report`,
the dashboard and the metrics read those records, not the deliveries' bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class SessionSeen:
    """A task was dispatched for a session: its first sighting records the session with its
    prompt variant and model (kept for its whole life); a `work_issue` is its assignment."""

    session_key: str
    agent_type: str
    repo: str
    number: int
    at: float
    assigned: bool
    variant: str | None
    model: str | None


PullEvent = Literal["opened", "approved", "changes_requested", "merged", "closed", "ci"]


@dataclass(frozen=True, slots=True)
class PullFact:
    """Something that happened to an agent's pull request. `opened` is recorded once (the
    first time the PR is seen) with its author's session and first head; `ci` says whether
    CI passed (`passed`) on `head_sha`, which counts only when it is the PR's first head."""

    event: PullEvent
    repo: str
    pr_number: int
    at: float
    session_key: str | None = None  # opened: the author's session
    author_type: str | None = None  # opened
    head_sha: str | None = None
    passed: bool | None = None


InterventionKind = Literal["commands", "stops", "escalations", "human_commits"]


@dataclass(frozen=True, slots=True)
class Intervention:
    """A human stepped in: a command, a stop, an escalation (a loop-guard trip) or commits
    pushed by a human to an agent's branch. `session_key` None: every assigned session of
    the issue `(repo, number)` (an escalation is per issue)."""

    kind: InterventionKind
    repo: str
    number: int
    session_key: str | None
    count: int = 1


OutcomeFact = SessionSeen | PullFact | Intervention
