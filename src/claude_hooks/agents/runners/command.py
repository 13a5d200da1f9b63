"""The `command` runner: any executable, the task as JSON on stdin, exit 0 means success."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections import deque
from pathlib import Path

from claude_hooks.agents import processes, resources, spawning
from claude_hooks.agents.capped_log import CappedLog
from claude_hooks.agents.forge_tools import RESULT_FILE
from claude_hooks.agents.runners.base import RunContext, RunResult, SteerInbox
from claude_hooks.agents.sandbox_latch import Latch, LatchError

STEER_FILE = ".claude-hooks-steer.jsonl"  # in the workdir: steering messages, a JSON line each
TAIL_BYTES = 4096
OUTPUT_DRAIN_SECONDS = 5.0
_CHUNK = 65536


def task_document(ctx: RunContext) -> bytes:
    task = ctx.task
    return json.dumps(
        {
            "id": task.id,
            "type": task.type,
            "agent": task.agent,
            "kind": task.kind.value,
            "session_key": task.session_key,
            "repo": task.repo,
            "number": task.number,
            "attempt": task.attempts,
            "delivery_id": task.delivery_id,
            "workdir": str(ctx.workdir),
            "payload": task.payload,
        }
    ).encode()


class _Tail:
    """The last bytes of a stream, for the error message of a failed run."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: deque[bytes] = deque()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.size - len(self.chunks[0]) >= self.limit:
            self.size -= len(self.chunks.popleft())

    def text(self) -> str:
        return b"".join(self.chunks)[-self.limit :].decode("utf-8", "replace")


async def _copy(stream: asyncio.StreamReader, log: CappedLog, tail: _Tail) -> None:
    while chunk := await stream.read(_CHUNK):
        log.write(chunk)
        tail.add(chunk)


async def _relay(inbox: SteerInbox, path: Path) -> None:
    """Append each steering message to `path` as `{"from", "body", "at", "comment_id"}`."""
    while True:
        for message in await inbox.take():
            line = {
                "from": message.sender,
                "body": message.body,
                "at": message.at,
                "comment_id": message.comment_id,
            }
            with path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")
        await inbox.wait()


async def _feed(stdin: asyncio.StreamWriter, document: bytes) -> None:
    # An agent that never reads its stdin must not stall the run.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(document)
        await stdin.drain()
        stdin.close()
        await stdin.wait_closed()


class CommandRunner:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def command(
        self, ctx: RunContext, latch: Latch | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment to start: in the sandbox (through `latch`), its scratch
        `/tmp` is `HOME`."""
        env = dict(ctx.env)
        if ctx.forge_tools is not None:
            env["CLAUDE_HOOKS_RESULT"] = str(ctx.workdir / RESULT_FILE)
        if ctx.steering is not None:
            env["CLAUDE_HOOKS_STEER"] = str(ctx.workdir / STEER_FILE)
        if ctx.sandbox is None:
            # A sandboxed agent dies with the service through bwrap's --die-with-parent.
            caged = [*ctx.cage.prefix(), *self.argv] if ctx.cage is not None else self.argv
            return processes.dies_with_service(list(caged)), env
        ctx.sandbox.give(ctx.workdir)
        readable = [Path(arg) for arg in self.argv if arg.startswith("/")]
        env = {**env, "HOME": "/tmp", "TMPDIR": "/tmp"}
        argv = ctx.sandbox.wrap(
            self.argv,
            ctx.workdir,
            readable=readable,
            cage=ctx.cage,
            bridge=ctx.bridge,
            latch=latch.args() if latch is not None else (),
        )
        return argv, env

    async def run(self, ctx: RunContext) -> RunResult:
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        if shutil.which(self.argv[0], path=ctx.env.get("PATH")) is None:
            return RunResult(
                succeeded=False, error=f"cannot start command {self.argv[0]!r}: not found"
            )
        latch = Latch.pipes() if ctx.sandbox is not None else None
        try:
            return await self._start(ctx, latch)
        finally:
            if latch is not None:
                latch.close()

    async def _start(self, ctx: RunContext, latch: Latch | None) -> RunResult:
        argv, env = self.command(ctx, latch)
        if ctx.steering is not None:
            (ctx.workdir / STEER_FILE).write_text("")  # the agent may watch it from the start
        try:
            # A sandbox is born in its cage's cgroups (`spawning`): none to move at the latch.
            process = await spawning.spawn(
                argv,
                ctx.cage if latch is not None else None,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=ctx.workdir,
                env=env,
                start_new_session=True,
                pass_fds=latch.child_fds if latch is not None else (),
                bufsize=0,
            )
        except OSError as exc:
            if resources.exhausted(exc):
                raise  # passing: the pool puts the task back in its queue
            return RunResult(
                succeeded=False,
                error=f"cannot start command {self.argv[0]!r}: {exc.strerror or exc}",
            )
        finally:
            if latch is not None:
                latch.spawned()
        try:
            return await self._run(ctx, latch, process)
        finally:
            process.close()

    async def _run(
        self, ctx: RunContext, latch: Latch | None, process: spawning.Spawned
    ) -> RunResult:
        assert process.stdout is not None
        assert process.stdin is not None
        await ctx.on_process(process.pid, processes.start_time(process.pid))
        tail = _Tail(TAIL_BYTES)
        exited = asyncio.Event()
        refused: str | None = None
        with CappedLog(ctx.log_path, ctx.max_log_bytes, room=ctx.disk_room) as log:
            copier = asyncio.create_task(_copy(process.stdout, log, tail))
            feeder = asyncio.create_task(_feed(process.stdin, task_document(ctx)))
            relay = (
                asyncio.create_task(_relay(ctx.steering, ctx.workdir / STEER_FILE))
                if ctx.steering is not None
                else None
            )
            try:
                if latch is not None:
                    try:
                        await latch.admit(ctx.cage, ctx.latch_listen())
                    except LatchError as exc:  # its sandbox was killed at the latch
                        refused = str(exc)
                code = await process.wait()
                exited.set()
                if relay is not None:  # what comes now becomes a follow-up task
                    relay.cancel()
                    await asyncio.gather(relay, return_exceptions=True)
                processes.kill_group(process.pid)
                # A descendant that left the group may hold the pipe open: do not wait on it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(copier, OUTPUT_DRAIN_SECONDS)
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
                if ctx.forge_tools is not None:
                    for outcome in await ctx.forge_tools.run_result_file(ctx.workdir):
                        log.write(f"[claude-hooks] forge: {json.dumps(outcome)}\n".encode())
            except asyncio.CancelledError:
                waiter = asyncio.create_task(_reap(process, exited))
                if ctx.sandbox is not None:
                    await processes.stop_sandbox(process.pid, ctx.cancel_grace, exited)
                else:
                    await processes.stop_group(process.pid, ctx.cancel_grace, exited)
                await waiter
                copier.cancel()
                feeder.cancel()
                if relay is not None:
                    relay.cancel()
                await asyncio.gather(copier, feeder, *filter(None, [relay]), return_exceptions=True)
                raise
        if refused is not None:
            return RunResult(succeeded=False, exit_code=code, error=refused)
        if code == 0:
            return RunResult(succeeded=True, exit_code=0, result=tail.text()[-1000:] or None)
        reason = f"exited with code {code}" if code > 0 else f"killed by signal {-code}"
        output = tail.text().strip()
        return RunResult(
            succeeded=False,
            exit_code=code,
            error=f"command {reason}" + (f"; last output:\n{output}" if output else ""),
        )


async def _reap(process: spawning.Spawned, exited: asyncio.Event) -> None:
    await process.wait()
    exited.set()
