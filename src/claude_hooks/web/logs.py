"""`GET /api/tasks/{id}/log`: a task's log, whole, its tail, one run's part (`run=N`, from the
node that ran it), or followed live while it runs.

The command runner's log is the agent's raw output; the claude runner's is one JSON object a
line. `format=text` turns the latter into one readable line per message (text, tool calls,
results), which is what the dashboard shows; `raw` is the file as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from claude_hooks.config import Config
from claude_hooks.core.domain import Task, TaskState
from claude_hooks.errors import InvalidInputError
from claude_hooks.service.events import Subscription
from claude_hooks.service.runtime import Service
from claude_hooks.service.task_lookup import find_task
from claude_hooks.store.runs import log_end, pick_run
from claude_hooks.web.auth import require_token_or_signature
from claude_hooks.web.peer_logs import (
    PRUNED_HEADER,
    RELAYED,
    Relay,
    home_of,
    node_address,
    open_relay,
)
from claude_hooks.web.peer_logs import tail as peer_tail

router = APIRouter(dependencies=[Depends(require_token_or_signature)])

CHUNK = 64 * 1024
FOLLOW_POLL = 0.25  # seconds between looks at a growing log file
RECHECK_EVERY = 20  # idle polls between looks at the task's state in the store
BRIEF = 200  # characters of a tool call's input or result shown in text form


def _short(text: str, limit: int = BRIEF) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _brief(value: Any) -> str:
    """A tool call's input in a few words: its command or path if it has one."""
    if isinstance(value, dict):
        for key in ("command", "file_path", "path", "pattern", "url", "query", "description"):
            if isinstance(value.get(key), str):
                return _short(value[key])
    return _short(json.dumps(value, ensure_ascii=False, default=str))


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return "" if content is None else str(content)


