"""The `claude` runner: each task is one turn of a Claude Code session, through claude-agent-sdk.

One session per session key: the `sessions` table maps the key to the Claude session id, and
the next task with that key resumes it (same workdir, same `CLAUDE_CONFIG_DIR`, so the CLI
finds its transcript); a session the CLI cannot resume is replaced by a fresh one. The CLI's
transcript is mirrored into the database as it is written (`runners/transcripts.py`), so a
node that never ran the session, or ran an older part of it, resumes it too.

The CLI runs with an environment the runner chose, not the service's. The SDK (0.2.189) starts
it with `{**os.environ, **options.env}` plus a few variables of its own, so `cli_path` is a small
launcher written into the data dir: it keeps `ctx.env`, the runner's CLI settings and the SDK's
own `CLAUDE_CODE_*`/`CLAUDE_AGENT_SDK_*`/`PWD` variables, drops everything else (the service's
`CLAUDE_HOOKS_*` settings and secrets among them), makes the CLI the leader of a new process
group, tells its pid on stderr, and execs the real CLI: inside the type's sandbox (bwrap, see
`claude_hooks.agents.sandbox`) unless the type has `sandbox = false`. The pid reaches
`ctx.on_process`, and the process group is what a cancel or a restarted service stops.

Each session key has its own Claude state (`<data_dir>/claude/sessions/<key>/`: config and
transcripts, runtime dir, home), the only part of the data dir its sandbox sees besides the
workdir.

The task log (`ctx.log_path`) gets one JSON object a line: every SDK message (`type` is the
message class, e.g. "assistant", "result"), the CLI's stderr (`"type": "stderr"`) and the
runner's own events (`"type": "claude_hooks"`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import shlex
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    CLIConnectionError,
    CLIJSONDecodeError,
    CLINotFoundError,
    McpServerConfig,
    ProcessError,
    RateLimitEvent,
    ResultError,
    ResultMessage,
    SdkMcpTool,
    SystemMessage,
    ToolUseBlock,
    create_sdk_mcp_server,
    tool,
)
from claude_agent_sdk.types import SystemPromptPreset

from claude_hooks.agents import processes, resources
from claude_hooks.agents.capped_log import CappedLog
from claude_hooks.agents.claude_cli import locate_cli
from claude_hooks.agents.credentials import CREDENTIAL_VARIABLES
from claude_hooks.agents.forge_tools import SERVER_NAME, ForgeTools
from claude_hooks.agents.prompting import PromptError, Prompts, prompt_context, steering_prompt
from claude_hooks.agents.runners.base import RunContext, RunProgress, RunResult
from claude_hooks.agents.runners.transcripts import SessionTranscripts, materialize
from claude_hooks.agents.sandbox_latch import LAUNCHER_FDS, Latch, LatchError
from claude_hooks.agents.workspace import current_branch, key_path
from claude_hooks.store.base import SessionRecord, Store

logger = logging.getLogger(__name__)

PID_MARKER = "claude-hooks-launcher pid="
INTERRUPT_TIMEOUT = 2.0  # the CLI acknowledged an interrupt in 18-60 ms when measured
RESULT_TIMEOUT = 2.0  # for the result that ends an interrupted turn
# After a turn during which a steering message was sent: how long the CLI has to start the
# turn that answers it (it did in 50 ms; a message read within the turn starts none).
STEER_GRACE = 2.0
STDERR_TAIL_LINES = 20
SDK_PREFIXES = ("CLAUDE_CODE_", "CLAUDE_AGENT_SDK_")
SANDBOXED_TOOLS = ("Bash", "Read", "Edit", "Write", "Glob", "Grep")
TRUNCATED = (
    '{{"type": "claude_hooks", "event": "log_truncated", "dropped_bytes": {dropped}, '
    '"max_log_bytes": {limit}}}\n'
)

# Runs as `python -I -S -c LAUNCHER ARGS...`: standard library only, nothing from the data dir.
LAUNCHER = f"""
import ctypes, fcntl, json, os, sys
parent = os.getppid()
# PR_SET_PDEATHSIG: the kernel kills the CLI when the service dies, even by SIGKILL.
ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)
if os.getppid() != parent:
    sys.exit(1)
