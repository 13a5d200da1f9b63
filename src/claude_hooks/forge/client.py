"""Async client for the few Forgejo (and Gitea) REST endpoints the service needs.

One `httpx.AsyncClient` per `ForgejoClient`, so connections are reused across calls.
Transient failures (5xx, connection errors, timeouts) are retried with exponential backoff;
4xx answers are final and become a `ForgejoError` subclass whose message says what to do.
A POST that may already have reached Forgejo is not repeated, because a second comment or
merge attempt would do harm; see `_Request.idempotent`.
The token only ever travels in the `Authorization` header: never in a URL, log or message.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from claude_hooks.errors import ClaudeHooksError

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
MAX_PAGE_READ = 32 * 1024 * 1024  # a web page read no further than this (its tail is kept)
PAGE_LIMIT = 50  # Forgejo's default [api] MAX_RESPONSE_ITEMS
WRITE_PERMISSIONS = frozenset({"write", "admin", "owner"})

MergeStyle = Literal["merge", "rebase", "rebase-merge", "squash", "fast-forward-only"]

# Statuses worth another attempt for a request that may not be repeated blindly: the proxy or
# Forgejo says it did not process the request.
_UNPROCESSED_STATUSES = frozenset({502, 503})


# ---------------------------------------------------------------------------------------------
# Errors


class ForgejoError(ClaudeHooksError):
    """A Forgejo API call failed; the message says what happened and what to do."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        forgejo_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.forgejo_message = forgejo_message


class ForgejoUnauthorized(ForgejoError):
    """401: the token is missing, wrong, expired or revoked."""


class ForgejoForbidden(ForgejoError):
    """403: the token's account or scopes do not allow the call."""


class ForgejoNotFound(ForgejoError):
    """404: the repository, issue, pull request or user does not exist (or is hidden)."""


class ForgejoMergeRefused(ForgejoError):
    """405/409 on merge: Forgejo will not merge now (not mergeable, head moved, scheduled)."""


class ForgejoUnavailable(ForgejoError):
    """5xx, connection errors or timeouts that outlasted the retries."""


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class CommitStatus:
    """One context's status on a commit (Forgejo calls the state key `status`)."""

    context: str
    state: str
    target_url: str
    description: str


@dataclass(frozen=True, slots=True)
class CombinedStatus:
    """The worst state over a commit's latest status per context; `state == ""` when none."""

    state: str
    sha: str
    total_count: int
    statuses: tuple[CommitStatus, ...]


@dataclass(frozen=True, slots=True)
class PullInfo:
    number: int
    state: str
    merged: bool
    head_sha: str
    head_ref: str
    base_ref: str
    user_login: str
    body: str
    title: str
    html_url: str
    head_repo: str = ""  # `owner/name` of the head's repository; "" if it is gone


@dataclass(frozen=True, slots=True)
class IssueInfo:
    number: int
    title: str
    body: str
    state: str
    user_login: str
    assignees: tuple[str, ...]
    is_pull: bool


@dataclass(frozen=True, slots=True)
class MergeResult:
    """`merged`: done now (200); `scheduled`: will merge when checks succeed (201)."""

    merged: bool
    scheduled: bool


# ---------------------------------------------------------------------------------------------
# Wire shapes: only the fields read here; unknown keys are ignored, as Forgejo adds fields.


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _WireUser(_Wire):
    login: str


class _WireRepoName(_Wire):
    full_name: str


class _WireBranch(_Wire):
    ref: str
    sha: str
    # None when the head's repository is gone (a deleted fork)
    repo: _WireRepoName | None = None


class _WirePull(_Wire):
    number: int
    state: str
    merged: bool = False
    head: _WireBranch
    base: _WireBranch
    user: _WireUser | None = None
    body: str | None = None
    title: str = ""
    html_url: str = ""

    def info(self) -> PullInfo:
        return PullInfo(
            number=self.number,
            state=self.state,
            merged=self.merged,
            head_sha=self.head.sha,
            head_ref=self.head.ref,
            base_ref=self.base.ref,
            user_login=self.user.login if self.user else "",
            body=self.body or "",
            title=self.title,
            html_url=self.html_url,
            head_repo=self.head.repo.full_name if self.head.repo else "",
        )


