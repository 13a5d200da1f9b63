"""Typed views of the webhook payloads the flows read, validated with pydantic.

Only the fields the flows need are modelled; unknown keys are ignored because Forgejo and Gitea
add fields between versions (docs/forgejo-protocol.md §2 "Version drift"). Go renders empty
slices and some strings as `null`, so those are read as empty values rather than rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, from_json

from claude_hooks.forge.names import FullName
from claude_hooks.forge.webhook import MalformedDeliveryError


def _none_to_empty_str(value: object) -> object:
    return "" if value is None else value


def _none_to_empty_list(value: object) -> object:
    return [] if value is None else value


def _embedded_json(value: object) -> object:
    """Forgejo embeds a run's triggering event as a JSON string; an empty string means none."""
    if value is None or value == "":
        return None
    # pydantic-core's parser bounds nesting depth and raises ValueError, a validation error here.
    return from_json(value) if isinstance(value, str) else value


Text = Annotated[str, BeforeValidator(_none_to_empty_str)]
# Numbers and ids fit the database's 64-bit integers; anything larger is a malformed delivery.
# User ids may be negative (Forgejo's ghost user is -1); issue numbers and other ids may not.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Number = Annotated[int, Field(ge=1, le=2**63 - 1)]
Id = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class User(_Model):
    login: str
    id: Int64 | None = None


class Permissions(_Model):
    """The acting user's rights on the repository (Forgejo fills them for the sender)."""

    admin: bool = False
    push: bool = False
    pull: bool = False


class Repository(_Model):
    """`full_name` names workdirs, mirrors and API paths: it must follow the forge's rules."""

    full_name: FullName
    owner: User
    name: str
    html_url: str | None = None
    permissions: Permissions | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Repository:
        if self.full_name != f"{self.owner.login}/{self.name}":
            raise ValueError(
                f"full_name {self.full_name!r} is not owner.login/name "
                f"({self.owner.login[:40]!r}/{self.name[:100]!r})"
            )
        return self


class Branch(_Model):
    ref: str
    sha: str


class IssuePullRef(_Model):
    """The small `issue.pull_request` object: present only when the issue is a pull request."""

    merged: bool = False
    html_url: str | None = None


Users = Annotated[list[User], BeforeValidator(_none_to_empty_list)]


class Label(_Model):
    name: str


Labels = Annotated[list[Label], BeforeValidator(_none_to_empty_list)]


class Issue(_Model):
    number: Number
    title: str
    body: Text = ""
    state: str
    user: User
    assignees: Users = []
    labels: Labels = []  # after the change, on `issue_label` events
    pull_request: IssuePullRef | None = None
    html_url: str | None = None

    @property
    def is_pull(self) -> bool:
        return self.pull_request is not None


class Comment(_Model):
    id: Id
    body: Text = ""
    user: User
    html_url: str | None = None


class PullRequest(_Model):
    number: Number
    title: str
    body: Text = ""
    state: str
    user: User
    assignees: Users = []
    labels: Labels = []  # after the change, on `pull_request_label` events
    merged: bool = False
    head: Branch
    base: Branch
    html_url: str | None = None


class Review(_Model):
    """A submitted review: `type` repeats the event type, `content` is the review's text."""

    type: str
    content: Text = ""


class IssuePayload(_Model):
    """`issues` and `issue_assign`: `issue.assignees` is the list after the change."""

    action: str
    issue: Issue
    repository: Repository
    sender: User


class IssueCommentPayload(_Model):
    """`issue_comment` and `pull_request_comment`; on a PR, `pull_request` is filled too."""

    action: str
    issue: Issue
    comment: Comment
    repository: Repository
    sender: User
    is_pull: bool = False
    pull_request: PullRequest | None = None


class PullRequestPayload(_Model):
    """Every `pull_request*` event type.

    `requested_reviewer` is the requested user for `review_requested`, but the reviewer on
    submitted reviews (Forgejo >= 10); `review` is set only on submitted reviews.
    """

    action: str
    number: Number
    pull_request: PullRequest
    repository: Repository
    sender: User
    requested_reviewer: User | None = None
    review: Review | None = None