def _assistant(record: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for block in record.get("content") or []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            lines.extend(str(block.get("text", "")).splitlines())
        elif kind == "tool_use":
            lines.append(f"→ {block.get('name', 'tool')} {_brief(block.get('input'))}")
        elif kind == "thinking":
            lines.append("(thinking)")
    return lines


def _user(record: dict[str, Any]) -> list[str]:
    content = record.get("content")
    if isinstance(content, str):
        return [f"user: {_short(content)}"]
    lines: list[str] = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            mark = "✗" if block.get("is_error") else "←"
            lines.append(f"  {mark} {_short(_result_text(block.get('content'))) or '(empty)'}")
    return lines


def _result(record: dict[str, Any]) -> list[str]:
    # Claude Code reports an API error as subtype `success` with `is_error`: say `error`.
    subtype = str(record.get("subtype", "done"))
    if record.get("is_error"):
        subtype = "error" if subtype == "success" else f"error ({subtype})"
    parts = [subtype]
    if record.get("is_error") and record.get("api_error_status") is not None:
        parts.append(f"API status {record['api_error_status']}")
    if record.get("num_turns") is not None:
        parts.append(f"{record['num_turns']} turns")
    if isinstance(record.get("total_cost_usd"), int | float):
        parts.append(f"${record['total_cost_usd']:.2f}")
    line = "result: " + ", ".join(parts)
    text = record.get("result")
    return [line, _short(str(text))] if text else [line]


def render_claude_line(line: str) -> list[str]:
    """One line of the claude runner's log as zero or more readable lines."""
    try:
        record = json.loads(line)
    except ValueError:
        return [line]
    if not isinstance(record, dict):
        return [line]
    kind = record.get("type")
    if kind == "assistant":
        return _assistant(record)
    if kind == "user":
        return _user(record)
    if kind == "result":
        return _result(record)
    if kind == "stderr":
        return [f"stderr: {record.get('line', '')}"]
    if kind == "claude_hooks":
        fields = {k: v for k, v in record.items() if k not in ("type", "event", "at")}
        extra = " ".join(f"{k}={_brief(v)}" for k, v in fields.items())
        return [f"· {record.get('event', 'event')} {extra}".rstrip()]
    if kind == "system":
        data = record["data"] if isinstance(record.get("data"), dict) else {}
        if record.get("subtype") == "init":
            return [f"· session {data.get('session_id', '?')} (model {data.get('model', '?')})"]
        return [f"· {record.get('subtype', 'system')}"]
    return [f"{kind}: {_brief(record)}"]


def renders_json(service: Service, task: Task) -> bool:
    """Whether the task's log is the claude runner's JSON lines."""
    return is_claude_log(service.config, task)


def is_claude_log(config: Config, task: Task) -> bool:
    type_config = config.types.get(task.type)
    return type_config is not None and type_config.runner == "claude"


def pruned_line(task: Task, pruned_at: float) -> str:
    """What a reader of a pruned log is told, on the dashboard and by `tasks log` alike."""
    when = datetime.fromtimestamp(pruned_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"the log of task {task.id} was pruned on {when} (server.retention_days)"


def tail_lines(path: Path, count: int, as_json: bool, window: int = CHUNK) -> list[str]:
    """The last `count` readable lines of a log, from at most `window` bytes at its end."""
    try:
        with path.open("rb") as stream:
            size = stream.seek(0, 2)
            start = max(0, size - window)
            stream.seek(start)
            data = stream.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the window began inside a line
    if as_json:
        lines = [shown for line in lines for shown in render_claude_line(line)]
    return [_short(line, 240) if len(line) > 240 else line for line in lines[-count:]]


def tail_offset(path: Path, count: int) -> int:
    """The byte offset at which the last `count` lines of a file begin."""
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        return 0
    with stream:
        end = stream.seek(0, 2)
        if end:
            stream.seek(end - 1)
            if stream.read(1) == b"\n":
                end -= 1  # a final newline ends the last line; it does not start another
        found = 0
        while end > 0:
            start = max(0, end - CHUNK)
            stream.seek(start)
            block = stream.read(end - start)
            index = len(block)
            while (index := block.rfind(b"\n", 0, index)) >= 0:
                found += 1
                if found == count:
                    return start + index + 1
            end = start
    return 0


def _read(path: Path, offset: int, end: int | None = None) -> bytes:
    """The next chunk of the file from `offset`, stopping at `end` (None: the file's end)."""
    size = CHUNK if end is None else min(CHUNK, end - offset)
    if size <= 0:
        return b""
    try:
        with path.open("rb") as stream:
            stream.seek(offset)
            return stream.read(size)
    except FileNotFoundError:
        return b""


class LogRenderer:
    """Bytes of the log in, bytes of the answer out: whole lines rendered, or passed through."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.partial = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self.as_json:
            return chunk
        data = self.partial + chunk
        complete, _, self.partial = data.rpartition(b"\n")
        return self._render(complete) if complete else b""

    def flush(self) -> bytes:
        rest, self.partial = self.partial, b""
        return self._render(rest) if self.as_json and rest else b""

    @staticmethod
    def _render(data: bytes) -> bytes:
        shown = [line for line in data.decode("utf-8", "replace").split("\n") if line]
        rendered = [text for line in shown for text in render_claude_line(line)]
        return "".join(line + "\n" for line in rendered).encode()


async def _finished(
    subscription: Subscription, task_id: str, closing: asyncio.Event, seconds: float
) -> bool:
    """Wait up to `seconds` for the task's end (or the server's); True if it came."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not closing.is_set():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return False
        try:
            event = await asyncio.wait_for(subscription.get(), left)
        except TimeoutError:
            return False
        if event.kind == "task.finished" and event.task is not None and event.task.id == task_id:
            return True
    return True


async def _stream(
    service: Service,
    closing: asyncio.Event,
    task: Task,
    offset: int,
    renderer: LogRenderer,
    follow: bool,
    end: int | None = None,
) -> AsyncIterator[bytes]:
    """The log from `offset` to `end` (None: to the file's end, followed while the task runs
    if `follow`)."""
    path = service.pool.log_path(task.id)
    subscription = service.bus.subscribe(64) if follow else None
    try:
        done = not follow or task.state.finished
        if subscription is not None and not done:
            # Subscribed first, then looked again: an end between the two is not missed.
            current = await service.store.get_task(task.id)
            done = current is None or current.state.finished
        idle = 0
        while True:
            chunk = _read(path, offset, end)
            if chunk:
                offset += len(chunk)
                if out := renderer.feed(chunk):
                    yield out
                continue
            if done or subscription is None or end is not None:
                break
            done = await _finished(subscription, task.id, closing, FOLLOW_POLL)
            idle += 1
            if not done and (idle % RECHECK_EVERY == 0 or subscription.dropped):
                subscription.dropped = 0
                current = await service.store.get_task(task.id)
                done = current is None or current.state.finished
        if out := renderer.flush():
            yield out
    finally:
        if subscription is not None:
            subscription.close()


@router.get(
    "/api/tasks/{task_id}/log",
    summary="A task's log, or one run's part; with follow=true it streams until the task ends",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/plain": {}}, "description": "the log, as text"},
        400: {"description": "tail with run"},
        404: {"description": "no such task, or no such run of it"},
    },
)
async def task_log(
    task_id: str,
    request: Request,
    follow: Annotated[
        bool, Query(description="keep the answer open and send new output until the task ends")
    ] = False,
    format: Annotated[
        Literal["raw", "text"],
        Query(description="raw: the file as written; text: the claude runner's JSON made readable"),
    ] = "raw",
    tail: Annotated[
        int | None, Query(ge=1, le=100_000, description="only the last N lines")
    ] = None,
    run: Annotated[
        int | None, Query(ge=1, description="only the output of this run of the task (1, 2, ...)")
    ] = None,
) -> StreamingResponse:
    service: Service = request.app.state.service
    task = await find_task(service.store, task_id)
    closing: asyncio.Event = request.app.state.closing
    relayed = RELAYED in request.headers
    params = {"follow": str(follow).lower(), "format": format}
    if tail is not None:
        params["tail"] = str(tail)
    if run is not None:
        if tail is not None:
            raise InvalidInputError("tail and run do not go together: ask for one or the other")
        part = await _run_part(service, closing, task, run, params, relayed)
        return _answer(task, part)
    ran_here = service.pool.log_path(task.id).exists()  # sent back to its queue after a run
    if follow and task.state is TaskState.QUEUED and not relayed and not ran_here:
        # Where it will run, and so where its log will be, is known once it starts.
        task = await _started(service, closing, task)
    home = await home_of(service, task.id, relayed)
    if home is not None:
        return _answer(task, _relayed(await open_relay(service, home, task.id, params), closing))
    if (pruned := await _pruned(service, task)) is not None:
        return _answer(task, _Part(_lines([pruned]), pruned=True))
    path = service.pool.log_path(task.id)
    offset = tail_offset(path, tail) if tail is not None else 0
    renderer = LogRenderer(format == "text" and renders_json(service, task))
    return _answer(task, _Part(_stream(service, closing, task, offset, renderer, follow)))