class _WireIssue(_Wire):
    number: int
    title: str = ""
    body: str | None = None
    state: str
    user: _WireUser | None = None
    assignees: list[_WireUser] | None = None
    pull_request: dict[str, Any] | None = None


class _WireStatus(_Wire):
    context: str = ""
    status: str = ""
    target_url: str | None = None
    description: str | None = None


class _WireCombined(_Wire):
    state: str = ""
    sha: str = ""
    total_count: int = 0
    statuses: list[_WireStatus] | None = None


class _WirePermission(_Wire):
    permission: str


class _WireRepository(_Wire):
    default_branch: str


class _WireCommitId(_Wire):
    id: str


class _WireNamedBranch(_Wire):
    commit: _WireCommitId


class _WireContents(_Wire):
    type: str
    encoding: str | None = None
    content: str | None = None


class _WireLabel(_Wire):
    id: int
    name: str


class _WireComment(_Wire):
    id: int


_W = TypeVar("_W", bound=_Wire)


# ---------------------------------------------------------------------------------------------
# Client


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str  # below /api/v1, already quoted
    resource: str  # for messages, e.g. "pull request acme/widget#18"
    params: dict[str, str | int] | None = None
    json: dict[str, Any] | None = None
    # False for calls that must not run twice (comment, merge): after the request may have
    # reached Forgejo, a failure is reported instead of retried.
    idempotent: bool = True


def _seg(value: str | int) -> str:
    """Quote one path segment, so names cannot change the path: `/` is escaped, and `.` or `..`
    (which URL normalisation would resolve) become `%2E` or `%2E%2E`."""
    text = str(value)
    if text in (".", ".."):
        return "%2E" * len(text)
    return quote(text, safe="")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying context per process: loading the CA bundle costs ~30 ms per client."""
    return httpx.create_ssl_context()


def _forgejo_message(response: httpx.Response) -> str:
    """Forgejo's `{"message": ...}` from an error answer, or a short text fallback."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return response.reason_phrase