keep = set(json.loads(os.environ.get("CLAUDE_HOOKS_CLI_ENV") or "[]"))
cli = os.environ.get("CLAUDE_HOOKS_CLI") or "claude"
argv = json.loads(os.environ.get("CLAUDE_HOOKS_SANDBOX") or "[]") + [cli] + sys.argv[1:]
# The sandbox's latch (claude_hooks/agents/sandbox_latch.py): its FIFOs, for bwrap at fds 3-5.
latch = json.loads(os.environ.get("CLAUDE_HOOKS_LATCH") or "[]")
if latch:
    info, block = latch
    ends = [os.open(info, os.O_WRONLY | os.O_NONBLOCK), os.open(block, os.O_RDONLY | os.O_NONBLOCK),
            os.open(block, os.O_WRONLY | os.O_NONBLOCK)]
    ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in ends]
    for fd, target in zip(ends, {LAUNCHER_FDS!r}):
        os.dup2(fd, target)
        os.set_blocking(target, True)
# A credential passes only if the runner chose it: never the service's own by its prefix.
env = {{k: v for k, v in os.environ.items()
       if k in keep or k == "PWD"
       or (k.startswith({SDK_PREFIXES!r}) and k not in {CREDENTIAL_VARIABLES!r})}}
try:
    os.setsid()
except OSError:
    pass
sys.stderr.write("{PID_MARKER}%d\\n" % os.getpid())
sys.stderr.flush()
try:
    os.execve(argv[0], argv, env)
except OSError as exc:
    sys.stderr.write("claude-hooks: cannot run %r: %s\\n" % (argv[0], exc.strerror))
    sys.exit(127)
"""


class _ResumeFailedError(Exception):
    """The CLI could not take up the stored session (it ended before its init message)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _tag(cls: type) -> str:
    """`AssistantMessage` -> "assistant", `ToolUseBlock` -> "tool_use"."""
    name = cls.__name__.removesuffix("Message").removesuffix("Block") or cls.__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"type": _tag(type(value))}
        for item in dataclasses.fields(value):
            out[item.name] = _jsonable(getattr(value, item.name))
        return out
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class TaskLog:
    """The task's log: one JSON object a line, written as it comes so it can be followed live,
    within `server.max_log_bytes` (head and tail kept, with a line counting what was dropped).
    """

    def __init__(self, out: CappedLog) -> None:
        self.out = out

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        self.out.write(line.encode())

    def message(self, message: object) -> None:
        self.write(_jsonable(message))

    def event(self, name: str, **fields: Any) -> None:
        self.write({"type": "claude_hooks", "event": name, "at": round(time.time(), 3), **fields})

    def stderr(self, line: str) -> None:
        self.write({"type": "stderr", "line": line})


