"""The outcome facts a delivery tells, added to its decision (`core/outcomes.py`).

Run in the decide phase after the flows and the loop guard: it reads the event and what the
decision holds (its dispatches, the agent pull links it records, its commands) and appends
facts that the decision's transaction writes. It writes nothing itself; the only read is the
pull link of a CI verdict's head. Escalations are counted where a trip is written (only a
new trip counts), and the CI poller adds the verdicts the forge sends no webhook for.
"""

from __future__ import annotations

from claude_hooks.config import Config, TypeConfig
from claude_hooks.core.decision import Decision, PullLink
from claude_hooks.core.domain import TaskKind, session_key
from claude_hooks.core.outcomes import (
    Intervention,
    InterventionKind,
    OutcomeFact,
    PullEvent,
    PullFact,
    SessionSeen,
)
from claude_hooks.core.variants import choose
from claude_hooks.forge.payloads import (
    ActionRunPayload,
    Payload,
    PullRequestPayload,
    PushPayload,
    StatusPayload,
)
from claude_hooks.service.flows import BRANCH_ISSUE, FlowContext

_PASSED = {"success": True, "failure": False, "error": False}  # commit status states
_RUN_PASSED = {"success": True, "recover": True, "failure": False}  # Actions run actions


def variant_of(config: Config, agent_type: str, key: str) -> str | None:
    """The variant a new session of `agent_type` gets (None: the type's own settings)."""
    type_config = config.types.get(agent_type)
    if type_config is None or not type_config.variants:
        return None
    shares = [(v.name, v.share) for v in type_config.variants]
    return choose(shares, type_config.variant_seed, key)


def model_of(config: Config, agent_type: str, variant: str | None) -> str | None:
    """The model a session runs with: its variant's, else its type's (claude runner only)."""
    type_config = config.types.get(agent_type)
    if type_config is None or type_config.runner != "claude":
        return None
    chosen = type_config.variant(variant)
    return chosen.model if chosen is not None and chosen.model else type_config.model


def with_variant(config: Config, agent_type: str, variant: str | None) -> TypeConfig:
    """The type's settings for a session of `variant`: its role and model where it sets
    them (an unknown or removed variant: the type's own)."""
    type_config = config.types[agent_type]
    chosen = type_config.variant(variant)
    if chosen is None:
        return type_config
    return type_config.model_copy(
        update={"role": chosen.role or type_config.role, "model": chosen.model or type_config.model}
    )


def opened(link: PullLink, at: float) -> PullFact:
    """The PR as first seen: its author's session and its first head."""
    return PullFact(
        "opened",
        link.repo,
        link.pr_number,
        at,
        session_key=session_key(link.author_type, link.repo, link.issue_number),
        author_type=link.author_type,
        head_sha=link.head_sha,
    )


def ci_verdict(link: PullLink, sha: str, passed: bool, at: float) -> list[OutcomeFact]:
    return [
        opened(link, at),
        PullFact("ci", link.repo, link.pr_number, at, head_sha=sha, passed=passed),
    ]


async def observe(
    ctx: FlowContext, event_type: str, payload: Payload | None, decision: Decision
) -> None:
    """Append to `decision` the outcome facts of this delivery."""
    facts = decision.outcomes
    now, config = ctx.now, ctx.config
    for agent_type, request in decision.dispatch:
        variant = variant_of(config, agent_type, request.session_key)
        facts.append(
            SessionSeen(
                request.session_key,
                agent_type,
                request.repo,
                request.number,
                now,
                assigned=request.kind == TaskKind.WORK_ISSUE,
                variant=variant,
                model=model_of(config, agent_type, variant),
            )
        )
    facts += [opened(link, now) for link in decision.links]
    for command in decision.commands:
        if command.allowed:
            kind: InterventionKind = "stops" if command.word == "stop" else "commands"
            facts.append(Intervention(kind, command.repo, command.number, command.session))
    if isinstance(payload, PullRequestPayload):
        _pull_event(decision, event_type, payload, now)
    elif isinstance(payload, StatusPayload | ActionRunPayload):
        await _ci(ctx, decision, payload)
    elif isinstance(payload, PushPayload):
        _push(config, decision, payload)


def _pull_event(
    decision: Decision, event_type: str, payload: PullRequestPayload, now: float
) -> None:
    repo, number = payload.repository.full_name, payload.pull_request.number
    if decision.link(repo, number) is None:
        return  # not an agent's PR
    event: PullEvent | None = None
    if event_type == "pull_request_review_approved":
        event = "approved"
    elif event_type == "pull_request_review_rejected":
        event = "changes_requested"
    elif event_type == "pull_request" and payload.action == "closed":
        event = "merged" if payload.pull_request.merged else "closed"
    if event is not None:
        decision.outcomes.append(PullFact(event, repo, number, now))


async def _ci(
    ctx: FlowContext, decision: Decision, payload: StatusPayload | ActionRunPayload
) -> None:
    if isinstance(payload, StatusPayload):
        passed = _PASSED.get(payload.state)
    else:
        passed = _RUN_PASSED.get(payload.action)
    if passed is None:
        return  # pending: no verdict yet
    repo, sha = payload.repository.full_name, payload.sha
    link = next((k for k in decision.links if k.repo == repo and k.head_sha == sha), None)
    if link is None:
        link = await ctx.view.pull_link_for_head(repo, sha)
    if link is not None:
        decision.outcomes += ci_verdict(link, sha, passed, ctx.now)


def _push(config: Config, decision: Decision, payload: PushPayload) -> None:
    """Commits a human pushed to an agent's branch (`<type or login>/<issue>-…`)."""
    pusher = (payload.pusher or payload.sender).login
    if config.type_of_login(pusher) is not None or payload.total_commits <= 0:
        return
    branch = payload.ref.removeprefix("refs/heads/")
    match = BRANCH_ISSUE.match(branch)
    if match is None:
        return
    prefix = branch.split("/", 1)[0]
    agent_type = prefix if prefix in config.types else config.type_of_login(prefix)
    if agent_type is None:
        return
    repo, number = payload.repository.full_name, int(match.group(1))
    decision.outcomes.append(
        Intervention(
            "human_commits",
            repo,
            number,
            session_key(agent_type, repo, number),
            payload.total_commits,
        )
    )