class ForgejoClient:
    """Calls Forgejo's REST API with one account's token (`label` names it in messages)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        label: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ForgejoError(
                f"the Forgejo URL {base_url!r} is not an http(s) URL: "
                "set [forgejo] url to e.g. https://forge.example.org"
            )
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0 and timeout > 0")
        root = base_url.rstrip("/")
        if root.endswith(API_PREFIX):
            root = root[: -len(API_PREFIX)]
        self.base_url = root
        self.label = label
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._has_token = bool(token)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"token {token}"
        self._http = httpx.AsyncClient(
            base_url=root + API_PREFIX,
            headers=headers,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            verify=_ssl_context(),
            follow_redirects=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- endpoints ------------------------------------------------------------------------

    async def permission(self, owner: str, repo: str, user: str) -> str:
        """`user`'s access to the repo: none, read, write, admin or owner.

        Forgejo answers 404 for a user it does not know; that is "none". Asking about another
        user needs the token's account to be a repo or site admin (else 403).
        """
        request = _Request(
            "GET",
            f"/repos/{_seg(owner)}/{_seg(repo)}/collaborators/{_seg(user)}/permission",
            f"permission of {user!r} on {owner}/{repo}",
        )
        try:
            response = await self._send(request)
        except ForgejoNotFound:
            return "none"
        return self._parse(response, _WirePermission, request).permission

    async def whoami(self) -> str:
        """The login of the token's account (`GET /user`)."""
        request = _Request("GET", "/user", "the token's user")
        return self._parse(await self._send(request), _WireUser, request).login

    async def can_write(self, owner: str, repo: str, user: str) -> bool:
        return await self.permission(owner, repo, user) in WRITE_PERMISSIONS

    async def comment(self, owner: str, repo: str, number: int, body: str) -> int:
        """Post a comment on an issue or pull request; returns the comment id."""
        request = _Request(
            "POST",
            f"/repos/{_seg(owner)}/{_seg(repo)}/issues/{_seg(number)}/comments",
            f"issue or pull request {owner}/{repo}#{number}",
            json={"body": body},
            idempotent=False,
        )
        response = await self._send(request)
        return self._parse(response, _WireComment, request).id

    async def edit_comment(self, owner: str, repo: str, comment_id: int, body: str) -> None:
        """Replace a comment's text (a living status comment); doing it twice is harmless."""
        request = _Request(
            "PATCH",
            f"/repos/{_seg(owner)}/{_seg(repo)}/issues/comments/{_seg(comment_id)}",
            f"comment {comment_id} in {owner}/{repo}",
            json={"body": body},
        )
        await self._send(request)

    async def react(self, owner: str, repo: str, comment_id: int, content: str) -> None:
        """Put a reaction (`eyes`, `+1`, `-1`, ...) on a comment; Forgejo keeps one of each
        per user, so sending it twice is harmless."""
        request = _Request(
            "POST",
            f"/repos/{_seg(owner)}/{_seg(repo)}/issues/comments/{_seg(comment_id)}/reactions",
            f"comment {comment_id} in {owner}/{repo}",
            json={"content": content},
        )
        await self._send(request)

    async def label_id(self, owner: str, repo: str, name: str) -> int | None:
        """The id of the repository's label called `name`, looked for page by page."""
        page = 1
        while True:
            request = _Request(
                "GET",
                f"/repos/{_seg(owner)}/{_seg(repo)}/labels",
                f"labels of {owner}/{repo}",
                params={"page": page, "limit": PAGE_LIMIT},
            )
            batch = self._parse_list(await self._send(request), _WireLabel, request)
            for label in batch:
                if label.name == name:
                    return label.id
            if len(batch) < PAGE_LIMIT:
                return None
            page += 1

    async def create_label(self, owner: str, repo: str, name: str, color: str) -> int:
        request = _Request(
            "POST",
            f"/repos/{_seg(owner)}/{_seg(repo)}/labels",
            f"labels of {owner}/{repo}",
            json={"name": name, "color": color},
            idempotent=False,
        )
        return self._parse(await self._send(request), _WireLabel, request).id

    async def add_labels(self, owner: str, repo: str, number: int, ids: list[int]) -> None:
        request = _Request(
            "POST",
            f"/repos/{_seg(owner)}/{_seg(repo)}/issues/{_seg(number)}/labels",
            f"issue or pull request {owner}/{repo}#{number}",
            json={"labels": ids},
        )
        await self._send(request)

    async def combined_status(self, owner: str, repo: str, ref: str) -> CombinedStatus:
        request = _Request(
            "GET",
            f"/repos/{_seg(owner)}/{_seg(repo)}/commits/{_seg(ref)}/status",
            f"commit {ref!r} in {owner}/{repo}",
        )
        wire = self._parse(await self._send(request), _WireCombined, request)
        return CombinedStatus(
            state=wire.state,
            sha=wire.sha,
            total_count=wire.total_count,
            statuses=tuple(
                CommitStatus(
                    context=s.context,
                    state=s.status,
                    target_url=s.target_url or "",
                    description=s.description or "",
                )
                for s in wire.statuses or ()
            ),
        )

    def on_forge(self, url: str) -> bool:
        """Whether `url` is on this forge's own scheme, host and port (so the token may go)."""
        mine, theirs = urlsplit(self.base_url), urlsplit(url)
        return (mine.scheme, mine.netloc) == (theirs.scheme, theirs.netloc)

    async def fetch_page(self, url: str, max_bytes: int) -> tuple[str, bool]:
        """A page of the forge's web side (a CI job log): its last `max_bytes` bytes as text,
        and whether more came before. Only on the forge's own host; one attempt."""
        if not self.on_forge(url):
            raise ForgejoError(f"{url!r} is not on the forge {self.base_url}: not fetched")
        tail = b""
        truncated = False
        try:
            async with self._http.stream("GET", url, headers={"Accept": "text/plain"}) as response:
                if not response.is_success:
                    raise ForgejoError(
                        f"Forgejo at {self.base_url} answered GET {url} with "
                        f"{response.status_code} {response.reason_phrase}"
                    )
                read = 0
                async for chunk in response.aiter_bytes():
                    read += len(chunk)
                    tail = (tail + chunk)[-max_bytes:]
                    truncated = truncated or read > max_bytes
                    if read > MAX_PAGE_READ:
                        break
        except httpx.HTTPError as exc:
            raise ForgejoError(
                f"cannot fetch {url} from Forgejo ({type(exc).__name__}: {exc or 'no detail'})"
            ) from exc
        return tail.decode("utf-8", "replace"), truncated

    async def get_pull(self, owner: str, repo: str, number: int) -> PullInfo:
        request = _Request(
            "GET",
            f"/repos/{_seg(owner)}/{_seg(repo)}/pulls/{_seg(number)}",
            f"pull request {owner}/{repo}#{number}",
        )
        return self._parse(await self._send(request), _WirePull, request).info()

    async def open_pulls(self, owner: str, repo: str) -> list[PullInfo]:
        """Every open pull request, page by page.

        Stops on an empty page, or on a short page unless `X-Total-Count` says more exist
        (a server whose page size is below 50 still returns everything).
        """
        pulls: list[PullInfo] = []
        page = 1
        while True:
            request = _Request(
                "GET",
                f"/repos/{_seg(owner)}/{_seg(repo)}/pulls",
                f"repository {owner}/{repo}",
                params={"state": "open", "page": page, "limit": PAGE_LIMIT},
            )
            response = await self._send(request)
            batch = self._parse_list(response, _WirePull, request)
            pulls.extend(p.info() for p in batch)
            total = response.headers.get("X-Total-Count", "")
            more = len(pulls) < int(total) if total.isdigit() else len(batch) >= PAGE_LIMIT
            if not batch or not more:
                return pulls
            page += 1

    async def pull_for_head(self, owner: str, repo: str, sha: str) -> PullInfo | None:
        """The open pull request whose head is `sha` (Forgejo has no direct lookup)."""
        for pull in await self.open_pulls(owner, repo):
            if pull.head_sha == sha:
                return pull
        return None

    async def merge(
        self,
        owner: str,
        repo: str,
        number: int,
        *,
        style: MergeStyle = "merge",
        head_commit_id: str | None = None,
        when_checks_succeed: bool = False,
        delete_branch: bool = False,
        title: str | None = None,
        message: str | None = None,
    ) -> MergeResult:
        """Merge now (200) or schedule "merge when checks succeed" (201).

        `head_commit_id` makes Forgejo refuse (409) if the head moved since it was reviewed.
        The body uses Go field names because several of Forgejo's merge form fields have no
        JSON tag.
        """
        body: dict[str, Any] = {
            "Do": style,
            "merge_when_checks_succeed": when_checks_succeed,
            "delete_branch_after_merge": delete_branch,
        }
        if title is not None:
            body["MergeTitleField"] = title
        if message is not None:
            body["MergeMessageField"] = message
        if head_commit_id is not None:
            body["head_commit_id"] = head_commit_id
        request = _Request(
            "POST",
            f"/repos/{_seg(owner)}/{_seg(repo)}/pulls/{_seg(number)}/merge",
            f"pull request {owner}/{repo}#{number}",
            json=body,
            idempotent=False,
        )
        response = await self._send(request, merge=True)
        if response.status_code == 201:
            return MergeResult(merged=False, scheduled=True)
        return MergeResult(merged=True, scheduled=False)

    async def create_pull(
        self, owner: str, repo: str, *, head: str, base: str, title: str, body: str
    ) -> PullInfo:
        """Open a pull request from the branch `head` into `base`."""
        request = _Request(
            "POST",
            f"/repos/{_seg(owner)}/{_seg(repo)}/pulls",
            f"repository {owner}/{repo}",
            json={"head": head, "base": base, "title": title, "body": body},
            idempotent=False,
        )
        return self._parse(await self._send(request), _WirePull, request).info()

    async def edit_pull(
        self, owner: str, repo: str, number: int, *, title: str, body: str
    ) -> PullInfo:
        request = _Request(
            "PATCH",
            f"/repos/{_seg(owner)}/{_seg(repo)}/pulls/{_seg(number)}",
            f"pull request {owner}/{repo}#{number}",
            json={"title": title, "body": body},
            idempotent=False,
        )
        return self._parse(await self._send(request), _WirePull, request).info()

    async def submit_review(
        self,
        owner: str,
        repo: str,
        number: int,
        *,
        event: str,
        body: str,
        comments: list[dict[str, Any]],
        commit_id: str | None = None,
    ) -> int:
        """Post a review (`APPROVED`, `REQUEST_CHANGES` or `COMMENT`) with line comments
        (`{"path", "new_position", "body"}`); returns the review id."""
        payload: dict[str, Any] = {"event": event, "body": body, "comments": comments}
        if commit_id:
            payload["commit_id"] = commit_id
        request = _Request(
            "POST",
            f"/repos/{_seg(owner)}/{_seg(repo)}/pulls/{_seg(number)}/reviews",
            f"pull request {owner}/{repo}#{number}",
            json=payload,
            idempotent=False,
        )
        return self._parse(await self._send(request), _WireComment, request).id

    async def default_branch(self, owner: str, repo: str) -> str:
        """The repository's default branch (`GET /repos/{owner}/{repo}`)."""
        request = _Request(
            "GET", f"/repos/{_seg(owner)}/{_seg(repo)}", f"repository {owner}/{repo}"
        )
        return self._parse(await self._send(request), _WireRepository, request).default_branch

    async def branch_commit(self, owner: str, repo: str, branch: str) -> str:
        """The sha a branch points at."""
        request = _Request(
            "GET",
            f"/repos/{_seg(owner)}/{_seg(repo)}/branches/{_seg(branch)}",
            f"branch {branch!r} of {owner}/{repo}",
        )
        return self._parse(await self._send(request), _WireNamedBranch, request).commit.id

    async def file_at(self, owner: str, repo: str, path: str, ref: str) -> str | None:
        """A text file's content at `ref`, or None where there is no such file."""
        segments = "/".join(_seg(part) for part in path.split("/"))
        request = _Request(
            "GET",
            f"/repos/{_seg(owner)}/{_seg(repo)}/contents/{segments}",
            f"file {path!r} of {owner}/{repo} at {ref[:12]}",
            params={"ref": ref},
        )
        try:
            response = await self._send(request)
        except ForgejoNotFound:
            return None
        wire = self._parse(response, _WireContents, request)
        if wire.type != "file" or wire.encoding != "base64" or wire.content is None:
            return None
        try:
            return base64.b64decode(wire.content).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise self._bad_answer(request, "the file is not UTF-8 text") from None

    async def get_issue(self, owner: str, repo: str, number: int) -> IssueInfo:
        """An issue or a pull request (they share numbers); `is_pull` tells which."""
        request = _Request(
            "GET",
            f"/repos/{_seg(owner)}/{_seg(repo)}/issues/{_seg(number)}",
            f"issue {owner}/{repo}#{number}",
        )
        wire = self._parse(await self._send(request), _WireIssue, request)
        return IssueInfo(
            number=wire.number,
            title=wire.title,
            body=wire.body or "",
            state=wire.state,
            user_login=wire.user.login if wire.user else "",
            assignees=tuple(u.login for u in wire.assignees or ()),
            is_pull=wire.pull_request is not None,
        )

    # -- transport --------------------------------------------------------------------------

    async def _send(self, request: _Request, *, merge: bool = False) -> httpx.Response:
        """One call with retries; returns a 2xx response or raises a `ForgejoError`."""
        attempts = self.retries + 1
        last_problem = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 2))
            try:
                response = await self._http.request(
                    request.method, request.path, params=request.params, json=request.json
                )
            except httpx.TimeoutException as exc:
                last_problem = f"no answer within {self.timeout:g} s"
                reached = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
            except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
                last_problem = f"connection failed ({type(exc).__name__}: {exc or 'no detail'})"
                reached = not isinstance(exc, httpx.ConnectError)
            except httpx.TransportError as exc:
                raise ForgejoError(
                    f"cannot call Forgejo at {self.base_url} ({type(exc).__name__}: {exc}): "
                    "check [forgejo] url"
                ) from exc
            else:
                if response.is_success:
                    return response
                if response.status_code < 500:
                    raise self._client_error(request, response, merge=merge)
                last_problem = (
                    f"{response.status_code} {response.reason_phrase}: {_forgejo_message(response)}"
                )
                reached = response.status_code not in _UNPROCESSED_STATUSES
            if reached and not request.idempotent:
                raise ForgejoUnavailable(
                    f"Forgejo at {self.base_url} failed on {request.method} {request.path} "
                    f"for {request.resource} ({last_problem}); not retried because it may "
                    "have taken effect: check the forge before trying again"
                )
            log.warning(
                "Forgejo %s %s attempt %d/%d failed: %s",
                request.method,
                request.path,
                attempt,
                attempts,
                last_problem,
            )
        raise ForgejoUnavailable(
            f"Forgejo at {self.base_url} did not answer {request.method} {request.path} "
            f"after {attempts} attempts (last: {last_problem}): check that Forgejo is up "
            "and that [forgejo] url is right"
        )

    def _client_error(
        self, request: _Request, response: httpx.Response, *, merge: bool
    ) -> ForgejoError:
        status = response.status_code
        detail = _forgejo_message(response)
        whose = f"the Forgejo token of type {self.label!r}" if self.label else "the Forgejo token"
        where = f"[types.{self.label}] token" if self.label else "the configured token"
        if status == 401:
            if not self._has_token:
                return ForgejoUnauthorized(
                    f"Forgejo wants a token (401) and none is configured: set {where}",
                    status=status,
                    forgejo_message=detail,
                )
            return ForgejoUnauthorized(
                f"{whose} was refused (401): check {where}",
                status=status,
                forgejo_message=detail,
            )
        if status == 403:
            return ForgejoForbidden(
                f"{whose} may not {request.method} {request.resource} (403: {detail}): "
                "give that account the access it needs on the repository, or a token with "
                "the write:issue and write:repository scopes",
                status=status,
                forgejo_message=detail,
            )
        if status == 404:
            return ForgejoNotFound(
                f"Forgejo has no {request.resource} (404: {detail}): check the name and "
                f"number, and that {whose} can see the repository",
                status=status,
                forgejo_message=detail,
            )
        if merge and status in (405, 409):
            advice = (
                "it is not mergeable, already merged, a work in progress, or the merge style "
                "is not allowed in this repository; look at the pull request on the forge"
                if status == 405
                else "the head moved, it conflicts, or a merge is already scheduled; "
                "fetch the pull request again before retrying"
            )
            return ForgejoMergeRefused(
                f"Forgejo will not merge {request.resource} ({status}: {detail}): {advice}",
                status=status,
                forgejo_message=detail,
            )
        return ForgejoError(
            f"Forgejo refused {request.method} {request.path} for {request.resource} "
            f"({status}: {detail})",
            status=status,
            forgejo_message=detail,
        )

    def _bad_answer(self, request: _Request, problem: str) -> ForgejoError:
        return ForgejoError(
            f"Forgejo at {self.base_url} answered {request.method} {request.path} with "
            f"unexpected content ({problem}): check that [forgejo] url points at Forgejo "
            "or Gitea, not at a proxy or login page"
        )

    def _json(self, request: _Request, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise self._bad_answer(request, "not JSON") from exc

    def _parse(self, response: httpx.Response, model: type[_W], request: _Request) -> _W:
        try:
            return model.model_validate(self._json(request, response))
        except ValidationError as exc:
            raise self._bad_answer(request, f"{exc.error_count()} field errors") from exc

    def _parse_list(self, response: httpx.Response, model: type[_W], request: _Request) -> list[_W]:
        data = self._json(request, response)
        if not isinstance(data, list):
            raise self._bad_answer(request, "not a list")
        try:
            return [model.model_validate(item) for item in data]
        except ValidationError as exc:
            raise self._bad_answer(request, f"{exc.error_count()} field errors") from exc
