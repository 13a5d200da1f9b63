"""Carrying out the commands people write to agents in forge comments (`@dev-bot stop`).

The flows find the command lines (`flows.handle_commands`); the intake runs each here inside
the delivery, so what it did is recorded with the delivery and a `stop` reaches the running
task at once. The comment is acknowledged with reactions, posted directly in the background
(`eyes` received, then `+1` done or `-1` refused), and answered in a reply through the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from claude_hooks.config import Config
from claude_hooks.core.decision import ForgeCommand, ForgeComment
from claude_hooks.core.domain import Task, TaskState
from claude_hooks.core.loop_guard import service_limits
from claude_hooks.core.policy import IssueLimits, PolicyError
from claude_hooks.errors import ClaudeHooksError, ConflictError
from claude_hooks.forge.client import ForgejoError
from claude_hooks.forge.gateway import Forge
from claude_hooks.service.commands import Commands
from claude_hooks.service.pool import Pool
from claude_hooks.store import wakeups
from claude_hooks.store.base import TaskFilter
from claude_hooks.store.wakeups import Wake

log = logging.getLogger(__name__)

REFUSAL_WINDOW = 3600.0  # seconds between two refusals of one sender on one issue
RECENT = 5  # tasks the status lists
HELP = (
    "Commands, each on a line of its own in a comment:\n"
    "- `@{login} stop`: cancel my running and queued work here\n"
    "- `@{login} status`: what I am doing here, my last tasks, their cost, my limits\n"
    "- `@{login} retry`: run my last failed task here again\n"
    "- `@{login} pause`: take no new task here until resumed (new work waits, held)\n"
    "- `@{login} resume`: take work here again\n"
    "- `@{login} help`: this list\n"
    "Any other mention of `@{login}` is a request I answer in a task."
)


@dataclass(slots=True)
class Done:
    """What a command did: a line for the delivery's record, the reply, new and ended tasks."""

    summary: str
    reply: str
    ok: bool = True
    tasks: list[Task] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class ForgeCommands:
    """Runs forge commands: `stop` and `retry` through the operator's `Commands`, the rest
    here; reactions go out in the background."""

    def __init__(
        self,
        config: Config,
        commands: Commands,
        pool: Pool,
        forge: Forge,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.commands = commands
        self.pool = pool
        self.store = pool.store
        self.forge = forge
        self.clock = clock
        self._reacting: set[asyncio.Task[None]] = set()

    async def run(self, command: ForgeCommand, delivery_id: str | None) -> Done:
        """Carry out one command; a refusal or a failure is an answer, never an exception."""
        verdict: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._acknowledge(command, verdict)
        ok = False
        try:
            done = await self._answer(command, delivery_id)
            ok = done.ok
            return done
        finally:
            verdict.set_result(ok)

    async def _answer(self, command: ForgeCommand, delivery_id: str | None) -> Done:
        if not command.allowed:
            done = await self._refuse(command)
        else:
            try:
                done = await self._carry_out(command, delivery_id)
            except ClaudeHooksError as exc:
                done = Done(f"{command.word} failed: {exc}", str(exc), ok=False)
        return done

    async def _carry_out(self, command: ForgeCommand, delivery_id: str | None) -> Done:
        if command.word == "stop":
            return await self._stop(command, delivery_id)
        if command.word == "status":
            return Done("status answered", await self.status(command))
        if command.word == "retry":
            return await self._retry(command)
        if command.word == "pause":
            held = await self.store.commands.pause(command.session, command.sender, self.clock())
            if held is None:
                return Done("already paused", f"`{command.session}` is already paused.")
            login = self.config.login_of(command.agent_type)
            return Done(
                f"paused {command.session} ({len(held)} task(s) held)",
                f"Paused: I take no new task here until `@{login} resume`. "
                f"{len(held)} queued task(s) now wait, held; new work waits too.",
            )
        if command.word == "resume":
            agents = await self.store.commands.resume(command.session)
            if agents is None:
                return Done("was not paused", f"`{command.session}` was not paused.")
            for agent in agents:
                self.pool.heard(Wake(wakeups.TASK, agent))
            return Done(f"resumed {command.session}", "Resumed: held work goes back in line.")
        return Done("help answered", HELP.format(login=self.config.login_of(command.agent_type)))

    async def _stop(self, command: ForgeCommand, delivery_id: str | None) -> Done:
        by = f"forge command stop by {command.sender}"
        cancelled: list[str] = []
        for task_id in await self.store.intake.active_tasks(command.keys):
            # The one cancel (`Commands.cancel`), with what this node does at once: announce
            # a queued task finished, stop a running one here.
            with contextlib.suppress(ConflictError):  # it ended meanwhile
                await self.commands.cancel(task_id, by, delivery_id)
                cancelled.append(task_id)
        if not cancelled:
            return Done(
                "nothing to stop", "Nothing to stop: I have no running or queued work here."
            )
        listed = ", ".join(f"`{task_id}`" for task_id in cancelled)
        return Done(
            f"stopped {len(cancelled)} task(s)",
            f"Stopped at {command.sender}'s request: {listed}.",
            cancelled=cancelled,
        )

    async def _retry(self, command: ForgeCommand) -> Done:
        failed = await self.store.list_tasks(
            TaskFilter(session_key=command.session, state=TaskState.FAILED), 1, 0
        )
        if not failed:
            raise ConflictError(f"no failed task of `{command.session}` to retry")
        new = await self.commands.retry(failed[0].id)
        return Done(
            f"retried {failed[0].id} as {new.id}",
            f"Retrying `{failed[0].id}` ({failed[0].kind.value}) as task `{new.id}` on "
            f"`{new.agent}`.",
            tasks=[new],
        )

    async def _refuse(self, command: ForgeCommand) -> Done:
        done = Done(f"refused {command.sender}", "", ok=False)
        due = await self.store.commands.refusal_due(
            command.repo, command.number, command.sender, self.clock(), REFUSAL_WINDOW
        )
        if due:
            done.reply = (
                f"Sorry @{command.sender}, only people who may start agent work on this "
                "repository (write access, or [security] allowed_senders) can give me "
                "commands. Nothing was done."
            )
        return done

    async def status(self, command: ForgeCommand) -> str:
        """The session's state, its last tasks, its cost and the loop guard's counters."""
        key = command.session
        recent = await self.store.list_tasks(TaskFilter(session_key=key), 500, 0)
        lines = [f"**Status of `{key}`**"]
        paused = {p.session_key: p for p in await self.store.commands.paused()}.get(key)
        if paused is not None:
            lines.append(f"- paused by {paused.paused_by} since {_when(paused.paused_at)}")
        running = [t for t in recent if t.state is TaskState.RUNNING]
        queued = [t for t in recent if t.state is TaskState.QUEUED]
        held = [t for t in recent if t.state is TaskState.HELD]
        for task in running:
            node = await self.store.node_of(task.id)
            where = f" (node `{node.name}`)" if node is not None else ""
            since = _when(task.started_at) if task.started_at else "?"
            lines.append(
                f"- running `{task.kind.value}` (task `{task.id}`) on `{task.agent}`{where} "
                f"since {since}"
            )
        positions = await self.store.queue_positions([t.id for t in queued])
        for task in queued:
            # Why it waits for its concurrency group, as the claim of any node noted it.
            wait = (await self.store.notes.get_note(task.id)).group_wait
            lines.append(
                f"- queued `{task.kind.value}` (task `{task.id}`) on `{task.agent}`, "
                f"position {positions.get(task.id, '?')}" + (f"; {wait}" if wait else "")
            )
        lines += [f"- held `{t.kind.value}` (task `{t.id}`) until resumed" for t in held]
        if not running and not queued and not held:
            lines.append("- idle: nothing running or queued")
        finished = [t for t in recent if t.state.finished][:RECENT]
        if finished:
            lines.append("- last tasks:")
            for task in finished:
                cost = f", ${task.cost_usd:.2f}" if task.cost_usd else ""
                error = f": {task.error.strip().splitlines()[0][:120]}" if task.error else ""
                lines.append(f"  - `{task.id}` `{task.kind.value}` {task.state.value}{cost}{error}")
        total = sum(t.cost_usd or 0.0 for t in recent)
        lines.append(f"- cost so far: ${total:.2f} over {len(recent)} task(s)")
        lines.append(await self._guard_line(command))
        if self.config.server.public_url and recent:
            url = self.config.server.public_url.rstrip("/")
            lines.append(f"- dashboard: {url}/tasks/{recent[0].id}")
        return "\n".join(lines)

    async def _guard_line(self, command: ForgeCommand) -> str:
        number = int(command.session.rsplit(":", 1)[1])
        limits = await self._limits(command.repo)
        guard = await self.store.intake.guard(command.repo, number)
        since = guard.since if guard is not None else 0.0
        tasks, cost = await self.store.intake.issue_usage(command.repo, number, since)
        rounds = guard.review_rounds if guard is not None else 0
        most = limits.max_cost_per_issue_usd
        cost_limit = f" of {most:g}" if most else ""
        line = (
            f"- loop guard on #{number}: {tasks} of {limits.max_tasks_per_issue} tasks, "
            f"${cost:.2f}{cost_limit} spent, {rounds} of {limits.max_review_rounds} review rounds"
        )
        if guard is not None and guard.tripped_at is not None:
            line += f"; stopped: {guard.reason}"
        return line

    async def _limits(self, repo: str) -> IssueLimits:
        """The loop guard's limits for `repo`: its policy's, else the service's."""
        if self.pool.policies is not None:
            with contextlib.suppress(PolicyError):
                return (await self.pool.policies.of(repo)).issue_limits()
        return service_limits(self.config.flows)

    def reply(self, command: ForgeCommand, done: Done) -> ForgeComment | None:
        if not done.reply:
            return None
        return ForgeComment(command.agent_type, command.repo, command.number, done.reply)

    def _acknowledge(self, command: ForgeCommand, verdict: asyncio.Future[bool]) -> None:
        """React `eyes` at once, then `+1` or `-1` once `verdict` says how it went."""
        if not self.forge.enabled:
            return
        task = asyncio.get_running_loop().create_task(self._react(command, verdict))
        self._reacting.add(task)
        task.add_done_callback(self._reacting.discard)

    async def _react(self, command: ForgeCommand, verdict: asyncio.Future[bool]) -> None:
        for content in ("eyes", None):
            if content is None:
                content = "+1" if await verdict else "-1"
            try:
                await self.forge.react(
                    command.agent_type, command.repo, command.comment_id, content
                )
            except ForgejoError as exc:
                log.warning(
                    "could not react %s to comment %d on %s: %s",
                    content,
                    command.comment_id,
                    command.repo,
                    exc,
                )
                return

    async def stop(self) -> None:
        for task in list(self._reacting):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
