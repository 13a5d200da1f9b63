"""The event types Forgejo and Gitea send (`modules/webhook/type.go`), for bounded labels.

The event-type header is not signed, so a metric labelled with it as given would let anyone
who can sign one body make unbounded series. Labels use these names, and `other` for the rest.
"""

from __future__ import annotations

EVENT_TYPES = frozenset(
    {
        "create",
        "delete",
        "fork",
        "push",
        "issues",
        "issue_assign",
        "issue_label",
        "issue_milestone",
        "issue_comment",
        "pull_request",
        "pull_request_assign",
        "pull_request_label",
        "pull_request_milestone",
        "pull_request_comment",
        "pull_request_review_approved",
        "pull_request_review_rejected",
        "pull_request_review_comment",
        "pull_request_sync",
        "pull_request_review_request",
        "wiki",
        "repository",
        "release",
        "package",
        "status",
        "workflow_run",
        "workflow_job",
        "action_run_failure",
        "action_run_success",
        "action_run_recover",
    }
)
OTHER = "other"


def label(event_type: str) -> str:
    """`event_type` if Forgejo or Gitea sends it, else `other`."""
    return event_type if event_type in EVENT_TYPES else OTHER