class _CliProcess:
    """One CLI process as seen through its stderr: the pid the launcher tells, the last lines."""

    def __init__(self, ctx: RunContext, log: TaskLog) -> None:
        self.ctx = ctx
        self.log = log
        self.pid: int | None = None
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._report: asyncio.Task[None] | None = None

    def on_stderr(self, line: str) -> None:
        if self.pid is None and line.startswith(PID_MARKER):
            self.pid = int(line.removeprefix(PID_MARKER))
            self._report = asyncio.get_running_loop().create_task(self._on_process(self.pid))
            return
        self.tail.append(line)
        self.log.stderr(line)

    async def _on_process(self, pid: int) -> None:
        try:
            await self.ctx.on_process(pid, processes.start_time(pid))
        except Exception:
            logger.exception("task %s: recording the CLI's pid %d failed", self.ctx.task.id, pid)

    async def reported(self) -> None:
        if self._report is not None:
            await self._report

    def kill_group(self) -> None:
        """SIGKILL what is left of the CLI's process group (tool processes it started)."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def stderr_text(self) -> str:
        return "\n".join(self.tail)


@dataclasses.dataclass
class _Turn:
    """What one CLI session produced so far."""

    connected: bool = False
    session_id: str | None = None
    model: str | None = None
    result: ResultMessage | None = None
    limit_resets_at: int | None = None  # a subscription usage limit rejected the run until then
    progress: RunProgress = dataclasses.field(default_factory=RunProgress)
    steered: bool = False  # a steering message was sent since the last turn began


_EDITING_TOOLS = frozenset({"Edit", "MultiEdit", "Write", "NotebookEdit"})


def _progress(before: RunProgress, message: AssistantMessage, workdir: Path) -> RunProgress:
    """The progress after `message`: TodoWrite replaces the todo list, edits add files."""
    todos, files = before.todos, list(before.files)
    for block in message.content:
        if not isinstance(block, ToolUseBlock):
            continue
        if block.name == "TodoWrite" and isinstance(block.input.get("todos"), list):
            todos = tuple(
                (str(item.get("status", "pending")), str(item.get("content", "")))
                for item in block.input["todos"]
                if isinstance(item, dict)
            )
        elif block.name in _EDITING_TOOLS:
            path = block.input.get("file_path") or block.input.get("notebook_path")
            if isinstance(path, str) and path:
                with contextlib.suppress(ValueError):
                    path = str(Path(path).relative_to(workdir))
                if path not in files:
                    files.append(path)
    return dataclasses.replace(before, todos=todos, files=tuple(files))


class ClaudeRunner:
    """`AgentRunner` over claude-agent-sdk. One instance serves every type and every worker.

    `cli_path`: the Claude Code CLI to run (default: the one bundled with the SDK, else
    `claude` on PATH); tests pass a fake. Everything the CLI keeps goes under
    `<data_dir>/claude/sessions/<session key>/`: `config/` (CLAUDE_CONFIG_DIR: transcripts,
    so sessions resume), `tmp/` (CLAUDE_CODE_TMPDIR; in a sandbox its own `/tmp`), `run/`
    (XDG_RUNTIME_DIR) and `home/` (HOME, in a sandbox); the launcher is `<data_dir>/claude/bin/`.
    """

    def __init__(
        self,
        store: Store,
        data_dir: Path,
        cli_path: str | Path | None = None,
        *,
        interrupt_timeout: float = INTERRUPT_TIMEOUT,
        result_timeout: float = RESULT_TIMEOUT,
        steer_grace: float = STEER_GRACE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.home = (data_dir / "claude").resolve()
        self.launcher = self.home / "bin" / "launch-claude"
        self.cli_path = cli_path
        self.interrupt_timeout = interrupt_timeout
        self.result_timeout = result_timeout
        self.steer_grace = steer_grace
        self.clock = clock

    # the CLI and its folders

    def find_cli(self, path_env: str | None = None) -> str | None:
        """The real CLI's absolute path, or None if there is none to run."""
        return locate_cli(self.cli_path, path_env)

    def state_dir(self, session_key: str) -> Path:
        """The Claude state of one session key: shared by no other type or session."""
        return self.home / "sessions" / key_path(session_key)

    def _prepare_home(self, ctx: RunContext) -> None:
        state = self.state_dir(ctx.task.session_key)
        for folder in ("config", "tmp", "home"):
            (state / folder).mkdir(parents=True, exist_ok=True)
        (state / "run").mkdir(mode=0o700, parents=True, exist_ok=True)
        if ctx.sandbox is not None:
            ctx.sandbox.give(state, ctx.workdir)
        self.launcher.parent.mkdir(parents=True, exist_ok=True)
        script = (
            "#!/bin/sh\n"
            "# Written by claude-hooks: runs the Claude Code CLI with the environment the runner\n"
            "# chose (see claude_hooks/agents/runners/claude.py).\n"
            f'exec {shlex.quote(sys.executable)} -I -S -c {shlex.quote(LAUNCHER)} "$@"\n'
        )
        try:
            if self.launcher.read_text() == script:
                return
        except OSError:
            pass
        partial = self.launcher.with_name(f".{self.launcher.name}.{os.getpid()}")
        partial.write_text(script)
        partial.chmod(0o755)
        partial.replace(self.launcher)

    def cli_environment(self, ctx: RunContext, cli: str, latch: Latch | None) -> dict[str, str]:
        """`options.env`: what the launcher keeps, plus its instructions (in a sandbox, the
        bwrap command line and the FIFOs of its `latch`)."""
        env = dict(ctx.env)
        state = self.state_dir(ctx.task.session_key)
        env.update(
            CLAUDE_CONFIG_DIR=str(state / "config"),
            CLAUDE_CODE_TMPDIR=str(state / "tmp"),
            XDG_RUNTIME_DIR=str(state / "run"),
            CLAUDE_CODE_MAX_RETRIES=str(ctx.type_config.max_api_retries),
        )
        env.setdefault("DISABLE_AUTOUPDATER", "1")
        if ctx.sandbox is not None:
            env.update(HOME=str(state / "home"), CLAUDE_CODE_TMPDIR="/tmp", TMPDIR="/tmp")
        keep = sorted(env)
        env["CLAUDE_HOOKS_CLI"] = cli
        env["CLAUDE_HOOKS_CLI_ENV"] = json.dumps(keep)
        if ctx.cage is not None and state not in ctx.cage.disk_paths:
            ctx.cage.disk_paths.append(state)
        if ctx.sandbox is not None:
            assert latch is not None
            prefix = ctx.sandbox.wrap(
                [],
                ctx.workdir,
                writable=[state],
                readable=[Path(cli)],
                cage=ctx.cage,
                bridge=ctx.bridge,
                latch=latch.args(),
            )
            env["CLAUDE_HOOKS_SANDBOX"] = json.dumps(prefix)
            env["CLAUDE_HOOKS_LATCH"] = json.dumps(latch.paths())
        elif ctx.cage is not None:
            env["CLAUDE_HOOKS_SANDBOX"] = json.dumps(ctx.cage.prefix())
        return env

    def transcript_path(self, session_key: str, workdir: Path, session_id: str) -> Path | None:
        projects = self.state_dir(session_key) / "config" / "projects"
        expected = projects / re.sub(r"[^A-Za-z0-9]", "-", str(workdir)) / f"{session_id}.jsonl"
        if expected.is_file():
            return expected
        found = sorted(projects.glob(f"*/{session_id}.jsonl"))
        return found[0] if found else None

    def _options(
        self,
        ctx: RunContext,
        cli: str,
        system: str,
        resume: str | None,
        process: _CliProcess,
        transcripts: SessionTranscripts,
        latch: Latch | None,
    ) -> ClaudeAgentOptions:
        config = ctx.type_config
        system_prompt: str | SystemPromptPreset
        if config.system_prompt is not None:
            system_prompt = f"{config.system_prompt.rstrip()}\n\n{system}"
        else:
            system_prompt = {"type": "preset", "preset": "claude_code", "append": system}
        allowed = list(config.allowed_tools)
        if ctx.sandbox is not None:
            # Inside its sandbox an agent may use its shell and files freely: that is its job.
            allowed += [name for name in SANDBOXED_TOOLS if name not in allowed]
        servers: dict[str, McpServerConfig] = {}
        if ctx.forge_tools is not None:
            servers[SERVER_NAME] = forge_server(ctx.forge_tools)
            allowed += [f"mcp__{SERVER_NAME}__{name}" for name in TOOL_SCHEMAS]
        return ClaudeAgentOptions(
            cwd=ctx.workdir,
            cli_path=self.launcher,
            env=self.cli_environment(ctx, cli, latch),
            # Every entry the CLI writes is mirrored to the database; a resume reads the local
            # transcript `_materialize` brought up to date, so the SDK is not given `resume`
            # (with a store it would materialise into the service's /tmp: see transcripts).
            session_store=transcripts,
            extra_args={"resume": resume} if resume is not None else {},
            model=config.model,
            permission_mode=config.permission_mode,
            mcp_servers=servers,
            allowed_tools=allowed,
            disallowed_tools=list(config.disallowed_tools),
            max_turns=config.max_turns,
            max_budget_usd=config.max_budget_usd,
            system_prompt=system_prompt,
            setting_sources=None if config.setting_sources is None else [*config.setting_sources],
            stderr=process.on_stderr,
        )

    # running

    async def run(self, ctx: RunContext) -> RunResult:
        try:
            out = CappedLog(
                ctx.log_path, ctx.max_log_bytes, notice=TRUNCATED, lines=True, room=ctx.disk_room
            )
        except OSError as exc:
            if resources.exhausted(exc):
                raise  # passing: the pool puts the task back in its queue
            return RunResult(
                succeeded=False,
                error=f"cannot open the task log {str(ctx.log_path)!r}: {exc.strerror or exc}",
            )
        with out:
            log = TaskLog(out)
            try:
                result = await self._run(ctx, log)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if resources.exhausted(exc):
                    raise
                logger.exception("task %s: the claude runner failed", ctx.task.id)
                log.event("error", error=repr(exc))
                result = RunResult(
                    succeeded=False,
                    error=f"claude runner failed: {exc.__class__.__name__}: {exc}",
                )
            log.event(
                "finished",
                succeeded=result.succeeded,
                error=result.error,
                cost_usd=result.cost_usd,
                session_id=result.claude_session_id,
            )
            return result

    async def _run(self, ctx: RunContext, log: TaskLog) -> RunResult:
        task = ctx.task
        cli = self.find_cli(ctx.env.get("PATH"))
        if cli is None:
            where = repr(str(self.cli_path)) if self.cli_path is not None else "bundled or on PATH"
            return RunResult(succeeded=False, error=f"Claude Code CLI not found ({where})")
        prompts = Prompts.for_type(ctx.type_config)
        context = prompt_context(
            task,
            ctx.type_config,
            ctx.workdir,
            current_branch(ctx.workdir),
            ctx.env.get("FORGEJO_URL", ""),
            ctx.instructions,
            ctx.test_command,
        )
        try:
            system = prompts.render("system", context)
            prompt = prompts.render(task.kind.value, context)
        except PromptError as exc:
            return RunResult(succeeded=False, error=str(exc))
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare_home(ctx)
        details: dict[str, object] = {}
        transcripts = SessionTranscripts(self.store.transcripts, ctx.workdir, task.session_key)
        record = await self.store.get_session(task.session_key)
        if record is not None:
            await self._materialize(ctx, log, transcripts, record.claude_session_id)
            try:
                return await self._session(
                    ctx, log, cli, system, prompt, record, details, transcripts
                )
            except _ResumeFailedError as failed:
                log.event(
                    "resume_failed",
                    session_id=record.claude_session_id,
                    reason=failed.reason,
                    next="starting a fresh session",
                )
                details["resume_failed"] = {
                    "session_id": record.claude_session_id,
                    "reason": failed.reason,
                }
                await self.store.forget_session(task.session_key)
        return await self._session(ctx, log, cli, system, prompt, None, details, transcripts)

    async def _materialize(
        self, ctx: RunContext, log: TaskLog, transcripts: SessionTranscripts, session_id: str
    ) -> None:
        """Put the stored transcript where the CLI resumes from, if this node's is behind
        (the session ran on another node); a store fault leaves the local one to resume."""
        config_dir = self.state_dir(ctx.task.session_key) / "config"
        try:
            if await materialize(transcripts, config_dir, session_id, ctx.sandbox):
                log.event("transcript_restored", session_id=session_id)
        except Exception as exc:
            if resources.exhausted(exc):
                raise
            logger.exception("task %s: restoring transcript %s failed", ctx.task.id, session_id)
            log.event("transcript_restore_failed", session_id=session_id, error=repr(exc))

    async def _session(
        self,
        ctx: RunContext,
        log: TaskLog,
        cli: str,
        system: str,
        prompt: str,
        record: SessionRecord | None,
        details: dict[str, object],
        transcripts: SessionTranscripts,
    ) -> RunResult:
        """One CLI process, in a sandbox through a latch of its own when the type has one."""
        resume = record.claude_session_id if record is not None else None
        process = _CliProcess(ctx, log)
        latch = Latch.fifos() if ctx.sandbox is not None else None
        latchkeeper: asyncio.Task[None] | None = None
        try:
            if latch is not None:
                latchkeeper = asyncio.create_task(self._admit(latch, ctx, log))
            options = self._options(ctx, cli, system, resume, process, transcripts, latch)
            return await self._converse(ctx, log, options, prompt, process, record, details)
        finally:
            if latchkeeper is not None:
                latchkeeper.cancel()
                await asyncio.gather(latchkeeper, return_exceptions=True)
            if latch is not None:
                latch.close()

    @staticmethod
    async def _admit(latch: Latch, ctx: RunContext, log: TaskLog) -> None:
        """Let the CLI's sandbox start once the launcher has started bwrap."""
        try:
            await latch.admit(ctx.cage, ctx.latch_listen())
        except LatchError as exc:  # its sandbox was killed at the latch: the SDK sees it end
            log.event("sandbox_refused", error=str(exc))

    async def _converse(
        self,
        ctx: RunContext,
        log: TaskLog,
        options: ClaudeAgentOptions,
        prompt: str,
        process: _CliProcess,
        record: SessionRecord | None,
        details: dict[str, object],
    ) -> RunResult:
        """Start or resume the session, send the prompt, read to the result."""
        resume = record.claude_session_id if record is not None else None
        client = ClaudeSDKClient(options)
        turn = _Turn()
        started = time.monotonic()
        log.event("start", resume=resume, cwd=str(ctx.workdir), model=ctx.type_config.model)
        try:
            await client.connect()
            turn.connected = True
            await client.query(prompt)
            relay = None
            if ctx.steering is not None:
                relay = asyncio.create_task(self._relay(client, turn, ctx, log))
            try:
                await self._read(client, turn, ctx, log, record)
                if relay is not None:
                    await self._steered_turns(client, turn, ctx, log, record, relay)
            finally:
                if relay is not None:
                    relay.cancel()
                    await asyncio.gather(relay, return_exceptions=True)
        except asyncio.CancelledError:
            await self._stop(client, process, turn, ctx, log, record, started)
            raise
        except Exception as exc:
            await self._close(client, process, log, ctx.cancel_grace, ctx.cancel_grace)
            if not turn.connected and resources.exhausted(exc):
                raise  # the CLI could not start; the pool puts the task back in its queue
            reason = _describe(exc)
            if resume is not None and turn.session_id is None:
                raise _ResumeFailedError(reason) from None
            stderr = process.stderr_text()
            details.update(self._details(ctx, turn, process, resume, started))
            return RunResult(
                succeeded=False,
                error=reason + (f"; stderr:\n{stderr}" if stderr else ""),
                claude_session_id=turn.session_id,
                details=details,
            )
        await self._close(client, process, log, ctx.cancel_grace, ctx.cancel_grace)
        details.update(self._details(ctx, turn, process, resume, started))
        return await self._outcome(ctx, turn, record, process, details)

    async def _read(
        self,
        client: ClaudeSDKClient,
        turn: _Turn,
        ctx: RunContext,
        log: TaskLog,
        record: SessionRecord | None,
        start_within: float | None = None,
    ) -> bool:
        """Read the turn to its result; False if, given `start_within` seconds, no turn
        started in them (the CLI's stream is left as it was)."""
        stream = client.receive_response()
        if start_within is not None:
            try:
                first = await asyncio.wait_for(anext(stream), start_within)
            except (TimeoutError, StopAsyncIteration):
                return False  # the cancelled wait ended the generator; the stream is intact
            await self._take(first, turn, ctx, log, record)
        async for message in stream:
            await self._take(message, turn, ctx, log, record)
        return True

    async def _take(
        self,
        message: Any,
        turn: _Turn,
        ctx: RunContext,
        log: TaskLog,
        record: SessionRecord | None,
    ) -> None:
        """Record one message of the CLI: its session, limits, result, progress."""
        log.message(message)
        if isinstance(message, SystemMessage) and message.subtype == "init":
            session_id = message.data.get("session_id")
            if isinstance(session_id, str) and session_id:
                turn.session_id = session_id
                model = message.data.get("model")
                turn.model = model if isinstance(model, str) else None
                if record is None or record.claude_session_id != session_id:
                    await self.store.put_session(
                        ctx.task.session_key, session_id, None, self.clock()
                    )
        elif isinstance(message, RateLimitEvent):
            info = message.rate_limit_info
            if info.status == "rejected" and info.resets_at is not None:
                turn.limit_resets_at = int(info.resets_at)
        elif isinstance(message, ResultMessage):
            turn.result = message
            await self._record_total(ctx, message)
            cost = _run_cost(turn, record)
            if ctx.on_progress is not None and cost is not None:
                # A steered run goes on after this turn: its cost so far.
                turn.progress = dataclasses.replace(turn.progress, cost_usd=cost)
                ctx.on_progress(turn.progress)
        elif isinstance(message, AssistantMessage) and ctx.on_progress is not None:
            progress = _progress(turn.progress, message, ctx.workdir)
            if progress != turn.progress:
                turn.progress = progress
                ctx.on_progress(progress)

    async def _relay(
        self, client: ClaudeSDKClient, turn: _Turn, ctx: RunContext, log: TaskLog
    ) -> None:
        """Send each steering message to the CLI as it comes: one sent while the agent works
        is read within its turn (after its current tool), one sent as a turn ends starts the
        next turn."""
        assert ctx.steering is not None
        while True:
            messages = await ctx.steering.take()
            if messages:
                log.event("steered", senders=[m.sender for m in messages])
                await client.query(steering_prompt([(m.sender, m.body) for m in messages]))
                turn.steered = True
            await ctx.steering.wait()

    async def _steered_turns(
        self,
        client: ClaudeSDKClient,
        turn: _Turn,
        ctx: RunContext,
        log: TaskLog,
        record: SessionRecord | None,
        relay: asyncio.Task[None],
    ) -> None:
        """Keep the conversation open until every steering message is answered: after a turn
        that had one sent, the next turn the CLI starts for it is read too. The run's cost is
        the last result's session total (the CLI adds every turn in); the push comes after."""
        while turn.result is not None and not turn.result.is_error:
            if not turn.steered:
                # Stop sending; what comes now becomes a follow-up task, unless the relay
                # sent it on its way out.
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)
                if not turn.steered:
                    return
            turn.steered = False
            await self._read(client, turn, ctx, log, record, self.steer_grace)

    async def _record_total(self, ctx: RunContext, result: ResultMessage) -> None:
        if result.session_id and result.total_cost_usd is not None:
            await self.store.put_session(
                ctx.task.session_key, result.session_id, result.total_cost_usd, self.clock()
            )

    async def _stop(
        self,
        client: ClaudeSDKClient,
        process: _CliProcess,
        turn: _Turn,
        ctx: RunContext,
        log: TaskLog,
        record: SessionRecord | None,
        started: float,
    ) -> None:
        """Cancelled: interrupt the turn, take its closing result, close, kill if need be."""
        asked = time.monotonic()
        log.event("interrupt", connected=turn.connected)
        patience = ctx.cancel_grace
        try:
            if turn.connected and turn.result is None:
                try:
                    await asyncio.wait_for(client.interrupt(), self.interrupt_timeout)
                except Exception as exc:
                    log.event("interrupt_failed", error=_describe(exc))
                    patience = 0.0  # it does not listen: no point waiting for it to exit
                else:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(
                            self._read(client, turn, ctx, log, record), self.result_timeout
                        )
        finally:
            await self._close(client, process, log, patience, ctx.cancel_grace)
        cost = _run_cost(turn, record)
        log.event(
            "cancelled",
            seconds_after_interrupt=round(time.monotonic() - asked, 3),
            session_id=turn.session_id,
            cost_usd=cost,
            wall_seconds=round(time.monotonic() - started, 3),
        )

    async def _close(
        self,
        client: ClaudeSDKClient,
        process: _CliProcess,
        log: TaskLog,
        patience: float,
        grace: float,
    ) -> None:
        """Disconnect: the CLI exits at the end of its input. One still running `patience`
        seconds later gets SIGTERM, and SIGKILL `grace` seconds after that (its whole group).
        """
        watchdog = asyncio.create_task(self._kill_after(process, log, patience, grace))
        try:
            await client.disconnect()
        except asyncio.CancelledError:
            process.kill_group()
            raise
        except Exception as exc:
            log.event("close_failed", error=_describe(exc))
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
            process.kill_group()
            await process.reported()

    async def _kill_after(
        self, process: _CliProcess, log: TaskLog, patience: float, grace: float
    ) -> None:
        await asyncio.sleep(patience)
        if process.pid is None:
            log.event("kill_impossible", reason="the CLI's pid is unknown")
            return
        log.event("kill", pid=process.pid, reason=f"still running {patience:g} s after close")
        await processes.stop_group(process.pid, grace)

    def _details(
        self,
        ctx: RunContext,
        turn: _Turn,
        process: _CliProcess,
        resume: str | None,
        started: float,
    ) -> dict[str, object]:
        details: dict[str, object] = {
            "session_id": turn.session_id,
            "resumed": resume is not None and turn.session_id == resume,
            "model": turn.model,
            "pid": process.pid,
            "wall_seconds": round(time.monotonic() - started, 3),
        }
        if turn.session_id is not None:
            transcript = self.transcript_path(ctx.task.session_key, ctx.workdir, turn.session_id)
            details["transcript_path"] = str(transcript) if transcript is not None else None
        result = turn.result
        if result is not None:
            details.update(
                subtype=result.subtype,
                is_error=result.is_error,
                terminal_reason=result.terminal_reason,
                stop_reason=result.stop_reason,
                num_turns=result.num_turns,
                duration_ms=result.duration_ms,
                duration_api_ms=result.duration_api_ms,
                total_cost_usd=result.total_cost_usd,
                usage=result.usage,
                model_usage=_jsonable(result.model_usage),
                api_error_status=result.api_error_status,
                permission_denials=len(result.permission_denials or []),
            )
        return details

    async def _outcome(
        self,
        ctx: RunContext,
        turn: _Turn,
        record: SessionRecord | None,
        process: _CliProcess,
        details: dict[str, object],
    ) -> RunResult:
        result = turn.result
        if result is None:
            stderr = process.stderr_text()
            return RunResult(
                succeeded=False,
                error="Claude Code ended without a result"
                + (f"; stderr:\n{stderr}" if stderr else ""),
                claude_session_id=turn.session_id,
                details=details,
            )
        cost = _run_cost(turn, record)
        details["cost_usd"] = cost
        return RunResult(
            succeeded=not result.is_error,
            result=result.result,
            error=_result_error(result, ctx, turn.limit_resets_at) if result.is_error else None,
            cost_usd=cost,
            claude_session_id=result.session_id or turn.session_id,
            details=details,
        )