class StatusPayload(_Model):
    """Gitea's `status` event (Forgejo never sends it): no action, no branch or PR."""

    sha: str
    state: str
    context: Text = ""
    description: Text = ""
    target_url: Text = ""
    repository: Repository
    sender: User


class TriggerPullRequest(_Model):
    number: Number
    head: Branch


class TriggerEvent(_Model):
    """The event that started a run; `pull_request` is set when a pull request did."""

    pull_request: TriggerPullRequest | None = None


class ActionRun(_Model):
    """A Forgejo Actions run.

    `commit_sha` is the commit the run checked out: the PR head for `pull_request` runs, the
    base for `pull_request_target`. `prettyref` is `#<number>` for PR runs, else a branch or
    tag. `event_payload` arrives as a JSON string and is decoded here.
    """

    id: Id
    index_in_repo: Number
    workflow_id: str
    commit_sha: str
    status: str
    event: str
    prettyref: str = ""
    event_payload: Annotated[TriggerEvent | None, BeforeValidator(_embedded_json)] = None
    html_url: str | None = None
    repository: Repository
    trigger_user: User


class ActionRunPayload(_Model):
    """`action_run_failure`, `action_run_success`, `action_run_recover` (Forgejo >= 12).

    There is no top-level repository or sender: both live on `run`.
    """

    action: str
    run: ActionRun
    prior_status: str = ""
    last_run: ActionRun | None = None

    @property
    def repository(self) -> Repository:
        return self.run.repository

    @property
    def sha(self) -> str:
        return self.run.commit_sha

    @property
    def pull_number(self) -> int | None:
        """The pull request that triggered the run, from its embedded event, if a PR did."""
        trigger = self.run.event_payload
        if trigger is None or trigger.pull_request is None:
            return None
        return trigger.pull_request.number


class PushPayload(_Model):
    ref: str
    after: str
    repository: Repository
    sender: User
    pusher: User | None = None
    total_commits: int = 0  # `commits` itself is capped (PAYLOAD_COMMIT_LIMIT)


Payload = (
    IssuePayload
    | IssueCommentPayload
    | PullRequestPayload
    | StatusPayload
    | ActionRunPayload
    | PushPayload
)

_MODEL_BY_EVENT_TYPE: Mapping[str, type[Payload]] = {
    "issues": IssuePayload,
    "issue_assign": IssuePayload,
    "issue_label": IssuePayload,
    "issue_comment": IssueCommentPayload,
    "pull_request_comment": IssueCommentPayload,
    "pull_request": PullRequestPayload,
    "pull_request_assign": PullRequestPayload,
    "pull_request_label": PullRequestPayload,
    "pull_request_sync": PullRequestPayload,
    "pull_request_review_request": PullRequestPayload,
    "pull_request_review_approved": PullRequestPayload,
    "pull_request_review_rejected": PullRequestPayload,
    "pull_request_review_comment": PullRequestPayload,
    "status": StatusPayload,
    "action_run_failure": ActionRunPayload,
    "action_run_success": ActionRunPayload,
    "action_run_recover": ActionRunPayload,
    "push": PushPayload,
}

M = TypeVar("M", bound=BaseModel)


def parse_payload(event_type: str, data: Mapping[str, Any]) -> Payload | None:
    """The typed payload for `event_type`, or None for event types the service ignores.

    Raises `MalformedDeliveryError` (400) naming the first bad field.
    """
    model = _MODEL_BY_EVENT_TYPE.get(event_type)
    return None if model is None else validate_payload(model, data)


def validate_payload(model: type[M], data: Mapping[str, Any]) -> M:
    """`model` validated from `data`, with pydantic's errors turned into one 400 message."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise MalformedDeliveryError(
            f"{_describe(errors[0])}{more}: send deliveries from a Forgejo or Gitea webhook"
        ) from None


def _describe(error: ErrorDetails) -> str:
    path = _field_path(error["loc"])
    if error["type"] == "missing":
        return f"payload field {path!r} is missing"
    return f"payload field {path!r} is invalid: {error['msg']}"


def _field_path(loc: tuple[int | str, ...]) -> str:
    """`('issue', 'assignees', 0, 'login')` -> `issue.assignees[0].login`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "(top level)"
