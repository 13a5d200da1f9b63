"""The forge tools: what an agent may do on the forge, done for it by the service.

Agents hold no forge token. These operations act with the type's token, outside the sandbox,
and only on the task's own repository, issue, branch and pull request: reading this
repository's issues, pull requests and CI status, and the CI logs of this task's pull request;
commenting on this issue or pull request; opening or updating the pull request of this
session's branch (pushed first); reviewing or merging this task's pull request. A call for
anything else is refused, and logged.

The `claude` runner offers them as an in-process MCP server (`forge`, tools
`mcp__forge__<name>`); the `command` runner takes the same requests from a JSON file the agent
writes (`$CLAUDE_HOOKS_RESULT`), carried out after it exits.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from claude_hooks.agents.sandbox import Sandbox
from claude_hooks.agents.workspace import WorkspaceError, Workspaces
from claude_hooks.config import TypeConfig
from claude_hooks.core.domain import Task, TaskKind
from claude_hooks.errors import ClaudeHooksError
from claude_hooks.forge.client import ForgejoError, PullInfo
from claude_hooks.forge.gateway import Forge

log = logging.getLogger(__name__)

SERVER_NAME = "forge"
RESULT_FILE = ".claude-hooks-result.json"
MAX_RESULT_BYTES = 1024 * 1024
MAX_REQUESTS = 100  # of one result file; more are refused, each with its own outcome
# Nesting of one request's arguments: `submit_review`'s {comments: [{path, line, body}]} is 3.
MAX_DEPTH = 4
MAX_LINE_COMMENTS = 200
MAX_TEXT = 65536
MAX_LOG_BYTES = 64 * 1024  # of one CI log, the tail (where failures are) is kept
REVIEW_EVENTS = ("APPROVED", "REQUEST_CHANGES", "COMMENT")
_JOB_PAGE = re.compile(r"/actions/runs/\d+/jobs/\d+$")
_PR_KINDS = (TaskKind.REVIEW_PR, TaskKind.MERGE_PR)


class ToolRefusedError(ClaudeHooksError):
    """A forge tool call outside the task's own repository, issue, branch or pull request."""


