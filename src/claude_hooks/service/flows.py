"""Forgejo events -> work for agent types: one handler per flow (docs/design.md §1).

Handlers decide; they write nothing. Each returns a `Decision` (`core.decision`: what to
dispatch, what to cancel, which pull links, fix attempts and CI watches to record, what to tell
a human) that the intake applies in the transaction recording the delivery, so a handler's
logic can be read and tested apart from HTTP, the pool and the forge. What they must look up
(assignment state, which PR belongs to which issue, who may trigger work) comes through
`FlowContext`: the store's read-only `IntakeView`, the forge's look-ups and the repositories'
policies (their trigger labels and `on_new_event` rules).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from claude_hooks.config import Config
from claude_hooks.core.decision import (
    CiWatch,
    Decision,
    ForgeCommand,
    ForgeComment,
    IntakeView,
    PullLink,
    Retarget,
    ignore,
)
from claude_hooks.core.domain import DispatchRequest, TaskKind, session_key
from claude_hooks.core.new_event import superseded
from claude_hooks.core.policy import Policy, PolicyError, effective
from claude_hooks.forge.payloads import (
    ActionRunPayload,
    Issue,
    IssueCommentPayload,
    IssuePayload,
    Payload,
    PullRequest,
    PullRequestPayload,
    PushPayload,
    StatusPayload,
)

_MENTION = re.compile(r"(?<![\w@/.-])@([A-Za-z0-9][A-Za-z0-9_.-]*)")
_CLOSES = re.compile(r"\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\s*:?\s+#(\d+)\b", re.IGNORECASE)
BRANCH_ISSUE = re.compile(r"^[^/]+/(?:issue-)?(\d+)(?:[-_/]|$)")
COMMANDS = ("stop", "status", "retry", "pause", "resume", "help")
_QUEUE = re.compile(r"@([A-Za-z0-9][A-Za-z0-9_.-]*)[ \t]+queue:", re.IGNORECASE)
# A command is a line that is exactly `@<login> <word>`: "@dev-bot stop using globals" is a
# mention, not a command.
_COMMAND = re.compile(
    rf"^[ \t]*@([A-Za-z0-9][A-Za-z0-9_.-]*)[ \t]+({'|'.join(COMMANDS)})[ \t]*\.?[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)


SenderCheck = Callable[[str, str], Awaitable[bool]]  # (repo, login) -> may trigger work
PullLookup = Callable[[str, int], Awaitable[PullRequest | None]]  # (repo, number) -> PR
HeadLookup = Callable[[str, str], Awaitable[int | None]]  # (repo, sha) -> open PR number
# (repo, base branch or None for the default one) -> its policy; PolicyError if broken.
PolicyLookup = Callable[[str, str | None], Awaitable[Policy]]


@dataclass(frozen=True, slots=True)
class FlowContext:
    config: Config
    view: IntakeView
    may_trigger: SenderCheck
    delivery_id: str | None = None
    now: float = 0.0
    find_pull: PullLookup | None = None
    find_head: HeadLookup | None = None
    policy: PolicyLookup | None = None


# helpers


def once_each(lookup: PolicyLookup) -> PolicyLookup:
    """`lookup`, asked once per repository and branch: a delivery's flows and the intake's
    checks read one policy (the same answer, and one bounded look-up instead of two)."""
    answers: dict[tuple[str, str | None], Policy | PolicyError] = {}

    async def once(repo: str, base: str | None) -> Policy:
        answer = answers.get((repo, base))
        if answer is None:
            try:
                answer = await lookup(repo, base)
            except PolicyError as exc:
                answer = exc
            answers[(repo, base)] = answer
        if isinstance(answer, PolicyError):
            raise answer
        return answer

    return once


async def policy_of(ctx: FlowContext, repo: str, base: str | None = None) -> Policy:
    """The repository's policy; the service's own settings where it has none or its file is
    broken (the intake then fails the delivery's work closed, see `Intake.fail_closed`)."""
    if ctx.policy is not None:
        try:
            return await ctx.policy(repo, base)
        except PolicyError:
            pass
    return effective(ctx.config, [])


def base_of(request: DispatchRequest) -> str | None:
    """The branch a request's policy is read from: a PR's base branch, else the default."""
    base = request.payload.get("base_ref")
    return base if isinstance(base, str) and base else None


def label_types(ctx: FlowContext, policy: Policy, labels: Iterable[str]) -> dict[str, list[str]]:
    """Type -> the labels among `labels` that trigger it: the type's own (`[types.<t>] labels`
    of the service) and those the repository's policy adds."""
    names = set(labels)
    found: dict[str, list[str]] = {}
    for agent_type, type_config in ctx.config.types.items():
        mine = names & (set(type_config.labels) | set(policy.labels_of(agent_type)))
        if mine:
            found[agent_type] = sorted(mine)
    return found


def mentioned_logins(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for login in _MENTION.findall(text):
        seen.setdefault(login.rstrip("."), None)
    return list(seen)


def commands_in(text: str) -> list[tuple[str, str]]:
    """The (login, command word) of each line of `text` that is a command, in order."""
    return [(login.rstrip("."), word.lower()) for login, word in _COMMAND.findall(text)]


def linked_issue(pull: PullRequest) -> int:
    """The issue an agent's PR was opened for: its branch `<type>/<number>-…`, a `Fixes #N`
    line, or else the PR itself."""
    match = BRANCH_ISSUE.match(pull.head.ref)
    if match:
        return int(match.group(1))
    match = _CLOSES.search(pull.body)
    if match:
        return int(match.group(1))
    return pull.number


def _not_allowed(login: str, repo: str) -> Decision:
    return ignore(
        f"sender {login!r} may not trigger agents: it needs write access to {repo} "
        "or a place in [security] allowed_senders"
    )


async def _allowed(ctx: FlowContext, repo: str, login: str) -> bool:
    if ctx.config.type_of_login(login) is not None:
        return True  # agents hand work to each other (dev's PR asks the reviewer)
    if login.lower() in {s.lower() for s in ctx.config.security.allowed_senders}:
        return True
    return await ctx.may_trigger(repo, login)


def _request(
    ctx: FlowContext, agent_type: str, kind: TaskKind, repo: str, number: int, **payload: Any
) -> tuple[str, DispatchRequest]:
    return agent_type, DispatchRequest(
        kind=kind,
        repo=repo,
        number=number,
        session_key=session_key(agent_type, repo, number),
        payload={k: v for k, v in payload.items() if v is not None},
        delivery_id=ctx.delivery_id,
    )


def _pull_fields(pull: PullRequest) -> dict[str, Any]:
    return {
        "pr_number": pull.number,
        "title": pull.title,
        "body": pull.body,
        "html_url": pull.html_url,
        "head_sha": pull.head.sha,
        "head_ref": pull.head.ref,
        "base_ref": pull.base.ref,
        "comment_on": pull.number,
    }


def _linked(decision: Decision, link: PullLink | None) -> Decision:
    """`decision`, recording `link` too (the flows remember every agent PR they see)."""
    if link is not None:
        decision.links.append(link)
    return decision


async def remember_pull(ctx: FlowContext, repo: str, pull: PullRequest) -> PullLink | None:
    """An agent's PR and the issue it continues, to record (see `_linked`); None for PRs of
    humans."""
    author = ctx.config.type_of_login(pull.user.login)
    if author is None:
        return None
    known = await ctx.view.pull_link(repo, pull.number)
    return PullLink(
        repo=repo,
        pr_number=pull.number,
        author_type=author,
        issue_number=known.issue_number if known else linked_issue(pull),
        head_sha=pull.head.sha,
        open=pull.state == "open",
    )


# the handlers


async def handle_issue_assigned(ctx: FlowContext, payload: IssuePayload) -> Decision:
    issue, repo, sender = payload.issue, payload.repository.full_name, payload.sender.login
    logins = [user.login for user in issue.assignees]
    now = {t for login in logins if (t := ctx.config.type_of_login(login)) is not None}
    before = await ctx.view.assigned_types(repo, issue.number)
    state = (repo, issue.number, frozenset(now))
    if payload.action == "unassigned":
        gone = sorted(set(ctx.config.types) - now)
        keys = [session_key(t, repo, issue.number) for t in gone]
        return Decision(
            reason=f"unassigned on {repo}#{issue.number}: "
            f"cancelling the work of {', '.join(gone) or 'no agent type'}",
            cancel=keys,
            assigned=state,
        )
    newly = sorted(now - before)
    if not newly:
        if now:
            decision = ignore(
                f"{', '.join(sorted(now))} already assigned to {repo}#{issue.number}: "
                "no new work (unassign and assign again to restart it)"
            )
        else:
            known = ", ".join(sorted(ctx.config.login_of(t) for t in ctx.config.types))
            decision = ignore(
                f"no agent type has login {', '.join(repr(x) for x in logins) or 'among none'}"
                f" (assignees of {repo}#{issue.number}); agent logins: {known}"
            )
        decision.assigned = state
        return decision
    sender_type = ctx.config.type_of_login(sender)
    newly = [t for t in newly if t != sender_type]
    if not newly:
        decision = ignore(f"{sender!r} assigned itself: an agent never triggers its own type")
        decision.assigned = state
        return decision
    if not await _allowed(ctx, repo, sender):
        # Not saved as assigned: the next assignment by an allowed sender starts the work.
        return _not_allowed(sender, repo)
    kind = TaskKind.WORK_ISSUE
    return Decision(
        reason=f"{repo}#{issue.number} assigned to {', '.join(newly)}",
        assigned=state,
        dispatch=[
            _request(
                ctx,
                t,
                kind,
                repo,
                issue.number,
                title=issue.title,
                body=issue.body,
                html_url=issue.html_url,
                sender=sender,
                issue_number=issue.number,
                is_pull=issue.is_pull,
                comment_on=issue.number,
            )
            for t in newly
        ],
    )


async def handle_labels(ctx: FlowContext, payload: IssuePayload | PullRequestPayload) -> Decision:
    """A label event is an assignment of each type whose trigger label it added, and an
    unassignment of each whose label it removed. It carries the labels after the change, so
    what changed is the difference with the labels last seen on the issue."""
    link = None
    if isinstance(payload, PullRequestPayload):
        link = await remember_pull(ctx, payload.repository.full_name, payload.pull_request)
    return _linked(await _labelled(ctx, payload), link)


async def _labelled(ctx: FlowContext, payload: IssuePayload | PullRequestPayload) -> Decision:
    repo, sender = payload.repository.full_name, payload.sender.login
    if isinstance(payload, IssuePayload):
        item: Issue | PullRequest = payload.issue
        is_pull = payload.issue.is_pull
    else:
        item, is_pull = payload.pull_request, True
    number = item.number
    now = {label.name for label in item.labels}
    before = await ctx.view.labels(repo, number)
    state = (repo, number, frozenset(now))
    base = item.base.ref if isinstance(item, PullRequest) else None
    policy = await policy_of(ctx, repo, base)
    triggers, earlier = label_types(ctx, policy, now), label_types(ctx, policy, before)
    added = sorted(set(triggers) - set(earlier))
    removed = sorted(set(earlier) - set(triggers))
    decision = Decision(labels=state)
    reasons = []
    if removed:
        decision.cancel = [session_key(t, repo, number) for t in removed]
        reasons.append(f"label removed: cancelling the work of {', '.join(removed)}")
    sender_type = ctx.config.type_of_login(sender)
    if sender_type in added:
        added.remove(sender_type)
        reasons.append(f"{sender!r} labelled for itself: an agent never triggers its own type")
    if added:
        if not await _allowed(ctx, repo, sender):
            # Not saved: the next label event by an allowed sender starts the work.
            return _not_allowed(sender, repo)
        reasons.append(f"labelled for {', '.join(added)}")
        decision.dispatch = [
            _request(
                ctx,
                t,
                TaskKind.WORK_ISSUE,
                repo,
                number,
                title=item.title,
                body=item.body,
                html_url=item.html_url,
                sender=sender,
                issue_number=number,
                is_pull=is_pull,
                comment_on=number,
                label=triggers[t][0],
            )
            for t in added
        ]
    if not reasons:
        reasons.append(f"labels {', '.join(sorted(now)) or '(none)'}: no agent label changed")
    decision.reason = f"{repo}#{number} " + "; ".join(reasons)
    return decision


async def handle_review_requested(ctx: FlowContext, payload: PullRequestPayload) -> Decision:
    pull, repo, sender = payload.pull_request, payload.repository.full_name, payload.sender.login
    reviewer = payload.requested_reviewer
    if reviewer is None:
        return ignore("review requested without a requested_reviewer: nothing to dispatch")
    agent_type = ctx.config.type_of_login(reviewer.login)
    if agent_type is None:
        return ignore(f"no agent type has login {reviewer.login!r} (the requested reviewer)")
    if ctx.config.type_of_login(sender) == agent_type:
        return ignore(f"{sender!r} requested its own review: an agent never triggers its own type")
    if ctx.config.type_of_login(pull.user.login) == agent_type:
        return ignore(f"{reviewer.login!r} opened #{pull.number}: it does not review its own PR")
    if not await _allowed(ctx, repo, sender):
        return _not_allowed(sender, repo)
    # The session's last finished review: (the head it looked at, its result).
    earlier = await ctx.view.last_review(session_key(agent_type, repo, pull.number))
    if earlier is not None and earlier[0] == pull.head.sha:
        earlier = None  # the same head again: a whole review, as the first
    since = f" (again: what changed since {earlier[0][:10]})" if earlier else ""
    return Decision(
        reason=f"review of {repo}#{pull.number} requested from {agent_type}{since}",
        dispatch=[
            _request(
                ctx,
                agent_type,
                TaskKind.REVIEW_PR,
                repo,
                pull.number,
                sender=sender,
                author=pull.user.login,
                reviewed_head=earlier[0] if earlier else None,
                previous_review=earlier[1][:4000] if earlier else None,
                **_pull_fields(pull),
            )
        ],
    )


async def _agent_pull(ctx: FlowContext, payload: PullRequestPayload) -> PullLink | Decision:
    pull, repo = payload.pull_request, payload.repository.full_name
    link = await remember_pull(ctx, repo, pull)
    if link is None:
        return ignore(f"{repo}#{pull.number} was opened by {pull.user.login!r}, not an agent type")
    return link


async def handle_changes_requested(ctx: FlowContext, payload: PullRequestPayload) -> Decision:
    link = await _agent_pull(ctx, payload)
    if isinstance(link, Decision):
        return link
    pull, repo, sender = payload.pull_request, payload.repository.full_name, payload.sender.login
    if ctx.config.type_of_login(sender) == link.author_type:
        return _linked(
            ignore(f"{sender!r} reviewed its own PR: an agent never triggers its own type"), link
        )
    if not await _allowed(ctx, repo, sender):
        return _linked(_not_allowed(sender, repo), link)
    review = payload.review.content if payload.review else ""
    decision = Decision(
        reason=f"changes requested on {repo}#{pull.number}: {link.author_type} resumes "
        f"#{link.issue_number}",
        dispatch=[
            _request(
                ctx,
                link.author_type,
                TaskKind.ADDRESS_REVIEW,
                repo,
                link.issue_number,
                review_body=review,
                sender=sender,
                issue_number=link.issue_number,
                **_pull_fields(pull),
            )
        ],
    )
    return _linked(decision, link)


async def handle_approved(ctx: FlowContext, payload: PullRequestPayload) -> Decision:
    link = await _agent_pull(ctx, payload)
    if isinstance(link, Decision):
        return link
    sender, repo = payload.sender.login, payload.repository.full_name
    if ctx.config.type_of_login(sender) == link.author_type:
        decision = ignore(f"{sender!r} approved its own PR: an agent never triggers its own type")
    elif not await _allowed(ctx, repo, sender):
        decision = _not_allowed(sender, repo)
    else:
        decision = dispatch_merge(ctx, payload.pull_request, link, sender)
    return _linked(decision, link)


def dispatch_merge(ctx: FlowContext, pull: PullRequest, link: PullLink, approver: str) -> Decision:
    merge_type = ctx.config.flows.merge_type
    if merge_type not in ctx.config.types:
        return ignore(
            f"{link.repo}#{pull.number} approved, but the merge type {merge_type!r} is not "
            f"configured: add [types.{merge_type}] or set [flows] merge_type"
        )
    return Decision(
        reason=f"{link.repo}#{pull.number} approved by {approver}: {merge_type} merges it",
        dispatch=[
            _request(
                ctx,
                merge_type,
                TaskKind.MERGE_PR,
                link.repo,
                link.issue_number,
                approver=approver,
                sender=approver,
                author_type=link.author_type,
                issue_number=link.issue_number,
                **_pull_fields(pull),
            )
        ],
    )


async def _link_for(
    ctx: FlowContext, repo: str, sha: str, number: int | None
) -> tuple[PullLink | None, bool]:
    """The agent PR whose head is `sha`, and whether it was just learnt from the forge (to
    record)."""
    link = None
    if number is not None:
        link = await ctx.view.pull_link(repo, number)
    if link is None:
        link = await ctx.view.pull_link_for_head(repo, sha)
    if link is None and number is None and ctx.find_head is not None:
        number = await ctx.find_head(repo, sha)
    if link is None and number is not None and ctx.find_pull is not None:
        pull = await ctx.find_pull(repo, number)
        if pull is not None:
            learnt = await remember_pull(ctx, repo, pull)
            return learnt, learnt is not None
    return link, False


async def handle_status_event(
    ctx: FlowContext, payload: StatusPayload | ActionRunPayload
) -> Decision:
    context: dict[str, Any]
    if isinstance(payload, StatusPayload):
        repo, sha, number = payload.repository.full_name, payload.sha, None
        if payload.state not in ("failure", "error"):
            return ignore(f"CI state {payload.state!r} on {sha[:10]}: nothing to fix")
        context = {
            "context": payload.context,
            "description": payload.description,
            "target_url": payload.target_url,
            "state": payload.state,
        }
    else:
        repo, sha, number = payload.repository.full_name, payload.sha, payload.pull_number
        if payload.action != "failure":
            return ignore(f"Actions run {payload.action} on {sha[:10]}: nothing to fix")
        context = {
            "context": f"Forgejo Actions run #{payload.run.index_in_repo} "
            f"({payload.run.workflow_id})",
            "target_url": payload.run.html_url,
            "state": payload.run.status,
        }
    link, learnt = await _link_for(ctx, repo, sha, number)
    if link is None:
        return ignore(f"CI failed on {sha[:10]}, which is not the head of an agent's PR")
    if not link.open:
        decision = ignore(f"CI failed on {repo}#{link.pr_number}, which is closed")
    elif link.head_sha != sha:
        decision = ignore(
            f"CI failed on {sha[:10]}, no longer the head of {repo}#{link.pr_number} "
            f"({link.head_sha[:10]})"
        )
    else:
        decision = await dispatch_fix_ci(ctx, link, context)
    return _linked(decision, link if learnt else None)


async def dispatch_fix_ci(ctx: FlowContext, link: PullLink, context: dict[str, Any]) -> Decision:
    limit = ctx.config.flows.max_fix_attempts
    attempt = (link.repo, link.pr_number, link.head_sha)
    count = await ctx.view.fix_attempts(*attempt) + 1
    if count > limit:
        decision = ignore(
            f"CI failed again on {link.repo}#{link.pr_number} at {link.head_sha[:10]}: "
            f"{limit} fix attempt(s) used, a human is asked to look"
        )
        if count == limit + 1:
            decision.comments.append(
                ForgeComment(
                    link.author_type,
                    link.repo,
                    link.pr_number,
                    f"CI still fails on {link.head_sha[:10]} after {limit} automatic fix "
                    "attempt(s). A human needs to look at this pull request.",
                )
            )
        decision.fix_attempts.append(attempt)
        return decision
    return Decision(
        reason=f"CI failed on {link.repo}#{link.pr_number} at {link.head_sha[:10]}: "
        f"{link.author_type} fixes it (attempt {count} of {limit})",
        dispatch=[
            _request(
                ctx,
                link.author_type,
                TaskKind.FIX_CI,
                link.repo,
                link.issue_number,
                pr_number=link.pr_number,
                head_sha=link.head_sha,
                ci_context=context,
                issue_number=link.issue_number,
                fix_attempt=count,
                comment_on=link.pr_number,
            )
        ],
        fix_attempts=[attempt],
    )


async def handle_mention(ctx: FlowContext, payload: IssueCommentPayload) -> Decision:
    issue, repo, sender = payload.issue, payload.repository.full_name, payload.sender.login
    if payload.action != "created":
        return ignore(f"comment {payload.action}: only new comments are read")
    if ctx.config.type_of_login(sender) is not None:
        return ignore(f"comment by the agent account {sender!r}: agents do not wake each other")
    commands = [
        (t, word)
        for login, word in commands_in(payload.comment.body)
        if (t := ctx.config.type_of_login(login)) is not None
    ]
    if commands:
        return await handle_commands(ctx, payload, commands)
    types = [
        t
        for login in mentioned_logins(payload.comment.body)
        if (t := ctx.config.type_of_login(login)) is not None
    ]
    if not types:
        return ignore(f"the comment on {repo}#{issue.number} mentions no agent login")
    if not await _allowed(ctx, repo, sender):
        return _not_allowed(sender, repo)
    link = await ctx.view.pull_link(repo, issue.number) if payload.is_pull else None
    queued = {
        t
        for login in _QUEUE.findall(payload.comment.body)
        if (t := ctx.config.type_of_login(login.rstrip("."))) is not None
    }
    dispatch = []
    for agent_type in dict.fromkeys(types):
        number = link.issue_number if link and link.author_type == agent_type else issue.number
        dispatch.append(
            _request(
                ctx,
                agent_type,
                TaskKind.ANSWER_MENTION,
                repo,
                number,
                comment_body=payload.comment.body,
                comment_url=payload.comment.html_url,
                comment_id=payload.comment.id,
                sender=sender,
                title=issue.title,
                body=issue.body,
                html_url=issue.html_url,
                is_pull=payload.is_pull,
                issue_number=issue.number,
                comment_on=issue.number,
            )
        )
    # While the session runs, a mention steers it, unless `@<login> queue:` or the type says.
    steer = [
        (t, r)
        for t, r in dispatch
        if t not in queued and ctx.config.types[t].while_running == "steer"
    ]
    return Decision(
        reason=f"{sender} mentioned {', '.join(t for t, _ in dispatch)} on {repo}#{issue.number}",
        dispatch=[d for d in dispatch if d not in steer],
        steer=steer,
    )


async def handle_commands(
    ctx: FlowContext, payload: IssueCommentPayload, commands: list[tuple[str, str]]
) -> Decision:
    """A comment with command lines: each is carried out by the intake (`service.forge_commands`);
    its other lines are not read as mentions."""
    issue, repo, sender = payload.issue, payload.repository.full_name, payload.sender.login
    allowed = await _allowed(ctx, repo, sender)
    link = await ctx.view.pull_link(repo, issue.number) if payload.is_pull else None
    decision = Decision(
        reason=f"{sender} commanded "
        + ", ".join(f"{t} {word}" for t, word in dict.fromkeys(commands))
        + f" on {repo}#{issue.number}"
        + ("" if allowed else f" (refused: {sender!r} may not trigger agents)")
    )
    for agent_type, word in dict.fromkeys(commands):
        # An agent's PR continues its issue's session; stop ends the work on both numbers.
        number = link.issue_number if link and link.author_type == agent_type else issue.number
        numbers = sorted({number, issue.number})
        decision.commands.append(
            ForgeCommand(
                word=word,
                agent_type=agent_type,
                repo=repo,
                number=issue.number,
                session=session_key(agent_type, repo, number),
                keys=tuple(session_key(agent_type, repo, n) for n in numbers),
                comment_id=payload.comment.id,
                sender=sender,
                allowed=allowed,
            )
        )
    return decision


def _closed_keys(ctx: FlowContext, repo: str, numbers: set[int]) -> list[str]:
    return [session_key(t, repo, n) for t in ctx.config.types for n in sorted(numbers)]


async def handle_closed_issue(ctx: FlowContext, payload: IssuePayload) -> Decision:
    repo, number = payload.repository.full_name, payload.issue.number
    keys = _closed_keys(ctx, repo, {number})
    return Decision(
        reason=f"{repo}#{number} closed: its agent work is cancelled",
        cancel=keys,
        cleanup=keys,
    )


async def handle_pull_request(ctx: FlowContext, payload: PullRequestPayload) -> Decision:
    pull, repo = payload.pull_request, payload.repository.full_name
    link = await remember_pull(ctx, repo, pull)
    if payload.action == "closed":
        numbers = {pull.number} | ({link.issue_number} if link else set())
        state = "merged" if pull.merged else "closed"
        keys = _closed_keys(ctx, repo, numbers)
        closed = Decision(
            reason=f"{repo}#{pull.number} {state}: its agent work is cancelled",
            cancel=keys,
            cleanup=keys,
            unwatch=[(repo, pull.number)],
        )
        return _linked(closed, link)
    retarget: list[Retarget] = []
    renewed: list[tuple[str, DispatchRequest]] = []
    if payload.action == "synchronized":
        # A review still queued reviews the new head; a push asks for a review itself only
        # to supersede one of the old head still running.
        fields = {"head_sha": pull.head.sha, "head_ref": pull.head.ref}
        retarget = [(session_key(t, repo, pull.number), fields) for t in ctx.config.types]
        renewed = await _renewed_reviews(ctx, repo, pull, payload.sender.login)
    if link is None:
        decision = ignore(f"pull request {payload.action} by {pull.user.login!r}: no agent work")
        decision.retarget = retarget
        return _renewing(decision, renewed, pull)
    decision = ignore(
        f"recorded {link.author_type}'s pull request {repo}#{pull.number} "
        f"(continues #{link.issue_number}, head {link.head_sha[:10]})"
    )
    decision.retarget = retarget
    decision = _renewing(decision, renewed, pull)
    if payload.action in ("opened", "reopened", "synchronized") and ctx.config.flows.poll_ci:
        decision.watch = CiWatch(repo, pull.number, pull.head.sha, ctx.now)
        decision.reason += "; watching its CI status"
    return _linked(decision, link)


async def _renewed_reviews(
    ctx: FlowContext, repo: str, pull: PullRequest, sender: str
) -> list[tuple[str, DispatchRequest]]:
    """A review of the new head for each type whose review of an older head runs and whose
    `on_new_event` supersedes reviews (`new_event_rules` then stops the running one)."""
    policy = await policy_of(ctx, repo, pull.base.ref)
    renewed = []
    for agent_type in ctx.config.types:
        if policy.on_new_event(agent_type, TaskKind.REVIEW_PR.value) != "supersede":
            continue
        key = session_key(agent_type, repo, pull.number)
        running = await ctx.view.running_task(key, TaskKind.REVIEW_PR.value)
        if running is None or running.head_sha == pull.head.sha:
            continue
        if ctx.config.type_of_login(sender) == agent_type:
            continue  # its own push never supersedes its own review
        payload = {**running.payload, **_pull_fields(pull), "sender": sender}
        renewed.append(
            (
                agent_type,
                replace(
                    _request(ctx, agent_type, TaskKind.REVIEW_PR, repo, pull.number)[1],
                    payload=payload,
                ),
            )
        )
    return renewed


def _renewing(
    decision: Decision, renewed: list[tuple[str, DispatchRequest]], pull: PullRequest
) -> Decision:
    if renewed:
        decision.dispatch += renewed
        decision.reason += (
            f"; {', '.join(t for t, _ in renewed)} reviews the new head {pull.head.sha[:10]}"
        )
    return decision


async def new_event_rules(ctx: FlowContext, decision: Decision, sender: str | None) -> Decision:
    """Apply each dispatch's `on_new_event` rule (`core.new_event`): `queue` never merges it
    into a queued twin; `supersede` stops the running task of its kind and key."""
    if not decision.dispatch:
        return decision
    dispatch = []
    for agent_type, request in decision.dispatch:
        policy = await policy_of(ctx, request.repo, base_of(request))
        rule = policy.on_new_event(agent_type, request.kind.value)
        if rule == "queue":
            request = replace(request, coalesce=False)
        elif rule == "supersede":
            running = await ctx.view.running_task(request.session_key, request.kind.value)
            head = request.payload.get("head_sha")
            own = sender is not None and ctx.config.type_of_login(sender) == agent_type
            stop = superseded(rule, head if isinstance(head, str) else None, running, own)
            if stop is not None and stop not in {task_id for task_id, _ in decision.stop}:
                decision.stop.append((stop, request.session_key))
                decision.reason += f"; supersedes {agent_type}'s running task {stop}"
        dispatch.append((agent_type, request))
    decision.dispatch = dispatch
    return decision


def _sender(payload: Payload | None) -> str | None:
    """Who caused the event: its sender, or the user who triggered an Actions run."""
    sender = getattr(payload, "sender", None) or getattr(
        getattr(payload, "run", None), "trigger_user", None
    )
    login = getattr(sender, "login", None)
    return login if isinstance(login, str) else None


async def route(ctx: FlowContext, event_type: str, payload: Payload | None) -> Decision:
    """Pick the flow for an event type and action (docs/design.md §1), then apply the
    `on_new_event` rules to its dispatches; anything else is ignored (an agent's pull
    request it names is still recorded)."""
    decision = await _route(ctx, event_type, payload)
    return await new_event_rules(ctx, decision, _sender(payload))


async def _route(ctx: FlowContext, event_type: str, payload: Payload | None) -> Decision:
    seen: PullLink | None = None
    if isinstance(payload, IssuePayload):
        if event_type == "issue_assign":
            return await handle_issue_assigned(ctx, payload)
        if event_type == "issue_label":
            return await handle_labels(ctx, payload)
        if event_type == "issues" and payload.action == "closed":
            return await handle_closed_issue(ctx, payload)
    elif isinstance(payload, PullRequestPayload):
        if event_type == "pull_request_review_request":
            if payload.action == "review_requested":
                return await handle_review_requested(ctx, payload)
        elif event_type == "pull_request_review_rejected":
            return await handle_changes_requested(ctx, payload)
        elif event_type == "pull_request_review_approved":
            return await handle_approved(ctx, payload)
        elif event_type in ("pull_request", "pull_request_sync"):
            return await handle_pull_request(ctx, payload)
        elif event_type == "pull_request_label":
            return await handle_labels(ctx, payload)
        else:
            seen = await remember_pull(ctx, payload.repository.full_name, payload.pull_request)
    elif isinstance(payload, IssueCommentPayload):
        return await handle_mention(ctx, payload)
    elif isinstance(payload, StatusPayload | ActionRunPayload):
        return await handle_status_event(ctx, payload)
    elif isinstance(payload, PushPayload):
        return ignore("push events need no agent work (pull_request_sync covers agent PRs)")
    action = getattr(payload, "action", None)
    described = f"{event_type}/{action}" if action else event_type
    return _linked(ignore(f"{described} events need no agent work"), seen)