@dataclass(frozen=True, slots=True)
class _Part:
    """The bytes of an answer, and whether they only say the log was pruned."""

    body: AsyncIterator[bytes]
    pruned: bool = False


def _relayed(relay: Relay, closing: asyncio.Event) -> _Part:
    return _Part(relay.chunks(closing), relay.answer.headers.get(PRUNED_HEADER) == "true")


def _answer(task: Task, part: _Part) -> StreamingResponse:
    headers = {
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        "X-Task-Id": task.id,
        "X-Task-State": task.state.value,
    }
    if part.pruned:
        headers[PRUNED_HEADER] = "true"  # the CLI says it as an error, as it always has
    return StreamingResponse(part.body, media_type="text/plain; charset=utf-8", headers=headers)


async def _pruned(service: Service, task: Task) -> str | None:
    """What a reader is told when the task's log here is gone with retention; None if not."""
    if service.pool.log_path(task.id).exists():
        return None
    pruned = (await service.store.notes.get_note(task.id)).log_pruned_at
    return None if pruned is None else pruned_line(task, pruned)


async def _run_part(
    service: Service,
    closing: asyncio.Event,
    task: Task,
    number: int,
    params: dict[str, str],
    relayed: bool,
) -> _Part:
    """One run's part of the log: from where it began to where the next run on its node
    began, read on the node that ran it."""
    runs = await service.store.runs.of_task(task.id)
    chosen = pick_run(task.id, runs, number)
    here = service.config.server.node
    home = None if relayed else await node_address(service.store, here, chosen.node)
    if home is not None:
        relay = await open_relay(service, home, task.id, {**params, "run": str(number)})
        return _relayed(relay, closing)
    if (pruned := await _pruned(service, task)) is not None:
        return _Part(_lines([pruned]), pruned=True)
    renderer = LogRenderer(params["format"] == "text" and renders_json(service, task))
    follow = params["follow"] == "true" and chosen.finished_at is None
    end = log_end(runs, chosen)
    return _Part(_stream(service, closing, task, chosen.log_offset, renderer, follow, end))


async def _lines(lines: list[str]) -> AsyncIterator[bytes]:
    yield "".join(f"{line}\n" for line in lines).encode()


async def _started(service: Service, closing: asyncio.Event, task: Task) -> Task:
    """The task once it has left its queue (or as it is when the server closes)."""
    while task.state is TaskState.QUEUED and not closing.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), FOLLOW_POLL)
        current = await service.store.get_task(task.id)
        if current is None:
            break
        task = current
    return task


async def log_tail(service: Service, task: Task, count: int) -> list[str]:
    """The last `count` readable lines of a task's log, from whichever node has it."""
    home = await home_of(service, task.id)
    if home is not None:
        lines = await peer_tail(service, home, task.id, count)
        return [_short(line, 240) if len(line) > 240 else line for line in lines]
    if (pruned := await _pruned(service, task)) is not None:
        return [pruned]
    return tail_lines(service.pool.log_path(task.id), count, renders_json(service, task))
