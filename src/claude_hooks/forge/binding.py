"""Bind the unsigned event-type header to the signed body.

The signature covers the body, not the headers: anyone who saw one signed delivery could re-send
its body under another `X-Forgejo-Event-Type` (a rejected review as an approval, which would
queue a merge). Each event type has a body Forgejo and Gitea always send with it
(docs/forgejo-protocol.md §2): its `action`, `review.type`, `is_pull`. A header the body
contradicts is refused with the reason, so the flows only ever route on what was signed.
"""

from __future__ import annotations

from collections.abc import Mapping

from claude_hooks.forge.payloads import (
    ActionRunPayload,
    IssueCommentPayload,
    IssuePayload,
    Payload,
    PullRequestPayload,
)
from claude_hooks.forge.webhook import MalformedDeliveryError

REVIEW_TYPES = frozenset(
    {
        "pull_request_review_approved",
        "pull_request_review_rejected",
        "pull_request_review_comment",
    }
)

# The actions each fine event type is sent with; an action listed for one type is never sent
# with another, so `issues` and `pull_request` (which carry many actions) refuse these.
_ACTIONS: Mapping[str, frozenset[str]] = {
    "issue_assign": frozenset({"assigned", "unassigned"}),
    "pull_request_assign": frozenset({"assigned", "unassigned"}),
    "pull_request_sync": frozenset({"synchronized"}),
    "pull_request_review_request": frozenset({"review_requested", "review_request_removed"}),
    "issue_label": frozenset({"label_updated", "label_cleared"}),
    "pull_request_label": frozenset({"label_updated", "label_cleared"}),
    "issue_milestone": frozenset({"milestoned", "demilestoned"}),
    "pull_request_milestone": frozenset({"milestoned", "demilestoned"}),
    **{review: frozenset({"reviewed"}) for review in REVIEW_TYPES},
}
_OTHER_TYPES_ACTIONS = frozenset().union(*_ACTIONS.values())


def check_event_type(event_type: str, payload: Payload) -> None:
    """Raise `MalformedDeliveryError` (400) if the signed body contradicts `event_type`."""
    action = getattr(payload, "action", None)
    if isinstance(payload, ActionRunPayload):
        expected = event_type.removeprefix("action_run_")
        if action != expected:
            _contradicts(event_type, f"action is {action!r}, not {expected!r}")
        return
    if isinstance(payload, IssuePayload | PullRequestPayload):
        allowed = _ACTIONS.get(event_type)
        if allowed is not None and action not in allowed:
            _contradicts(event_type, f"action is {action!r}, not one of {sorted(allowed)}")
        if allowed is None and action in _OTHER_TYPES_ACTIONS:
            _contradicts(event_type, f"action {action!r} belongs to another event type")
    if isinstance(payload, PullRequestPayload):
        review = payload.review.type if payload.review is not None else None
        if event_type in REVIEW_TYPES and review != event_type:
            _contradicts(event_type, f"review.type is {review!r}")
        if event_type not in REVIEW_TYPES and review is not None:
            _contradicts(event_type, f"it is a submitted review ({review!r})")
    if isinstance(payload, IssueCommentPayload):
        on_pull = payload.is_pull or payload.issue.is_pull
        if (event_type == "pull_request_comment") != on_pull:
            where = "a pull request" if on_pull else "an issue"
            _contradicts(event_type, f"the comment is on {where}")


def _contradicts(event_type: str, what: str) -> None:
    raise MalformedDeliveryError(
        f"the event-type header says {event_type!r} but the signed body disagrees ({what}): "
        "send deliveries unchanged from a Forgejo or Gitea webhook"
    )
