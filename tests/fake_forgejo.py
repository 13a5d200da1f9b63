"""A fake Forgejo REST API on 127.0.0.1, real HTTP, for tests of everything that calls Forgejo.

It serves the endpoints `claude_hooks.forge.client` uses, under /api/v1, from in-memory
state, and imitates Forgejo's answers (status codes, `{"message": ...}` bodies, pagination
with `X-Total-Count`, the permission rules). Every request needs a configured token. Faults
can be injected per path: the next N requests answer a chosen status or hang.

    with FakeForgejo() as forge:
        forge.add_token("tok-boss", "boss-bot")
        forge.add_repo("acme", "widget", collaborators={"boss-bot": "admin"})
        ...  # point a client at forge.base_url

or use the `fake_forgejo` fixture below. Handler threads share state under one lock; the
server runs in a background thread and `stop()` releases hung requests and joins all threads.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

API = "/api/v1"
PERMISSIONS = ("none", "read", "write", "admin", "owner")
# Forgejo's ordering of commit states, worst first (models/git/commit_status.go).
_STATE_RANK = {"error": 0, "failure": 1, "warning": 2, "pending": 3, "success": 4}


@dataclass
class FakeStatus:
    context: str
    state: str
    target_url: str = ""
    description: str = ""


@dataclass
class FakePull:
    head_sha: str
    head_ref: str
    base_ref: str = "main"
    merged: bool = False
    auto_merge: bool = False  # scheduled "merge when checks succeed"
    head_repo: str = ""  # `owner/name` of a fork the head is on; "": the repository itself


@dataclass
class FakeIssue:
    """An issue, or a pull request when `pull` is set (they share numbers, as in Forgejo)."""

    number: int
    title: str
    body: str
    user: str
    state: str = "open"
    assignees: list[str] = field(default_factory=list)
    pull: FakePull | None = None
    labels: list[str] = field(default_factory=list)


@dataclass
class FakeRepo:
    owner: str
    name: str
    private: bool = False
    collaborators: dict[str, str] = field(default_factory=dict)
    issues: dict[int, FakeIssue] = field(default_factory=dict)
    statuses: dict[str, list[FakeStatus]] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)  # id -> name
    default_branch: str = "main"
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit sha
    trees: dict[str, dict[str, str]] = field(default_factory=dict)  # sha -> path -> text

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class FakeComment:
    id: int
    repo: str  # "owner/name"
    number: int
    body: str
    user: str


@dataclass(frozen=True)
class FakeReaction:
    repo: str
    comment_id: int
    content: str
    user: str


@dataclass(frozen=True)
class FakeReview:
    repo: str
    number: int
    event: str
    body: str
    comments: list[dict[str, Any]]
    user: str


@dataclass(frozen=True)
class FakeMerge:
    """One merge request as received, whatever the answer was."""

    repo: str
    number: int
    body: dict[str, Any]
    user: str
    status: int


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # below /api/v1, unquoted
    query: dict[str, str]
    user: str | None  # the token's login, None if the token was missing or unknown
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class _Fault:
    method: str | None
    path: str
    remaining: int
    status: int | None  # None: hang, then answer normally
    message: str
    hang: float


@dataclass
class _Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # a plain-text body instead of JSON


def _error(status: int, message: str) -> _Answer:
    return _Answer(status, {"message": message, "url": "https://forgejo.org/api/swagger"})


class _NotFound(Exception):
    """Raised by lookups; becomes Forgejo's 404 answer."""


