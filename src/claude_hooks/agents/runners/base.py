"""The runner protocol: the worker hands over one task and gets back how it ended.

Cancellation and timeouts reach a runner as `asyncio.CancelledError`; a runner stops its
agent process before letting it propagate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from claude_hooks.agents.cages import Cage
from claude_hooks.agents.forge_tools import ForgeTools
from claude_hooks.agents.run_result import RunResult
from claude_hooks.agents.sandbox import Sandbox
from claude_hooks.agents.sandbox_latch import Listen
from claude_hooks.config import MergeStyle, TypeConfig
from claude_hooks.core.domain import Task


@dataclass(frozen=True, slots=True)
class RunProgress:
    """What a running agent reported: its own todo list (Claude Code's TodoWrite) and the
    files it edited; shown in the task's living status comment."""

    todos: tuple[tuple[str, str], ...] = ()  # (status, content)
    files: tuple[str, ...] = ()
    cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class SteerMessage:
    """A mention sent into the running task (steering): who wrote what, and when."""

    sender: str
    body: str
    at: float
    comment_id: int | None = None


class SteerInbox(Protocol):
    """The steering messages of one run, as they arrive."""

    async def wait(self) -> None:
        """Return once a message may be waiting (at once if one came since the last take)."""

    async def take(self) -> list[SteerMessage]:
        """The messages not taken yet, oldest first; taken, they are the runner's to deliver."""


@dataclass(frozen=True, slots=True)
class RunContext:
    task: Task
    type_config: TypeConfig
    workdir: Path
    log_path: Path
    env: dict[str, str]
    cancel_grace: float
    # Called with (pid, start time) once the agent process exists, so a restarted service
    # can stop it even if this one dies.
    on_process: Callable[[int, int | None], Awaitable[None]]
    # None: the type runs unconfined (`sandbox = false`).
    sandbox: Sandbox | None = None
    max_log_bytes: int = 10 * 1024 * 1024
    # False while the data dir's disk is short (`DiskRoom`): the log stops after its head.
    disk_room: Callable[[], bool] | None = None
    # What the agent may do on the forge, done by the service (None: no forge configured).
    forge_tools: ForgeTools | None = None
    # Called with the agent's progress each time it changes (None: nobody listens).
    on_progress: Callable[[RunProgress], None] | None = None
    # Mentions that reach the running agent (None: the run takes none; they become follow-ups).
    steering: SteerInbox | None = None
    # The run's limits (its cgroups, the paths whose disk use counts); None: no limits.
    cage: Cage | None = None
    # From the repository's policy file: text for every prompt, its test command, and how
    # its pull requests are merged (None: the service's [flows] merge_style).
    instructions: str = ""
    test_command: str | None = None
    merge_style: MergeStyle | None = None
    # The egress proxy's socket for this run, bridged into its sandbox (None: no way out).
    bridge: Path | None = None
    # The same session, serving a listener the service opens inside the sandbox at its latch
    # when the sandbox `listens_inside` (then `bridge` is not bound in).
    listen: Listen | None = None

    def latch_listen(self) -> Listen | None:
        """What serves the listener the service opens in the sandbox at its latch, if any."""
        return self.listen if self.sandbox is not None and self.sandbox.listens_inside else None


__all__ = ["AgentRunner", "RunContext", "RunResult"]


class AgentRunner(Protocol):
    async def run(self, ctx: RunContext) -> RunResult: ...