_NUMBER = {"type": "integer", "minimum": 1}
TOOL_SCHEMAS: dict[str, tuple[str, dict[str, Any]]] = {
    "read_issue": ("Read an issue or pull request of this repository (default: this task's).",
                   {"number": _NUMBER}),
    "read_pull_request": ("Read a pull request of this repository (default: this task's).",
                          {"number": _NUMBER}),
    "ci_status": ("The CI status of a commit or branch (default: this task's pull request).",
                  {"ref": {"type": "string"}}),
    "ci_logs": ("The failing CI checks of this task's pull request, with their logs (the end).",
                {"number": _NUMBER}),
    "comment": ("Comment on this task's issue or pull request (default: the issue).",
                {"body": {"type": "string"}, "number": _NUMBER}, ),
    "open_pull_request": (
        "Push this session's branch and open its pull request, or update its title and body.",
        {"title": {"type": "string"}, "body": {"type": "string"}},
    ),
    "submit_review": (
        "Review this task's pull request: APPROVED, REQUEST_CHANGES or COMMENT, with a summary "
        "and line comments ({path, line, body}, line in the new file).",
        {
            "event": {"type": "string", "enum": ["APPROVED", "REQUEST_CHANGES", "COMMENT"]},
            "body": {"type": "string"},
            "comments": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "line": _NUMBER,
                        "body": {"type": "string"},
                    },
                    "required": ["path", "line", "body"],
                },
            },
        },
    ),
    "merge_pull_request": ("Merge this task's approved pull request, at its approved head.",
                           {"number": _NUMBER}),
    "push": ("Push this session's branch to the forge now.", {}),
}  # fmt: skip
_REQUIRED = {
    "comment": ["body"],
    "open_pull_request": ["title"],
    "submit_review": ["event"],
}