def _text(args: dict[str, Any], name: str, required: bool = True) -> str:
    value = args.get(name, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise ToolRefusedError(f"'{name}' must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise ToolRefusedError(f"'{name}' is longer than {MAX_TEXT} characters")
    return value


def _plain(value: object, depth: int) -> bool:
    """Whether `value` is JSON data nested at most `depth` deep (strings as keys)."""
    if isinstance(value, dict):
        return depth > 0 and all(
            isinstance(k, str) and _plain(v, depth - 1) for k, v in value.items()
        )
    if isinstance(value, list):
        return depth > 0 and all(_plain(v, depth - 1) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _named(name: str) -> str:
    """A tool name as it may appear in a message or a log line: printable, cut short."""
    shown = name if name.isprintable() else repr(name)
    return shown if len(shown) <= 64 else shown[:64] + "…"


def _number(args: dict[str, Any], name: str) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise ToolRefusedError(f"'{name}' must be a positive issue or pull request number")
    return value


def _pull_text(pull: PullInfo) -> str:
    return json.dumps(
        {
            "number": pull.number,
            "title": pull.title,
            "state": pull.state,
            "merged": pull.merged,
            "head": pull.head_ref,
            "head_sha": pull.head_sha,
            "base": pull.base_ref,
            "author": pull.user_login,
            "url": pull.html_url,
            "body": pull.body,
        }
    )


@dataclass
class ForgeTools:
    """The forge operations of one task, with the checks that keep them to its own things."""

    task: Task
    type_config: TypeConfig
    forge: Forge
    workspaces: Workspaces
    sandbox: Sandbox | None
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def owner_name(self) -> tuple[str, str]:
        owner, _, name = self.task.repo.partition("/")
        return owner, name

    def task_pull(self) -> int | None:
        """The pull request this task is about, if any."""
        number = self.task.payload.get("pr_number")
        if isinstance(number, int) and not isinstance(number, bool) and number > 0:
            return number
        return self.task.number if self.task.kind in _PR_KINDS else None

    async def session_pull(self) -> PullInfo | None:
        """The open pull request of this session's branch, if the service opened one.

        A branch name proves nothing: anyone can open a PR from a fork with the same name.
        This session's PR has its head in the task's own repository, on the branch the
        service pushes, and was opened by the type's own account (with its token).
        """
        branch = await self.workspaces.session_branch(self.task)
        if branch is None:
            return None
        client = self.forge.client(self.task.type)
        login = self.forge.config.login_of(self.task.type).lower()
        for pull in await client.open_pulls(*self.owner_name):
            if (
                pull.head_ref == branch
                and pull.head_repo.lower() == self.task.repo.lower()
                and pull.user_login.lower() == login
            ):
                return pull
        return None

    async def own_numbers(self) -> set[int]:
        numbers = {self.task.number}
        if (pull := self.task_pull()) is not None:
            numbers.add(pull)
        if (opened := await self.session_pull()) is not None:
            numbers.add(opened.number)
        return numbers

    # the operations

    async def read_issue(self, args: dict[str, Any]) -> str:
        number = _number(args, "number") or self.task.number
        issue = await self.forge.client(self.task.type).get_issue(*self.owner_name, number)
        return json.dumps(
            {
                "number": issue.number,
                "title": issue.title,
                "state": issue.state,
                "author": issue.user_login,
                "assignees": list(issue.assignees),
                "is_pull_request": issue.is_pull,
                "body": issue.body,
            }
        )

    async def read_pull_request(self, args: dict[str, Any]) -> str:
        number = _number(args, "number") or self.task_pull()
        if number is None:
            opened = await self.session_pull()
            if opened is None:
                raise ToolRefusedError("this task has no pull request yet: name its 'number'")
            return _pull_text(opened)
        return _pull_text(
            await self.forge.client(self.task.type).get_pull(*self.owner_name, number)
        )

    async def ci_status(self, args: dict[str, Any]) -> str:
        ref = _text(args, "ref", required=False)
        if not ref:
            number = self.task_pull()
            pull = await (
                self.forge.client(self.task.type).get_pull(*self.owner_name, number)
                if number is not None
                else self.session_pull()
            )
            if pull is None:
                raise ToolRefusedError("name a 'ref' (commit or branch): this task has no PR yet")
            ref = pull.head_sha or pull.head_ref
        status = await self.forge.client(self.task.type).combined_status(*self.owner_name, ref)
        return json.dumps(
            {
                "state": status.state,
                "sha": status.sha,
                "statuses": [
                    {"context": s.context, "state": s.state, "description": s.description,
                     "url": s.target_url}
                    for s in status.statuses
                ],
            }
        )  # fmt: skip

    async def ci_logs(self, args: dict[str, Any]) -> str:
        """The failing statuses of this task's pull request head, each with its log: the
        Forgejo Actions job log (the job page's `/logs`), or the target page itself, fetched
        only from the forge's own host and cut to its last MAX_LOG_BYTES."""
        client = self.forge.client(self.task.type)
        given = _number(args, "number")
        number = self.task_pull()
        pull = await (
            client.get_pull(*self.owner_name, number) if number is not None else self.session_pull()
        )
        if pull is None:
            raise ToolRefusedError("this task has no pull request yet: there are no CI logs")
        if given is not None and given != pull.number:
            raise ToolRefusedError(f"CI logs are only for this task's pull request #{pull.number}")
        status = await client.combined_status(*self.owner_name, pull.head_sha or pull.head_ref)
        owner, name = self.owner_name
        repo_pages = f"{urlsplit(client.base_url).path}/{owner}/{name}/"
        failing = []
        for item in status.statuses:
            if item.state not in ("failure", "error"):
                continue
            entry: dict[str, Any] = {
                "context": item.context,
                "state": item.state,
                "description": item.description,
                "url": item.target_url,
            }
            path = urlsplit(item.target_url).path.rstrip("/")
            if (
                not client.on_forge(item.target_url)
                or not path.startswith(repo_pages)
                or ".." in path.split("/")
                or "%" in path
            ):
                entry["log"] = None
                entry["note"] = "not a page of this repository on the forge: not fetched"
            else:
                page = item.target_url.rstrip("/") + ("/logs" if _JOB_PAGE.search(path) else "")
                try:
                    entry["log"], entry["truncated"] = await client.fetch_page(page, MAX_LOG_BYTES)
                except ForgejoError as exc:
                    entry["log"] = None
                    entry["note"] = str(exc)
            failing.append(entry)
        return json.dumps(
            {"pull_request": pull.number, "sha": status.sha, "state": status.state,
             "failing": failing}
        )  # fmt: skip

    async def push(self, args: dict[str, Any]) -> str:
        branch = await self._push()
        return f"pushed {branch}" if branch else "nothing new to push"

    async def _push(self) -> str | None:
        try:
            return await self.workspaces.push_session(self.task, self.type_config, self.sandbox)
        except WorkspaceError as exc:
            raise ToolRefusedError(f"the branch could not be pushed: {exc}") from None

    async def comment(self, args: dict[str, Any]) -> str:
        body = _text(args, "body")
        number = _number(args, "number") or self.task.number
        if number not in await self.own_numbers():
            raise ToolRefusedError(
                f"#{number} is not this task's issue or pull request "
                f"(#{self.task.number} and its pull request)"
            )
        comment_id = await self.forge.client(self.task.type).comment(*self.owner_name, number, body)
        return f"commented on #{number} (comment {comment_id})"

    async def open_pull_request(self, args: dict[str, Any]) -> str:
        title = _text(args, "title")
        body = _text(args, "body", required=False)
        await self._push()
        branch = await self.workspaces.session_branch(self.task)
        if branch is None:
            raise ToolRefusedError("this session has no branch of its own to open a PR from")
        client = self.forge.client(self.task.type)
        existing = await self.session_pull()
        if existing is not None:
            pull = await client.edit_pull(*self.owner_name, existing.number, title=title, body=body)
            return f"updated pull request #{pull.number} from {branch}: {pull.html_url}"
        base = await self.workspaces.default_branch(self.task.repo)
        pull = await client.create_pull(
            *self.owner_name, head=branch, base=base, title=title, body=body
        )
        return f"opened pull request #{pull.number} from {branch} into {base}: {pull.html_url}"

    async def submit_review(self, args: dict[str, Any]) -> str:
        number = self.task_pull()
        given = _number(args, "number")
        if number is None or (given is not None and given != number):
            raise ToolRefusedError("a review goes only on the pull request this task is about")
        event = args.get("event")
        if event not in REVIEW_EVENTS:
            raise ToolRefusedError(f"'event' must be one of {', '.join(REVIEW_EVENTS)}")
        body = _text(args, "body", required=event != "APPROVED")
        given_comments = args.get("comments") or []
        if not isinstance(given_comments, list) or len(given_comments) > MAX_LINE_COMMENTS:
            raise ToolRefusedError(
                f"'comments' must be a list of at most {MAX_LINE_COMMENTS} {{path, line, body}}"
            )
        comments = []
        for item in given_comments:
            if not isinstance(item, dict):
                raise ToolRefusedError("each line comment is {path, line, body}")
            line = _number(item, "line")
            if line is None:
                raise ToolRefusedError("each line comment needs its 'line' (in the new file)")
            comments.append(
                {"path": _text(item, "path"), "new_position": line, "body": _text(item, "body")}
            )
        head = self.task.payload.get("head_sha")
        review_id = await self.forge.client(self.task.type).submit_review(
            *self.owner_name,
            number,
            event=str(event),
            body=body,
            comments=comments,
            commit_id=head if isinstance(head, str) else None,
        )
        return f"review {review_id} ({event}) posted on #{number}"

    async def merge_pull_request(self, args: dict[str, Any]) -> str:
        number = self.task_pull()
        if self.task.kind is not TaskKind.MERGE_PR or number is None:
            raise ToolRefusedError("only a merge_pr task merges, and only its pull request")
        given = _number(args, "number")
        if given is not None and given != number:
            raise ToolRefusedError(f"this task merges #{number}, not #{given}")
        head = self.task.payload.get("head_sha")
        result = await self.forge.client(self.task.type).merge(
            *self.owner_name,
            number,
            style=self.forge.config.flows.merge_style,
            head_commit_id=head if isinstance(head, str) and head else None,
        )
        return f"#{number} " + ("merged" if result.merged else "scheduled to merge")

    # dispatch

    def operations(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[str]]]:
        return {
            "read_issue": self.read_issue,
            "read_pull_request": self.read_pull_request,
            "ci_status": self.ci_status,
            "ci_logs": self.ci_logs,
            "comment": self.comment,
            "open_pull_request": self.open_pull_request,
            "submit_review": self.submit_review,
            "merge_pull_request": self.merge_pull_request,
            "push": self.push,
        }

    async def call(self, name: str, args: object) -> tuple[bool, str]:
        """Carry out one operation: (done, what happened or why not). Never raises: its name
        and arguments come from the agent, and nothing of them may stop the run's push."""
        operation = self.operations().get(name)
        name = _named(name)
        try:
            if operation is None:
                raise ToolRefusedError(f"there is no forge tool {name!r}")
            if not isinstance(args, dict) or not _plain(args, MAX_DEPTH):
                raise ToolRefusedError(
                    f"the arguments must be a JSON object nested at most {MAX_DEPTH} deep"
                )
            if not self.forge.enabled:
                raise ToolRefusedError("[forgejo] url is not set: there is no forge to act on")
            answer = await operation(args)
        except ToolRefusedError as exc:
            log.warning("task %s: forge tool %s refused: %s", self.task.id, name, exc)
            self.calls.append({"tool": name, "refused": str(exc)})
            return False, f"refused: {exc}"
        except (ForgejoError, WorkspaceError) as exc:
            log.warning("task %s: forge tool %s failed: %s", self.task.id, name, exc)
            self.calls.append({"tool": name, "failed": str(exc)})
            return False, f"failed: {exc}"
        except Exception:
            # A case the checks above missed: the request fails, the run goes on.
            log.exception("task %s: forge tool %s failed unexpectedly", self.task.id, name)
            self.calls.append({"tool": name, "failed": "unexpected error (logged)"})
            return False, "failed: an unexpected error in the service (it is logged)"
        log.info("task %s: forge tool %s: %s", self.task.id, name, answer)
        self.calls.append({"tool": name, "done": answer})
        return True, answer

    async def run_result_file(self, workdir: Path) -> list[dict[str, Any]]:
        """The `command` runner's way: carry out the requests the agent wrote, in order.

        The file is `{"forge": [{"tool": NAME, ...arguments}, ...]}`, at most
        MAX_RESULT_BYTES, MAX_REQUESTS requests, each nested at most MAX_DEPTH deep; it is
        read without following links and removed afterwards. A file of another shape is
        refused as a whole, a request of another shape on its own; nothing raises.
        """
        path = workdir / RESULT_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return []
        except OSError as exc:
            return [{"refused": f"{RESULT_FILE} cannot be read: {exc.strerror}"}]
        with os.fdopen(fd, "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                return [{"refused": f"{RESULT_FILE} is not a regular file"}]
            raw = stream.read(MAX_RESULT_BYTES + 1)
        path.unlink(missing_ok=True)
        if len(raw) > MAX_RESULT_BYTES:
            return [{"refused": f"{RESULT_FILE} is larger than {MAX_RESULT_BYTES} bytes"}]
        try:
            document = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            return [{"refused": f"{RESULT_FILE} is not JSON (or is nested too deep)"}]
        shape = f'{RESULT_FILE} must be {{"forge": [{{"tool": NAME, ...arguments}}, ...]}}'
        if not isinstance(document, dict) or set(document) - {"forge"}:
            return [{"refused": shape}]
        requests = document.get("forge", [])
        if not isinstance(requests, list):
            return [{"refused": shape}]
        outcomes: list[dict[str, Any]] = []
        for index, request in enumerate(requests):
            if index >= MAX_REQUESTS:
                outcomes.append({"request": index, "refused": f"more than {MAX_REQUESTS} requests"})
                continue
            if not isinstance(request, dict) or not isinstance(request.get("tool"), str):
                outcomes.append({"request": index, "refused": 'not {"tool": NAME, ...}'})
                continue
            args = dict(request)
            name = args.pop("tool")
            done, answer = await self.call(name, args)
            outcomes.append({"tool": _named(name), "done": done, "answer": answer})
        return outcomes
