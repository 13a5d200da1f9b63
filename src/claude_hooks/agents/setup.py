"""A repository's `setup` commands: run before each task's agent, where the agent runs.

Each command runs through `sh -c` in the workdir, in the agent's sandbox, with its limits and
its way out (the type's egress list), its output in the task's log. The first that fails
fails the task with the command and its last output, and the agent does not start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from claude_hooks.agents.capped_log import CappedLog
from claude_hooks.agents.runners.base import RunContext, RunResult
from claude_hooks.agents.runners.command import CommandRunner


async def run_setup(commands: Sequence[str], ctx: RunContext) -> RunResult | None:
    """None once every command succeeded; else the failed task's result."""
    quiet = replace(ctx, forge_tools=None)  # a setup command acts on nothing but the workdir
    for command in commands:
        with CappedLog(ctx.log_path, ctx.max_log_bytes) as log:
            log.write(f"[claude-hooks] setup: {command}\n".encode())
        result = await CommandRunner(["/bin/sh", "-c", command]).run(quiet)
        if not result.succeeded:
            return RunResult(
                succeeded=False,
                exit_code=result.exit_code,
                error=f"setup command {command!r} failed: {result.error}",
            )
    return None
