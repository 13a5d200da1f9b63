"""`claude-hooks tasks log`: one reader for the CLI and the dashboard.

While the service runs, the log is read through its API (`GET /api/tasks/{id}/log`), the very
reader the dashboard uses: followed by the event bus, relayed from the node that has it, and
"pruned" once retention removed it. Only when no service runs here is the file read directly
(a log on another node still through that node's API); with nothing running here to follow
the task by, `-f` then refuses a task that has not finished, after printing what is there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from claude_hooks.config import Config
from claude_hooks.errors import ConflictError, NotFoundError, PeerUnreachableError
from claude_hooks.service.lockfile import running_service
from claude_hooks.service.task_lookup import find_task
from claude_hooks.store.base import Store
from claude_hooks.store.runs import log_end, pick_run
from claude_hooks.web.logs import CHUNK, LogRenderer, is_claude_log, pruned_line
from claude_hooks.web.peer_logs import (
    MAX_ERROR_BYTES,
    PRUNED_HEADER,
    node_address,
    open_peer_log,
    read_at_most,
)

Write = Callable[[bytes], None]
CONNECT_SECONDS = 5.0
READ_SECONDS = 30.0  # for a whole log; a follow waits as long as the task runs


@dataclass(frozen=True, slots=True)
class Shown:
    """What was printed: of which task (its full id), in which state, how many bytes."""

    task_id: str
    state: str
    size: int


def service_url(config: Config) -> tuple[str | None, str]:
    """Where the API of the service holding this data dir answers, as it wrote it; with None,
    why there is none. (Never a node's URL from the database: this request carries the API
    token, and only another node's signed relay may go where the database points.)"""
    where = repr(str(config.data_dir))
    local = running_service(config.data_dir)
    if local is None:
        return None, f"none runs on {where} (start 'claude-hooks serve')"
    if not local.url:
        return None, f"the one on {where} does not say where its API answers"
    return local.url, ""


def _token(config: Config) -> str | None:
    token = config.server.api_token
    return token.get_secret_value() if token is not None else None


async def through_service(
    config: Config, url: str, task_id: str, params: dict[str, str], write: Write
) -> Shown | None:
    """The log as the service at `url` answers it; None if nothing answers there."""
    follow = params.get("follow") == "true"
    timeout = httpx.Timeout(None if follow else READ_SECONDS, connect=CONNECT_SECONDS)
    headers = {"Accept-Encoding": "identity", "Authorization": f"Bearer {_token(config) or ''}"}
    address = f"{url}/api/tasks/{quote(task_id, safe='')}/log"
    async with httpx.AsyncClient(timeout=timeout) as client:
        try:
            async with client.stream("GET", address, params=params, headers=headers) as answer:
                if answer.status_code != 200:
                    raise _refusal(answer.status_code, await answer.aread())
                if answer.headers.get(PRUNED_HEADER) == "true":
                    raise NotFoundError((await answer.aread()).decode("utf-8", "replace").strip())
                size = 0
                async for chunk in answer.aiter_raw():
                    size += len(chunk)
                    write(chunk)
                full_id = answer.headers.get("x-task-id", task_id)
                return Shown(full_id, answer.headers.get("x-task-state", "?"), size)
        except httpx.ConnectError:
            return None
        except httpx.HTTPError as exc:
            raise PeerUnreachableError(
                f"the service at {url} stopped answering ({exc.__class__.__name__}: {exc}): "
                "what it sent is above; try again"
            ) from None


def _refusal(status: int, body: bytes) -> Exception:
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    return NotFoundError(message) if status == 404 else ConflictError(message)


async def from_file(
    config: Config,
    store: Store,
    task_id: str,
    params: dict[str, str],
    write: Write,
    no_service: str,
) -> Shown:
    """The log read here, with no service to ask (`no_service` says why): the file in the
    data dir, or through the API of the other node that has it."""
    task = await find_task(store, task_id)
    number = int(params["run"]) if "run" in params else None
    runs = await store.runs.of_task(task.id) if number is not None else []
    chosen = pick_run(task.id, runs, number) if number is not None else None
    path = config.data_dir / "logs" / f"{task.id}.log"
    if chosen is not None:
        home = await node_address(store, config.server.node, chosen.node)
    else:
        home = await store.node_of(task.id)
        home = None if home is None or home.name == config.server.node else home
    if home is not None and not (chosen is None and path.exists()):
        relay = await open_peer_log(_token(config), home, task.id, params)
        if relay.answer.headers.get(PRUNED_HEADER) == "true":
            said = await read_at_most(relay.answer, MAX_ERROR_BYTES)
            await relay.close()
            raise NotFoundError(said.decode("utf-8", "replace").strip())
        size = 0
        async for chunk in relay.chunks(asyncio.Event()):  # read to its end
            size += len(chunk)
            write(chunk)
        return Shown(task.id, task.state.value, size)
    if not path.exists() and (pruned := (await store.notes.get_note(task.id)).log_pruned_at):
        raise NotFoundError(pruned_line(task, pruned))
    start, end = (chosen.log_offset, log_end(runs, chosen)) if chosen else (0, None)
    renderer = LogRenderer(params.get("format") == "text" and is_claude_log(config, task))
    size = _copy(path, start, end, renderer, write)
    running = not task.state.finished and (chosen is None or chosen.finished_at is None)
    if params.get("follow") == "true" and running:
        raise ConflictError(
            f"task {task.id} is {task.state.value}: following its log needs the running "
            f"service, and {no_service}; what the log holds so far is above"
        )
    return Shown(task.id, task.state.value, size)


def _copy(path: Path, start: int, end: int | None, renderer: LogRenderer, write: Write) -> int:
    """Write the file's bytes from `start` to `end` (None: its end), rendered; how many."""
    size = 0
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        return 0
    with stream:
        stream.seek(start)
        while chunk := stream.read(CHUNK if end is None else min(CHUNK, end - start - size)):
            size += len(chunk)
            write(renderer.feed(chunk))
    write(renderer.flush())
    return size
