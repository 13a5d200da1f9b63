"""Payload models against every fixture, and the 400 messages for payloads that do not fit."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from claude_hooks.forge.payloads import (
    ActionRunPayload,
    IssueCommentPayload,
    IssuePayload,
    PullRequestPayload,
    PushPayload,
    Review,
    StatusPayload,
    User,
    parse_payload,
    validate_payload,
)
from claude_hooks.forge.webhook import MalformedDeliveryError, decode_delivery
from tests.support import FIXTURES

INDEX: list[dict[str, Any]] = json.loads((FIXTURES / "INDEX.json").read_text())["fixtures"]
SHA_A = "c5097eeead57e79ceb46023c3554f18325baa181"
SHA_C = "dc5b081193719209a67d020d386d4c1ddc27c662"
SHA_D = "84e76b1e1d5574c885c55e11fde12eaad5ad8d47"
SHA_M1 = "9da00f8e7faef80e30979d7bc89e2890dd7d3b27"

EXPECTED_MODEL: dict[str, type[BaseModel]] = {
    "issues_opened": IssuePayload,
    "issues_assigned_dev": IssuePayload,
    "issues_unassigned": IssuePayload,
    "issue_comment_created_mention": IssueCommentPayload,
    "pull_request_comment_created_mention": IssueCommentPayload,
    "pull_request_opened": PullRequestPayload,
    "pull_request_synchronized": PullRequestPayload,
    "pull_request_review_comment": PullRequestPayload,
    "pull_request_review_rejected": PullRequestPayload,
    "pull_request_review_approved": PullRequestPayload,
    "pull_request_closed_merged": PullRequestPayload,
    "pull_request_review_requested_reviewer": PullRequestPayload,
    "pull_request_assigned_dev": PullRequestPayload,
    "status_failure": StatusPayload,
    "status_success": StatusPayload,
    "action_run_failure": ActionRunPayload,
    "action_run_success": ActionRunPayload,
    "push": PushPayload,
    "pull_request_label_added": PullRequestPayload,
    "pull_request_label_updated": PullRequestPayload,
    "pull_request_label_cleared": PullRequestPayload,
}
# Captured from another Forgejo than the acme/widget ones.
REPOSITORY = {
    name: "test_it/test_ci_thing"
    for name in (
        "pull_request_label_added",
        "pull_request_label_updated",
        "pull_request_label_cleared",
    )
}


def data(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_bytes())
    return loaded


def parsed(name: str) -> Any:
    """The fixture as the service sees it: decoded with its headers, then parsed by event type."""
    headers = json.loads((FIXTURES / f"{name}.headers.json").read_text())
    delivery = decode_delivery(headers, (FIXTURES / f"{name}.json").read_bytes(), b"fixture-secret")
    return parse_payload(delivery.event_type, delivery.payload)


def test_every_fixture_has_an_expected_model() -> None:
    assert sorted(EXPECTED_MODEL) == sorted(entry["name"] for entry in INDEX)


@pytest.mark.parametrize(("name", "model"), EXPECTED_MODEL.items(), ids=list(EXPECTED_MODEL))
def test_every_fixture_parses_with_its_model(name: str, model: type[BaseModel]) -> None:
    payload: Any = parsed(name)
    repository = REPOSITORY.get(name, "acme/widget")
    assert payload.repository.full_name == repository
    assert payload.repository.owner.login == repository.split("/")[0]
    assert type(payload) is model


def test_issue_opened_reads_null_assignees_as_empty() -> None:
    payload = parsed("issues_opened")
    assert (payload.action, payload.issue.number, payload.issue.assignees) == ("opened", 17, [])
    assert not payload.issue.is_pull
    assert payload.issue.user.login == "alice"
    assert payload.repository.permissions.admin


def test_issue_assigned_lists_assignees_after_the_change() -> None:
    payload = parsed("issues_assigned_dev")
    assert payload.action == "assigned"
    assert [u.login for u in payload.issue.assignees] == ["dev-bot"]
    assert payload.sender == User(login="alice", id=5)


def test_issue_unassigned_no_longer_lists_the_removed_user() -> None:
    payload = parsed("issues_unassigned")
    assert (payload.action, payload.issue.number) == ("unassigned", 22)
    assert [u.login for u in payload.issue.assignees] == ["alice"]


def test_issue_comment() -> None:
    payload = parsed("issue_comment_created_mention")
    assert (payload.action, payload.is_pull, payload.pull_request) == ("created", False, None)
    assert payload.comment.id == 1093
    assert payload.comment.body.startswith("@dev-bot ")
    assert payload.comment.user.login == payload.sender.login == "alice"
    assert payload.comment.html_url.endswith("#issuecomment-1093")
    assert payload.issue.number == 17


def test_pull_request_comment_carries_the_pull_request() -> None:
    payload = parsed("pull_request_comment_created_mention")
    assert payload.is_pull
    assert payload.issue.is_pull
    assert payload.issue.pull_request.merged is False
    assert payload.issue.number == payload.pull_request.number == 19
    assert payload.comment.body.startswith("@dev-bot ")


def test_pull_request_opened() -> None:
    payload = parsed("pull_request_opened")
    pr = payload.pull_request
    assert (payload.action, payload.number, pr.number, pr.user.login) == (
        "opened",
        18,
        18,
        "dev-bot",
    )
    assert (pr.head.ref, pr.head.sha) == ("dev-bot/issue-17-retry", SHA_A)
    assert pr.base.ref == "main"
    assert (pr.state, pr.merged, pr.assignees) == ("open", False, [])
    assert payload.requested_reviewer is None
    assert payload.review is None


def test_pull_request_synchronized_has_the_new_head() -> None:
    payload = parsed("pull_request_synchronized")
    assert (payload.action, payload.pull_request.head.sha) == ("synchronized", SHA_C)


@pytest.mark.parametrize(
    ("name", "review_type", "content"),
    [
        ("pull_request_review_approved", "pull_request_review_approved", "LGTM, thanks!"),
        ("pull_request_review_rejected", "pull_request_review_rejected", "Please add a test"),
        ("pull_request_review_comment", "pull_request_review_comment", "Looks reasonable"),
    ],
)
def test_submitted_reviews(name: str, review_type: str, content: str) -> None:
    payload = parsed(name)
    assert payload.action == "reviewed"
    assert payload.review.type == review_type
    assert payload.review.content.startswith(content)
    assert payload.sender.login == payload.requested_reviewer.login == "bob"
    assert payload.pull_request.user.login == "dev-bot"


def test_pull_request_merged() -> None:
    payload = parsed("pull_request_closed_merged")
    assert (payload.action, payload.pull_request.state) == ("closed", "closed")
    assert payload.pull_request.merged is True
    assert payload.pull_request.base.sha == SHA_M1


def test_review_requested_names_the_requested_user() -> None:
    payload = parsed("pull_request_review_requested_reviewer")
    assert (payload.action, payload.number) == ("review_requested", 19)
    assert payload.requested_reviewer.login == "dev-bot"
    assert payload.sender.login == "alice"


def test_pull_request_assigned() -> None:
    payload = parsed("pull_request_assigned_dev")
    assert payload.action == "assigned"
    assert [u.login for u in payload.pull_request.assignees] == ["dev-bot"]


@pytest.mark.parametrize(
    ("name", "sha", "state", "description"),
    [
        ("status_failure", SHA_C, "failure", "Pipeline failed"),
        ("status_success", SHA_D, "success", "Pipeline was successful"),
    ],
)
def test_gitea_status(name: str, sha: str, state: str, description: str) -> None:
    payload = parsed(name)
    assert (payload.sha, payload.state, payload.description) == (sha, state, description)
    assert payload.context == "ci/woodpecker/pr/test"
    assert payload.target_url.startswith("https://ci.example.com/")


@pytest.mark.parametrize(
    ("name", "action", "sha", "last_sha"),
    [
        ("action_run_failure", "failure", SHA_C, SHA_A),
        ("action_run_success", "success", SHA_D, SHA_C),
    ],
)
def test_action_run_finds_the_sha_and_the_pull_request(
    name: str, action: str, sha: str, last_sha: str
) -> None:
    payload = parsed(name)
    assert (payload.action, payload.run.status, payload.prior_status) == (action, action, "running")
    assert payload.sha == sha
    assert payload.pull_number == 18
    assert payload.run.prettyref == "#18"
    assert payload.run.event_payload.pull_request.head.sha == sha
    assert payload.run.trigger_user.login == "dev-bot"
    assert payload.last_run.commit_sha == last_sha


def test_action_run_recover_uses_the_same_model() -> None:
    recover = data("action_run_success") | {"action": "recover"}
    payload = parse_payload("action_run_recover", recover)
    assert isinstance(payload, ActionRunPayload)
    assert payload.action == "recover"


@pytest.mark.parametrize("event_payload", ["", None, '{"ref": "refs/heads/main"}'])
def test_action_run_not_started_by_a_pull_request_has_no_number(event_payload: Any) -> None:
    raw = data("action_run_failure")
    raw["run"] = raw["run"] | {"event": "push", "prettyref": "main", "event_payload": event_payload}
    payload = validate_payload(ActionRunPayload, raw)
    assert payload.pull_number is None
    assert payload.sha == SHA_C


def test_action_run_without_last_run() -> None:
    raw = data("action_run_failure")
    del raw["last_run"]
    assert validate_payload(ActionRunPayload, raw).last_run is None


def test_push() -> None:
    payload = parsed("push")
    assert (payload.ref, payload.after) == ("refs/heads/dev-bot/issue-17-retry", SHA_C)
    assert payload.sender.login == "dev-bot"


@pytest.mark.parametrize(
    "event_type",
    ["create", "delete", "package", "release", ""],
)
def test_unhandled_event_types_give_none(event_type: str) -> None:
    assert parse_payload(event_type, data("issues_opened")) is None


def test_null_text_reads_as_empty() -> None:
    raw = data("issues_opened")
    raw["issue"]["body"] = None
    assert validate_payload(IssuePayload, raw).issue.body == ""
    review = data("pull_request_review_approved")
    review["review"]["content"] = None
    assert validate_payload(PullRequestPayload, review).review == Review(
        type="pull_request_review_approved", content=""
    )


def test_models_are_frozen() -> None:
    payload = validate_payload(IssuePayload, data("issues_opened"))
    with pytest.raises(ValidationError):
        payload.action = "closed"


def broken(name: str, path: tuple[str | int, ...], value: Any = ...) -> dict[str, Any]:
    """The fixture with the field at `path` deleted (value ...) or replaced."""
    raw = copy.deepcopy(data(name))
    target: Any = raw
    for part in path[:-1]:
        target = target[part]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("event_type", "raw", "message"),
    [
        (
            "issue_assign",
            broken("issues_assigned_dev", ("issue", "number")),
            "payload field 'issue.number' is missing",
        ),
        ("issues", broken("issues_opened", ("sender",)), "payload field 'sender' is missing"),
        (
            "issues",
            broken("issues_opened", ("issue", "number"), "seventeen"),
            "payload field 'issue.number' is invalid: Input should be a valid integer",
        ),
        (
            "issue_assign",
            broken("issues_assigned_dev", ("issue", "assignees", 0, "login")),
            r"payload field 'issue.assignees\[0\].login' is missing",
        ),
        (
            "issues",
            broken("issues_opened", ("issue",), None),
            "payload field 'issue' is invalid",
        ),
        (
            "pull_request_review_request",
            broken("pull_request_review_requested_reviewer", ("pull_request", "head", "sha")),
            "payload field 'pull_request.head.sha' is missing",
        ),
        (
            "status",
            broken("status_failure", ("sha",)),
            "payload field 'sha' is missing",
        ),
        (
            "action_run_failure",
            broken("action_run_failure", ("run", "commit_sha")),
            "payload field 'run.commit_sha' is missing",
        ),
        (
            "action_run_failure",
            broken("action_run_failure", ("run", "event_payload"), "{not json"),
            "payload field 'run.event_payload' is invalid",
        ),
        (
            "action_run_failure",
            broken("action_run_failure", ("run", "event_payload"), "[" * 10_000),
            "payload field 'run.event_payload' is invalid",
        ),
        ("push", {}, r"payload field 'ref' is missing \(and 3 more\)"),
    ],
    ids=[
        "missing-number",
        "missing-sender",
        "bad-number",
        "missing-list-item-field",
        "null-object",
        "missing-nested",
        "status-sha",
        "run-sha",
        "bad-embedded-json",
        "deep-embedded-json",
        "several",
    ],
)
def test_bad_payload_is_400_naming_the_field(
    event_type: str, raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(MalformedDeliveryError, match=message) as caught:
        parse_payload(event_type, raw)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("name", "action", "labels"),
    [
        ("pull_request_label_added", "label_updated", ["Kind/Documentation", "Kind/Enhancement"]),
        ("pull_request_label_updated", "label_updated", ["Kind/Enhancement", "Kind/Testing"]),
        ("pull_request_label_cleared", "label_cleared", ["Kind/Enhancement", "Kind/Testing"]),
    ],
)
def test_label_events_carry_the_labels_after_the_change(
    name: str, action: str, labels: list[str]
) -> None:
    payload = parsed(name)
    assert payload.action == action
    assert [label.name for label in payload.pull_request.labels] == labels
