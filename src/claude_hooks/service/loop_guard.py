"""Per-issue lifecycle limits across agent types: tasks, cost, and review rounds on its PR.

Agents can hand one issue back and forth without end (changes requested → fix → review → …).
When a limit trips, the issue takes no more agent work until a human steps in with a new
assignment, review request or mention: the flows' decision loses its dispatches (the delivery
is recorded as ignored with the reason), a comment asks the humans, and a label marks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace

from claude_hooks.config import Config, FlowsConfig
from claude_hooks.core.domain import DispatchRequest, TaskKind
from claude_hooks.forge.client import ForgejoError
from claude_hooks.forge.gateway import Forge
from claude_hooks.service.flows import Decision, ForgeComment
from claude_hooks.store.intake import IntakeStore
from claude_hooks.store.spend import IssueGuard, SpendStore

log = logging.getLogger(__name__)

# Events by which a human (not an agent) hands an issue back to the agents, resetting its limits.
HUMAN_EVENTS = frozenset(
    {"issue_assign", "pull_request_review_request", "issue_comment", "pull_request_comment"}
)


def trip_reason(flows: FlowsConfig, tasks: int, cost: float, review_rounds: int) -> str | None:
    """Why an issue may take no more agent work, or None while it is within its limits."""
    if review_rounds > flows.max_review_rounds:
        return (
            f"{review_rounds} changes-requested rounds on its pull request "
            f"(max_review_rounds = {flows.max_review_rounds})"
        )
    if tasks >= flows.max_tasks_per_issue:
        return f"{tasks} agent tasks (max_tasks_per_issue = {flows.max_tasks_per_issue})"
    limit = flows.max_cost_per_issue_usd
    if limit is not None and cost >= limit:
        return f"${cost:.2f} spent by agents (max_cost_per_issue_usd = {limit:g})"
    return None


def escalation(flows: FlowsConfig, reason: str) -> str:
    who = f"@{flows.escalate_to.lstrip('@')} " if flows.escalate_to else ""
    return (
        f"{who}claude-hooks stopped agent work on this issue: {reason}. A human's new "
        "assignment, review request or mention of an agent restarts it."
    )


class LoopGuard:
    """Applies the per-issue limits to each decision of the flows, before it is applied."""

    def __init__(
        self,
        config: Config,
        spend: SpendStore,
        intake: IntakeStore,
        forge: Forge,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.spend = spend
        self.intake = intake
        self.forge = forge
        self.clock = clock
        self._labelling: set[asyncio.Task[None]] = set()

    async def _issue_of(self, repo: str, number: int) -> int:
        """Work on an agent's pull request counts for the issue it was opened for."""
        link = await self.intake.pull_link(repo, number)
        return link.issue_number if link is not None else number

    async def review(self, decision: Decision, event_type: str, sender: str | None) -> Decision:
        if not decision.dispatch:
            return decision
        human = (
            sender is not None
            and event_type in HUMAN_EVENTS
            and self.config.type_of_login(sender) is None
        )
        kept: list[tuple[str, DispatchRequest]] = []
        stops: list[str] = []
        comments: list[ForgeComment] = []
        resets: list[tuple[str, int, float]] = []
        tripped: set[tuple[str, int]] = set()
        for agent_type, request in decision.dispatch:
            issue = await self._issue_of(request.repo, request.number)
            reset = None
            if human:
                # Written with the delivery (see `Decision.resets`); read here as it will be.
                now = self.clock()
                resets.append((request.repo, issue, now))
                reset = IssueGuard(request.repo, issue, now, 0, None, None)
            stop, newly = await self._check(request, issue, reset)
            if stop is None:
                kept.append((agent_type, request))
                continue
            stops.append(f"no {agent_type} work: {request.repo}#{issue} needs a human ({stop})")
            tripped.add((request.repo, issue))
            if newly:
                number = int(request.payload.get("comment_on", request.number))
                comments.append(
                    ForgeComment(
                        agent_type, request.repo, number, escalation(self.config.flows, stop)
                    )
                )
                self._label(agent_type, request.repo, number)
        # A guard that trips even counted afresh (a limit of 0) stays tripped.
        resets = [r for r in resets if (r[0], r[1]) not in tripped]
        if not stops:
            return replace(decision, resets=resets) if resets else decision
        reason = "; ".join(stops) if not kept else f"{decision.reason}; {'; '.join(stops)}"
        return replace(
            decision,
            reason=reason,
            dispatch=kept,
            comments=decision.comments + comments,
            resets=resets,
        )

    async def _check(
        self, request: DispatchRequest, issue: int, reset: IssueGuard | None
    ) -> tuple[str | None, bool]:
        """Why this dispatch is stopped (or None), and whether it trips the guard just now.
        `reset`: the guard as a human's reset just left it, known without reading it back."""
        repo = request.repo
        guard = reset if reset is not None else await self.spend.guard(repo, issue)
        if guard is not None and guard.tripped_at is not None:
            return guard.reason, False
        since = guard.since if guard is not None else 0.0
        rounds = guard.review_rounds if guard is not None else 0
        if request.kind is TaskKind.ADDRESS_REVIEW:
            rounds = await self.spend.add_review_round(repo, issue)
        tasks, cost = await self.spend.issue_usage(repo, issue, since)
        reason = trip_reason(self.config.flows, tasks, cost, rounds)
        if reason is None:
            return None, False
        newly = await self.spend.trip(repo, issue, reason, self.clock())
        log.warning("%s#%d needs a human: %s", repo, issue, reason)
        return reason, newly

    def _label(self, as_type: str, repo: str, number: int) -> None:
        if not self.forge.enabled or not self.config.flows.escalation_label:
            return
        task = asyncio.get_running_loop().create_task(self._put_label(as_type, repo, number))
        self._labelling.add(task)
        task.add_done_callback(self._labelling.discard)

    async def _put_label(self, as_type: str, repo: str, number: int) -> None:
        label = self.config.flows.escalation_label
        try:
            await self.forge.label(as_type, repo, number, label)
        except ForgejoError as exc:
            log.warning("could not label %s#%d %r: %s", repo, number, label, exc)

    async def stop(self) -> None:
        for task in list(self._labelling):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