def forge_server(tools: ForgeTools) -> McpServerConfig:
    """The forge tools as an in-process MCP server: each call runs in the service."""

    def make(name: str, description: str, properties: dict[str, Any]) -> SdkMcpTool[Any]:
        schema = {"type": "object", "properties": properties, "required": _REQUIRED.get(name, [])}

        async def handler(args: dict[str, Any]) -> dict[str, Any]:
            done, answer = await tools.call(name, args)
            return {"content": [{"type": "text", "text": answer}], "is_error": not done}

        return tool(name, description, schema)(handler)

    made = [make(name, text, props) for name, (text, props) in TOOL_SCHEMAS.items()]
    return create_sdk_mcp_server(SERVER_NAME, tools=made)


def _run_cost(turn: _Turn, record: SessionRecord | None) -> float | None:
    """This run's cost: the session's total now, less the total stored before it (resumed)."""
    if turn.result is None or turn.result.total_cost_usd is None:
        return None
    previous = 0.0
    if record is not None and record.claude_session_id == turn.result.session_id:
        previous = record.total_cost_usd or 0.0
    return round(max(turn.result.total_cost_usd - previous, 0.0), 6)


def _result_error(result: ResultMessage, ctx: RunContext, limit_resets_at: int | None) -> str:
    """The run's error; a usage limit's reset time (from the CLI's rate-limit event, which the
    result text only gives as a local clock time) is appended for the breaker."""
    config = ctx.type_config
    if result.subtype == "error_max_turns":
        return f"stopped after {result.num_turns} turns: max_turns ({config.max_turns}) reached"
    if result.subtype == "error_max_budget_usd":
        return f"stopped: the budget of ${config.max_budget_usd:g} (max_budget_usd) is spent"
    text = "; ".join(result.errors or []) or (result.result or "").strip() or result.subtype
    if limit_resets_at is not None:
        text += f" (usage limit resets at {limit_resets_at})"
    if result.api_error_status is not None:
        return f"Claude API error (HTTP {result.api_error_status}): {text}"
    return f"Claude Code failed ({result.terminal_reason or result.subtype}): {text}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ResultError):
        text = "; ".join(exc.errors) or (exc.result or "").strip() or exc.subtype or str(exc)
        if exc.api_error_status is not None:
            return f"Claude API error (HTTP {exc.api_error_status}): {text}"
        return f"Claude Code failed: {text}"
    if isinstance(exc, ProcessError):
        code = exc.exit_code
        if code is not None and code < 0:
            return f"Claude Code was killed by signal {-code}"
        return f"Claude Code exited with code {code}"
    if isinstance(exc, CLINotFoundError):
        return f"Claude Code CLI not found: {exc}"
    if isinstance(exc, CLIJSONDecodeError):
        return f"Claude Code wrote output that is not JSON: {exc.line[:200]!r}"
    if isinstance(exc, CLIConnectionError):
        return f"cannot talk to Claude Code: {exc}"
    return f"Claude Code failed: {exc.__class__.__name__}: {exc}"