class FakeForgejo:
    """In-memory Forgejo: set state with `add_*`, inject faults, read what clients did."""

    def __init__(self, *, max_page_size: int = 50) -> None:
        self.max_page_size = max_page_size
        self.tokens: dict[str, str] = {}
        self.users: set[str] = set()
        self.site_admins: set[str] = set()
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.comments: list[FakeComment] = []
        self.merges: list[FakeMerge] = []
        self.reviews: list[FakeReview] = []
        self.reactions: list[FakeReaction] = []
        self.edits: list[tuple[int, str]] = []  # (comment id, new body), in order
        self.requests: list[RecordedRequest] = []
        self.job_logs: dict[str, str] = {}  # web path of a job's `/logs` -> the log
        self.web_requests: list[tuple[str, str | None]] = []  # (web path, token user)
        self.server_errors: list[BaseException] = []
        self._faults: list[_Fault] = []
        self._merge_answers: dict[tuple[str, str, int], list[tuple[int, str]]] = {}
        self._next_comment_id = 1000
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._healed = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What `ForgejoClient(base_url=...)` takes: the root URL, without /api/v1."""
        if self._server is None:
            raise RuntimeError("FakeForgejo is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.forge = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hung requests, stop serving, end the connections still open, and wait for
        every handler thread."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.end_connections()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None and self.server_errors:
            raise AssertionError(f"fake Forgejo failed: {self.server_errors!r}")

    # -- state ----------------------------------------------------------------------------------

    def add_token(self, token: str, login: str, *, site_admin: bool = False) -> None:
        with self._lock:
            self.tokens[token] = login
            self.users.add(login)
            if site_admin:
                self.site_admins.add(login)

    def add_user(self, *logins: str) -> None:
        with self._lock:
            self.users.update(logins)

    def add_repo(
        self,
        owner: str,
        name: str,
        *,
        private: bool = False,
        collaborators: Mapping[str, str] | None = None,
    ) -> FakeRepo:
        """A repo owned by `owner` (who has "owner" access); collaborators map login -> level."""
        with self._lock:
            repo = FakeRepo(owner, name, private=private)
            self.repos[(owner, name)] = repo
            self.users.add(owner)
            for login, level in (collaborators or {}).items():
                self.set_permission(owner, name, login, level)
            return repo

    def commit_file(self, owner: str, repo: str, path: str, text: str, branch: str = "") -> str:
        """A new commit on `branch` (default: the repo's default branch) with `path` set to
        `text` (an empty text removes it); returns the commit's sha."""
        with self._lock:
            found = self.repos[(owner, repo)]
            branch = branch or found.default_branch
            tree = dict(found.trees.get(found.branches.get(branch, ""), {}))
            if text:
                tree[path] = text
            else:
                tree.pop(path, None)
            sha = hashlib.sha1(f"{branch}:{len(found.trees)}:{sorted(tree.items())}".encode())
            found.trees[sha.hexdigest()] = tree
            found.branches[branch] = sha.hexdigest()
            return sha.hexdigest()

    def set_permission(self, owner: str, repo: str, login: str, level: str) -> None:
        if level not in PERMISSIONS:
            raise ValueError(f"permission must be one of {PERMISSIONS}")
        with self._lock:
            self.repos[(owner, repo)].collaborators[login] = level
            self.users.add(login)

    def add_issue(
        self,
        owner: str,
        repo: str,
        *,
        number: int | None = None,
        title: str = "An issue",
        body: str = "",
        user: str = "alice",
        state: str = "open",
        assignees: list[str] | None = None,
    ) -> FakeIssue:
        return self._add(owner, repo, number, title, body, user, state, assignees or [], None)

    def add_pull(
        self,
        owner: str,
        repo: str,
        *,
        head_sha: str,
        head_ref: str,
        base_ref: str = "main",
        number: int | None = None,
        title: str = "A pull request",
        body: str = "",
        user: str = "alice",
        state: str = "open",
        assignees: list[str] | None = None,
        head_repo: str = "",
    ) -> FakeIssue:
        pull = FakePull(
            head_sha=head_sha, head_ref=head_ref, base_ref=base_ref, head_repo=head_repo
        )
        return self._add(owner, repo, number, title, body, user, state, assignees or [], pull)

    def add_status(
        self,
        owner: str,
        repo: str,
        sha: str,
        context: str,
        state: str,
        *,
        target_url: str = "",
        description: str = "",
    ) -> None:
        """A commit status; a newer one for the same context replaces the older, as in Forgejo."""
        if state not in _STATE_RANK:
            raise ValueError(f"state must be one of {sorted(_STATE_RANK)}")
        with self._lock:
            statuses = self.repos[(owner, repo)].statuses.setdefault(sha, [])
            statuses[:] = [s for s in statuses if s.context != context]
            statuses.append(FakeStatus(context, state, target_url, description))

    def set_job_log(self, owner: str, repo: str, run: int, job: int, text: str) -> str:
        """A Forgejo Actions job's log, served (plain text) at the job page's `/logs`, as
        Forgejo's web side does; returns the job page's path (a status's target URL path)."""
        page = f"/{owner}/{repo}/actions/runs/{run}/jobs/{job}"
        with self._lock:
            self.job_logs[page + "/logs"] = text
        return page

    def _add(
        self,
        owner: str,
        repo: str,
        number: int | None,
        title: str,
        body: str,
        user: str,
        state: str,
        assignees: list[str],
        pull: FakePull | None,
    ) -> FakeIssue:
        with self._lock:
            issues = self.repos[(owner, repo)].issues
            if number is None:
                number = max(issues, default=0) + 1
            issue = FakeIssue(number, title, body, user, state, assignees, pull)
            issues[number] = issue
            self.users.add(user)
            self.users.update(assignees)
            return issue

    # -- faults ---------------------------------------------------------------------------------

    def fail_next(
        self,
        path: str,
        count: int = 1,
        *,
        status: int = 500,
        message: str = "internal error",
        method: str | None = None,
    ) -> None:
        """The next `count` requests to `path` (below /api/v1, no query) answer `status`."""
        with self._lock:
            self._faults.append(_Fault(method, path, count, status, message, 0.0))

    def hang_next(
        self, path: str, count: int = 1, *, seconds: float = 30.0, method: str | None = None
    ) -> None:
        """The next `count` requests to `path` wait `seconds` (or until stop) before answering."""
        with self._lock:
            self._faults.append(_Fault(method, path, count, None, "", seconds))

    def heal(self) -> None:
        """Drop every fault not yet used and answer hung requests: all is normal from now on."""
        with self._lock:
            self._faults.clear()
            self._healed.set()

    def refuse_merge(self, owner: str, repo: str, number: int, status: int, message: str) -> None:
        """The next merge request for that PR is recorded and answered `status` + `message`."""
        with self._lock:
            self._merge_answers.setdefault((owner, repo, number), []).append((status, message))

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path == path and (method is None or r.method == method)
            ]

    # -- request handling (called from handler threads) ----------------------------------------

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path == path and fault.method in (None, method) and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
            return None

    def _hang(self, seconds: float) -> bool:
        """Wait `seconds`, or until healed (False: answer now) or stopped (True: close)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._healed.is_set():
            if self._stopping.wait(0.01):
                return True
        return False

    def _handle(self, method: str, raw_path: str, auth: str, body: bytes) -> _Answer | None:
        """The answer to one request; None to close the connection without answering."""
        split = urlsplit(raw_path)
        user = self.tokens.get(auth[len("token ") :]) if auth.startswith("token ") else None
        if not split.path.startswith(API + "/"):
            with self._lock:
                self.web_requests.append((split.path, user))
                job_log = self.job_logs.get(unquote(split.path))
            if job_log is None:
                return _error(404, "not found")
            return _Answer(200, raw=job_log.encode())
        raw = split.path[len(API) :]
        path = unquote(raw)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        with self._lock:
            self.requests.append(RecordedRequest(method, path, query, user))
        fault = self._take_fault(method, path)
        if fault is not None and fault.status is None and self._hang(fault.hang):
            return None
        if fault is not None and fault.status is not None:
            return _error(fault.status, fault.message)
        if user is None:
            return _error(401, "token is required" if not auth else "user does not exist")
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return _error(422, "invalid JSON body")
        allowed = False  # the path exists for another method
        for pattern, route_method, handler in _ROUTES:
            match = pattern.fullmatch(raw)
            if match is None:
                continue
            if route_method != method:
                allowed = True
                continue
            args = [unquote(group) for group in match.groups()]
            with self._lock:
                try:
                    return handler(self, user, query, payload, *args)
                except _NotFound:
                    return _error(404, "The target couldn't be found.")
        return _error(405, "method not allowed") if allowed else _error(404, "not found")

    def _get_user(self, user: str, query: dict[str, str], body: Any) -> _Answer:
        return _Answer(200, _user(user))

    def _repo(self, owner: str, name: str, user: str) -> FakeRepo:
        repo = self.repos.get((owner, name))
        if repo is None or (repo.private and self._level(repo, user) == "none"):
            raise _NotFound
        return repo

    def _item(self, repo: FakeRepo, number: str, *, pull: bool) -> FakeIssue:
        issue = repo.issues.get(int(number)) if number.isdigit() else None
        if issue is None or (pull and issue.pull is None):
            raise _NotFound
        return issue

    def _level(self, repo: FakeRepo, login: str) -> str:
        if login == repo.owner:
            return "owner"
        default = "none" if repo.private else "read"
        return repo.collaborators.get(login, default)

    # -- endpoints ------------------------------------------------------------------------------

    def _get_permission(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str, login: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        if login not in self.users:
            return _error(404, f"user does not exist [uid: 0, name: {login}]")
        if (
            user not in self.site_admins
            and user != login
            and self._level(repo, user) not in ("admin", "owner")
        ):
            return _error(
                403,
                "Only admins can query all permissions, repo admins can query all repo "
                "permissions, collaborators can query only their own",
            )
        level = self._level(repo, login)
        return _Answer(200, {"permission": level, "role_name": level, "user": _user(login)})

    def _post_comment(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str, number: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        issue = self._item(repo, number, pull=False)
        text = body.get("body") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            return _error(422, "body is required")
        self._next_comment_id += 1
        comment = FakeComment(self._next_comment_id, repo.full_name, issue.number, text, user)
        self.comments.append(comment)
        return _Answer(
            201,
            {
                "id": comment.id,
                "body": text,
                "user": _user(user),
                "html_url": f"{_html(repo)}/issues/{issue.number}#issuecomment-{comment.id}",
            },
        )

    def _patch_comment(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str, comment: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        text = body.get("body") if isinstance(body, dict) else None
        index = next(
            (
                i
                for i, c in enumerate(self.comments)
                if (c.id, c.repo) == (int(comment), repo.full_name)
            ),
            None,
        )
        if index is None:
            raise _NotFound
        found = self.comments[index]
        if found.user != user:
            return _error(403, "user is not the author of the comment")
        if not isinstance(text, str) or not text:
            return _error(422, "body is required")
        self.comments[index] = replace(found, body=text)
        self.edits.append((found.id, text))
        return _Answer(200, {"id": found.id, "body": text, "user": _user(user)})

    def _post_reaction(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str, comment: str
    ) -> _Answer:
        """Forgejo keeps one reaction of each kind per user: a repeat answers 200, not 201."""
        repo = self._repo(owner, name, user)
        content = body.get("content") if isinstance(body, dict) else None
        if content not in ("+1", "-1", "laugh", "hooray", "confused", "heart", "rocket", "eyes"):
            return _error(403, f"'{content}' is not an allowed reaction")
        reaction = FakeReaction(repo.full_name, int(comment), content, user)
        answer = {"user": _user(user), "content": content, "created_at": "2026-01-01T00:00:00Z"}
        if reaction in self.reactions:
            return _Answer(200, answer)
        self.reactions.append(reaction)
        return _Answer(201, answer)

    def reactions_on(self, comment_id: int) -> list[str]:
        """The reactions on a comment, in the order they came."""
        with self._lock:
            return [r.content for r in self.reactions if r.comment_id == comment_id]

    def _list_labels(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        page, limit = int(query.get("page", "1")), min(int(query.get("limit", "50")), 50)
        found = [{"id": i, "name": n} for i, n in sorted(repo.labels.items())]
        return _Answer(200, found[(page - 1) * limit : page * limit])

    def _post_label(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        label = body.get("name") if isinstance(body, dict) else None
        if not isinstance(label, str) or not label:
            return _error(422, "name is required")
        if label in repo.labels.values():
            return _error(409, "label already exists")
        label_id = max(repo.labels, default=0) + 1
        repo.labels[label_id] = label
        return _Answer(201, {"id": label_id, "name": label, "color": body.get("color", "")})

    def _post_issue_labels(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str, number: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        issue = self._item(repo, number, pull=False)
        ids = body.get("labels") if isinstance(body, dict) else None
        if not isinstance(ids, list) or any(i not in repo.labels for i in ids):
            return _error(422, "labels must be a list of existing label ids")
        for label_id in ids:
            if repo.labels[label_id] not in issue.labels:
                issue.labels.append(repo.labels[label_id])
        return _Answer(200, [{"id": i, "name": repo.labels[i]} for i in ids])

    def _post_pull(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        fields = body if isinstance(body, dict) else {}
        head, base, title = fields.get("head"), fields.get("base"), fields.get("title")
        if not all(isinstance(v, str) and v for v in (head, base, title)):
            return _error(422, "head, base and title are required")
        if self._level(repo, user) not in ("write", "admin", "owner"):
            return _error(403, "user has no write access")
        number = max(repo.issues, default=0) + 1
        pull = FakePull(head_sha="", head_ref=str(head), base_ref=str(base))
        issue = FakeIssue(number, str(title), str(fields.get("body") or ""), user, pull=pull)
        repo.issues[number] = issue
        return _Answer(201, _pull_json(repo, issue))

    def _patch_pull(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str, number: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        issue = self._item(repo, number, pull=True)
        fields = body if isinstance(body, dict) else {}
        issue.title = str(fields.get("title") or issue.title)
        issue.body = str(fields.get("body") or issue.body)
        return _Answer(201, _pull_json(repo, issue))

    def _post_review(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str, number: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        issue = self._item(repo, number, pull=True)
        fields = body if isinstance(body, dict) else {}
        event = fields.get("event")
        if event not in ("APPROVED", "REQUEST_CHANGES", "COMMENT"):
            return _error(422, "event must be APPROVED, REQUEST_CHANGES or COMMENT")
        comments = fields.get("comments") or []
        review = FakeReview(
            repo.full_name, issue.number, event, str(fields.get("body") or ""), comments, user
        )
        self.reviews.append(review)
        self._next_comment_id += 1
        return _Answer(200, {"id": self._next_comment_id, "state": event, "user": _user(user)})

    def _get_issue(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str, number: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        issue = self._item(repo, number, pull=False)
        pull = None
        if issue.pull is not None:
            pull = {"merged": issue.pull.merged, "draft": False}
        return _Answer(
            200,
            {
                "number": issue.number,
                "title": issue.title,
                "body": issue.body,
                "state": issue.state,
                "user": _user(issue.user),
                "assignee": _user(issue.assignees[0]) if issue.assignees else None,
                "assignees": [_user(a) for a in issue.assignees] or None,
                "pull_request": pull,
                "html_url": f"{_html(repo)}/issues/{issue.number}",
            },
        )

    def _get_pull(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str, number: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        return _Answer(200, _pull_json(repo, self._item(repo, number, pull=True)))

    def _list_pulls(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        state = query.get("state", "open")
        pulls = [
            i
            for i in sorted(repo.issues.values(), key=lambda i: -i.number)
            if i.pull is not None and state in ("all", i.state)
        ]
        page = max(int(query.get("page", "1")), 1)
        limit = min(max(int(query.get("limit", "30")), 1), self.max_page_size)
        chosen = pulls[(page - 1) * limit : page * limit]
        return _Answer(
            200,
            [_pull_json(repo, p) for p in chosen],
            {"X-Total-Count": str(len(pulls))},
        )

    def _get_combined_status(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str, ref: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        statuses = repo.statuses.get(ref, [])
        if not statuses:
            return _Answer(
                200,
                {
                    "state": "",
                    "sha": "",
                    "total_count": 0,
                    "statuses": None,
                    "repository": None,
                    "commit_url": "",
                    "url": "",
                },
            )
        worst = min(statuses, key=lambda s: _STATE_RANK[s.state]).state
        return _Answer(
            200,
            {
                "state": "failure" if worst == "error" else worst,
                "sha": ref,
                "total_count": len(statuses),
                "statuses": [
                    {
                        "id": index,
                        "status": s.state,
                        "context": s.context,
                        "target_url": s.target_url,
                        "description": s.description,
                    }
                    for index, s in enumerate(reversed(statuses), start=1)
                ],
                "repository": {"full_name": repo.full_name},
            },
        )

    def _post_merge(
        self, user: str, query: dict[str, str], body: Any, owner: str, name: str, number: str
    ) -> _Answer:
        repo = self._repo(owner, name, user)
        issue = self._item(repo, number, pull=True)
        record = body if isinstance(body, dict) else {}

        def answer(status: int, message: str = "") -> _Answer:
            self.merges.append(FakeMerge(repo.full_name, issue.number, record, user, status))
            return _error(status, message) if message else _Answer(status)

        pull = issue.pull
        assert pull is not None
        queued = self._merge_answers.get((owner, name, issue.number))
        if queued:
            return answer(*queued.pop(0))
        if self._level(repo, user) not in ("write", "admin", "owner"):
            return answer(405, "User not allowed to merge PR")
        if pull.merged:
            return answer(405, "The PR is already merged")
        if issue.state != "open":
            return answer(404, "The target couldn't be found.")
        head = record.get("head_commit_id")
        if head and head != pull.head_sha:
            return answer(409, "head out of date")
        if record.get("merge_when_checks_succeed"):
            statuses = repo.statuses.get(pull.head_sha, [])
            if not statuses or any(s.state != "success" for s in statuses):
                if pull.auto_merge:
                    return answer(409, "auto merge already scheduled")
                pull.auto_merge = True
                return answer(201)
        pull.merged = True
        issue.state = "closed"
        return answer(200)


Route = Callable[..., _Answer]
_SEG = r"([^/]+)"
_ROUTES: list[tuple[re.Pattern[str], str, Route]] = [
    (re.compile(r"/user"), "GET", FakeForgejo._get_user),
    (
        re.compile(rf"/repos/{_SEG}/{_SEG}/collaborators/{_SEG}/permission"),
        "GET",
        FakeForgejo._get_permission,
    ),
    (
        re.compile(rf"/repos/{_SEG}/{_SEG}/issues/{_SEG}/comments"),
        "POST",
        FakeForgejo._post_comment,
    ),
    (
        re.compile(rf"/repos/{_SEG}/{_SEG}/issues/comments/(\d+)/reactions"),
        "POST",
        FakeForgejo._post_reaction,
    ),
    (
        re.compile(rf"/repos/{_SEG}/{_SEG}/issues/comments/(\d+)"),
        "PATCH",
        FakeForgejo._patch_comment,
    ),
    (re.compile(rf"/repos/{_SEG}/{_SEG}/labels"), "GET", FakeForgejo._list_labels),
    (re.compile(rf"/repos/{_SEG}/{_SEG}/labels"), "POST", FakeForgejo._post_label),
    (
        re.compile(rf"/repos/{_SEG}/{_SEG}/issues/{_SEG}/labels"),
        "POST",
        FakeForgejo._post_issue_labels,
    ),
    (re.compile(rf"/repos/{_SEG}/{_SEG}/issues/{_SEG}"), "GET", FakeForgejo._get_issue),
    (re.compile(rf"/repos/{_SEG}/{_SEG}/pulls"), "GET", FakeForgejo._list_pulls),
    (re.compile(rf"/repos/{_SEG}/{_SEG}/pulls"), "POST", FakeForgejo._post_pull),
    (re.compile(rf"/repos/{_SEG}/{_SEG}/pulls/{_SEG}"), "GET", FakeForgejo._get_pull),
    (re.compile(rf"/repos/{_SEG}/{_SEG}/pulls/{_SEG}"), "PATCH", FakeForgejo._patch_pull),
    (
        re.compile(rf"/repos/{_SEG}/{_SEG}/pulls/{_SEG}/reviews"),
        "POST",
        FakeForgejo._post_review,
    ),
    (re.compile(rf"/repos/{_SEG}/{_SEG}/pulls/{_SEG}/merge"), "POST", FakeForgejo._post_merge),
    (
        re.compile(rf"/repos/{_SEG}/{_SEG}/commits/{_SEG}/status"),
        "GET",
        FakeForgejo._get_combined_status,
    ),
]


def _get_repo(
    forge: FakeForgejo, user: str, query: dict[str, str], body: Any, owner: str, name: str
) -> _Answer:
    repo = forge._repo(owner, name, user)
    return _Answer(200, {"full_name": repo.full_name, "default_branch": repo.default_branch})


def _get_branch(
    forge: FakeForgejo,
    user: str,
    query: dict[str, str],
    body: Any,
    owner: str,
    name: str,
    branch: str,
) -> _Answer:
    repo = forge._repo(owner, name, user)
    if branch not in repo.branches:
        return _error(404, f"branch does not exist [name: {branch}]")
    return _Answer(200, {"name": branch, "commit": {"id": repo.branches[branch]}})


def _get_contents(
    forge: FakeForgejo,
    user: str,
    query: dict[str, str],
    body: Any,
    owner: str,
    name: str,
    path: str,
) -> _Answer:
    repo = forge._repo(owner, name, user)
    ref = query.get("ref") or repo.default_branch
    tree = repo.trees.get(repo.branches.get(ref, ref))
    if tree is None or path not in tree:
        return _error(404, "GetContentsOrList")
    content = base64.b64encode(tree[path].encode()).decode()
    return _Answer(200, {"type": "file", "path": path, "encoding": "base64", "content": content})


_ROUTES += [
    (re.compile(rf"/repos/{_SEG}/{_SEG}"), "GET", _get_repo),
    (re.compile(rf"/repos/{_SEG}/{_SEG}/branches/{_SEG}"), "GET", _get_branch),
    (re.compile(rf"/repos/{_SEG}/{_SEG}/contents/(.+)"), "GET", _get_contents),
]


def _user(login: str) -> dict[str, Any]:
    return {"id": zlib.crc32(login.encode()) % 10_000, "login": login, "username": login}


def _html(repo: FakeRepo) -> str:
    return f"https://forge.example.com/{repo.full_name}"


def _pull_json(repo: FakeRepo, issue: FakeIssue) -> dict[str, Any]:
    pull = issue.pull
    assert pull is not None
    return {
        "id": issue.number + 100_000,
        "number": issue.number,
        "title": issue.title,
        "body": issue.body,
        "state": issue.state,
        "user": _user(issue.user),
        "assignees": [_user(a) for a in issue.assignees] or None,
        "merged": pull.merged,
        "mergeable": not pull.merged,
        "html_url": f"{_html(repo)}/pulls/{issue.number}",
        "head": {
            "ref": pull.head_ref,
            "label": pull.head_ref,
            "sha": pull.head_sha,
            "repo": {
                "full_name": pull.head_repo or repo.full_name,
                "fork": pull.head_repo not in ("", repo.full_name),
            },
        },
        "base": {"ref": pull.base_ref, "label": pull.base_ref, "sha": "0" * 40},
    }


class _Server(ThreadingHTTPServer):
    forge: FakeForgejo
    # Join handler threads on close, so no thread outlives the test; hung handlers are
    # released by FakeForgejo.stop() first.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def end_connections(self) -> None:
        """A connection whose request has not arrived (its client's event loop is paused while
        a test's fixtures stop) would hold its handler thread until the read timeout (5 s)."""
        with self._open_lock:
            for request in self._open:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout) closes its socket; that is expected, not an error."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: nothing idles at stop()
    timeout = 5.0

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        forge = cast(_Server, self.server).forge
        try:
            auth = self.headers.get("Authorization", "")
            answer = forge._handle(self.command, self.path, auth, body)
        except Exception as exc:
            forge.server_errors.append(exc)
            answer = _error(500, f"fake Forgejo bug: {exc!r}")
        if answer is None:
            self.close_connection = True
            return
        data = b"" if answer.body is None else json.dumps(answer.body).encode()
        kind = "application/json;charset=utf-8"
        if answer.raw is not None:
            data, kind = answer.raw, "text/plain;charset=utf-8"
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except ConnectionError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `FakeForgejo.requests` instead of a log."""


@pytest.fixture
def fake_forgejo() -> Iterator[FakeForgejo]:
    """A started FakeForgejo, stopped after the test (which fails on a bug in the fake)."""
    with FakeForgejo() as forge:
        yield forge
