"""Per-issue lifecycle limits across agent types: tasks, cost, and review rounds on its PR.

Agents can hand one issue back and forth without end (changes requested → fix → review → …).
When a limit trips, the issue takes no more agent work until a human steps in with a new
assignment, review request or mention: the flows' decision loses its dispatches (the delivery
is recorded as ignored with the reason), a comment asks the humans, and a label marks it.

The guard reads its counters through the read-only `IntakeView` and writes nothing: the
review rounds, the trip (with its comment and label) and a human's reset join the decision,
applied in the delivery's transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from claude_hooks.config import Config, FlowsConfig
from claude_hooks.core.decision import (
    Decision,
    ForgeComment,
    IntakeView,
    IssueGuard,
    Label,
    ReviewRound,
    Trip,
)
from claude_hooks.core.domain import DispatchRequest, TaskKind
from claude_hooks.core.policy import IssueLimits

log = logging.getLogger(__name__)

# Events by which a human (not an agent) hands an issue back to the agents, resetting its limits.
HUMAN_EVENTS = frozenset(
    {"issue_assign", "pull_request_review_request", "issue_comment", "pull_request_comment"}
)


def service_limits(flows: FlowsConfig) -> IssueLimits:
    """The service's own per-issue limits (`[flows]`), for a repository without its own."""
    return IssueLimits(
        flows.max_review_rounds, flows.max_tasks_per_issue, flows.max_cost_per_issue_usd
    )


def trip_reason(limits: IssueLimits, tasks: int, cost: float, review_rounds: int) -> str | None:
    """Why an issue may take no more agent work, or None while it is within its limits."""
    if review_rounds > limits.max_review_rounds:
        return (
            f"{review_rounds} changes-requested rounds on its pull request "
            f"(max_review_rounds = {limits.max_review_rounds})"
        )
    if tasks >= limits.max_tasks_per_issue:
        return f"{tasks} agent tasks (max_tasks_per_issue = {limits.max_tasks_per_issue})"
    limit = limits.max_cost_per_issue_usd
    if limit is not None and cost >= limit:
        return f"${cost:.2f} spent by agents (max_cost_per_issue_usd = {limit:g})"
    return None


def escalation(flows: FlowsConfig, reason: str) -> str:
    who = f"@{flows.escalate_to.lstrip('@')} " if flows.escalate_to else ""
    return (
        f"{who}claude-hooks stopped agent work on this issue: {reason}. A human's new "
        "assignment, review request or mention of an agent restarts it."
    )


@dataclass(slots=True)
class _Review:
    """What one decision's review has added so far, read as if already applied."""

    rounds: list[ReviewRound] = field(default_factory=list)
    trips: dict[tuple[str, int], str] = field(default_factory=dict)  # issue -> reason
    made: list[Trip] = field(default_factory=list)


class LoopGuard:
    """Applies the per-issue limits to each decision of the flows, before it is applied: a
    repository's own (its policy's, already clipped to the service's ceilings) where given,
    else the service's `[flows]`."""

    def __init__(self, config: Config, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock

    def resets(self, event_type: str, sender: str | None) -> bool:
        """Whether a delivery of `event_type` by `sender` is a human's, which resets the
        limits of the issues it dispatches work for (their guards and usage go unread)."""
        return (
            sender is not None
            and event_type in HUMAN_EVENTS
            and self.config.type_of_login(sender) is None
        )

    async def review(
        self,
        view: IntakeView,
        decision: Decision,
        event_type: str,
        sender: str | None,
        limits: Mapping[str, IssueLimits] | None = None,
    ) -> Decision:
        """`decision`, reviewed (changed in place); `limits`: repository -> its per-issue
        limits, where its policy sets them."""
        if not decision.dispatch:
            return decision
        human = self.resets(event_type, sender)
        kept: list[tuple[str, DispatchRequest]] = []
        stops: list[str] = []
        resets: list[tuple[str, int, float]] = []
        done = _Review()
        for agent_type, request in decision.dispatch:
            link = decision.link(request.repo, request.number)
            if link is None:
                link = await view.pull_link(request.repo, request.number)
            # Work on an agent's pull request counts for the issue it was opened for.
            issue = link.issue_number if link is not None else request.number
            reset = None
            if human:
                now = self.clock()
                resets.append((request.repo, issue, now))
                reset = IssueGuard(request.repo, issue, now, 0, None, None)
            own = (limits or {}).get(request.repo) or service_limits(self.config.flows)
            stop, new = await self._check(view, request, issue, reset, done, own)
            if stop is None:
                kept.append((agent_type, request))
                continue
            stops.append(f"no {agent_type} work: {request.repo}#{issue} needs a human ({stop})")
            done.trips[request.repo, issue] = stop
            if new:
                number = int(request.payload.get("comment_on", request.number))
                label = self.config.flows.escalation_label
                done.made.append(
                    Trip(
                        request.repo,
                        issue,
                        stop,
                        self.clock(),
                        ForgeComment(
                            agent_type, request.repo, number, escalation(self.config.flows, stop)
                        ),
                        Label(agent_type, request.repo, number, label) if label else None,
                    )
                )
        # A guard that trips even counted afresh (a limit of 0) stays tripped.
        resets = [r for r in resets if (r[0], r[1]) not in done.trips]
        # Changed in place, as the intake's other steps change it: a copy of the decision's
        # twenty fields cost more than the review itself.
        decision.review_rounds = decision.review_rounds + done.rounds
        decision.trips = decision.trips + done.made
        decision.resets = resets
        if not stops:
            return decision
        if kept:
            decision.reason = f"{decision.reason}; {'; '.join(stops)}"
        else:
            decision.reason = "; ".join(stops)
        decision.keep(kept)
        return decision

    async def _check(
        self,
        view: IntakeView,
        request: DispatchRequest,
        issue: int,
        reset: IssueGuard | None,
        done: _Review,
        limits: IssueLimits,
    ) -> tuple[str | None, bool]:
        """Why this dispatch is stopped (or None), and whether it trips the guard just now.
        `reset`: the guard as a human's reset just left it, known without reading it back;
        `done`: what this decision added before."""
        repo = request.repo
        if (repo, issue) in done.trips:
            return done.trips[repo, issue], False
        guard = reset if reset is not None else await view.guard(repo, issue)
        if guard is not None and guard.tripped_at is not None:
            return guard.reason, False
        since = guard.since if guard is not None else 0.0
        rounds = (guard.review_rounds if guard is not None else 0) + done.rounds.count(
            (repo, issue)
        )
        if request.kind is TaskKind.ADDRESS_REVIEW:
            done.rounds.append((repo, issue))
            rounds += 1
        # Counted afresh from a human's reset just now: none of its tasks is queued yet.
        tasks, cost = (0, 0.0) if reset is not None else await view.issue_usage(repo, issue, since)
        reason = trip_reason(limits, tasks, cost, rounds)
        if reason is None:
            return None, False
        log.warning("%s#%d needs a human: %s", repo, issue, reason)
        return reason, True
