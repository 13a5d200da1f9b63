"""The operator's acts, one place each: cancel a task, retry one, enable, disable, add and
remove an instance. The CLI, the API and the dashboard, the forge commands (`@dev-bot stop`,
`retry`: `forge_commands`) and the hard budget (`limits`) all come here.

The database is the control plane: each act is written there and a signal row tells the
running nodes to act on it (a cancel's own signal reaches the node running the task), so the
CLI works whether or not a service runs (`Commands(config, store)`). A node's `Commands` is
given its pool (`here`) and does at once what this node can: announce a cancelled queued task
finished, stop its own running task, place a retry, bring its workers in line.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from claude_hooks.config import Config
from claude_hooks.core.domain import AgentInstance, DispatchRequest, Task, TaskState
from claude_hooks.errors import ConfigError, ConflictError, UnknownAgentError
from claude_hooks.names import NAME_RULE, valid_name
from claude_hooks.service.task_lookup import find_task
from claude_hooks.store.base import Store, TaskFilter
from claude_hooks.store.decisions import Cause
from claude_hooks.store.elastic import SIGNAL_AGENTS

RETRYABLE = (TaskState.FAILED, TaskState.CANCELLED)
BY_CLI = "a user, with the CLI (tasks cancel)"


@dataclass(frozen=True, slots=True)
class CancelRequest:
    task_id: str
    was: TaskState  # the state the task was in when the cancel arrived
    agent: str
    message: str


class Here(Protocol):
    """What this node does at once after an act is written: the pool's part."""

    async def dispatch(self, agent_type: str, request: DispatchRequest) -> Task: ...
    async def publish_finished(self, task_id: str) -> None: ...
    def stop_running(self, task_id: str) -> bool: ...


def check_type(config: Config, agent_type: str) -> None:
    """A type exists only where the configuration defines it."""
    if agent_type not in config.types:
        known = ", ".join(sorted(config.types)) or "none"
        raise ConfigError(
            f"type {agent_type!r} is not configured (configured: {known}): "
            f"add a [types.{agent_type}] table to the configuration first"
        )


def check_node(node: str | None) -> None:
    if node is not None and not valid_name(node):
        raise ConfigError(f"--node {node!r} is not a valid node name: {NAME_RULE}")


class Commands:
    """`here`: this node's pool (None for the CLI, which has none); `agents_changed`: what
    the node does when its instances changed (take or let go of them, sync its workers)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Callable[[], float] = time.time,
        here: Here | None = None,
        agents_changed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.here = here
        self.agents_changed = agents_changed

    # tasks

    async def cancel(
        self, task_id: str, by: str = BY_CLI, delivery_id: str | None = None
    ) -> CancelRequest:
        """Cancel a queued or running task, noting who asked (`Store.cancel_tasks`, the act
        the intake's decisions use too); a running one is stopped by the node that runs it,
        told by a signal, and by this node at once if it runs it. ConflictError if it has
        already finished."""
        task = await find_task(self.store, task_id)
        task_id = task.id  # the full id, whichever tail of it was given
        written = await self.store.cancel_tasks([task_id], Cause(by, delivery_id, self.clock()))
        if written.cancelled:
            # A held task (its session paused) waits like a queued one and is cancelled the same.
            was = TaskState.HELD if task.state is TaskState.HELD else TaskState.QUEUED
            if self.here is not None:
                await self.here.publish_finished(task_id)
            return CancelRequest(
                task_id, was, task.agent, f"task {task_id} cancelled (was {was.value})"
            )
        if written.stopping:
            if self.here is not None:
                self.here.stop_running(task_id)  # run by another node: its listener stops it
            message = (
                f"task {task_id} is running on {task.agent}: cancel requested, "
                "the service stops it within a second"
            )
            return CancelRequest(task_id, TaskState.RUNNING, task.agent, message)
        finished = await self.store.get_task(task_id)
        state = finished.state.value if finished else "gone"
        raise ConflictError(f"task {task_id} has already finished ({state})")

    async def cancel_running(self, agent: str, by: str) -> str:
        """Cancel the task instance `agent` runs now, on whichever node holds it; its id."""
        for instance in await self.store.instances():
            if instance.name == agent:
                if instance.running is None:
                    raise ConflictError(f"agent {agent!r} is idle: it has no task to cancel")
                await self.cancel(instance.running, by)
                return instance.running
        raise UnknownAgentError(agent)

    async def retry(self, task_id: str) -> Task:
        """A new task with the old one's key, kind and payload, placed by the pool as usual
        and linked to the old one; only a failed or cancelled task can be retried."""
        old = await find_task(self.store, task_id)
        if old.state not in RETRYABLE:
            raise ConflictError(
                f"task {old.id} is {old.state.value}: only a failed or cancelled task can be "
                "retried (cancel it first if it should start over)"
            )
        if old.type not in self.config.types:
            raise ConflictError(
                f"task {old.id} is for type {old.type!r}, which is no longer configured: "
                f"add a [types.{old.type}] table to retry it"
            )
        if self.here is None:
            raise ConflictError(f"retrying task {old.id} needs the running service")
        request = DispatchRequest(
            kind=old.kind,
            repo=old.repo,
            number=old.number,
            session_key=old.session_key,
            payload=old.payload,
            delivery_id=old.delivery_id,
        )
        new = await self.here.dispatch(old.type, request)
        await self.store.notes.link_retry(new.id, old.id)
        return new

    # instances

    async def add_agent(self, name: str, agent_type: str, node: str | None = None) -> AgentInstance:
        if not valid_name(name):
            raise ConflictError(f"{name!r} is not a valid agent name: {NAME_RULE}")
        check_type(self.config, agent_type)
        check_node(node)
        agent = await self.store.add_agent(name, agent_type, self.clock(), node)
        await self._changed(name)
        return agent

    async def set_enabled(self, name: str, enabled: bool, force: bool = False) -> list[str]:
        """Enable or disable an instance; with `force`, also cancel its running task."""
        await self.store.set_agent_enabled(name, enabled)
        await self._changed(name)
        return await self._cancel_running_on(name) if force and not enabled else []

    async def remove_agent(self, name: str, force: bool = False) -> list[str]:
        await self.store.remove_agent(name)
        await self._changed(name)
        return await self._cancel_running_on(name) if force else []

    async def _changed(self, name: str) -> None:
        """Every node brings its workers in line (the signal); this one at once."""
        await self.store.emit_signal(SIGNAL_AGENTS, name, self.clock())
        if self.agents_changed is not None:
            await self.agents_changed()

    async def _cancel_running_on(self, name: str) -> list[str]:
        where = TaskFilter(state=TaskState.RUNNING, agent=name)
        running = await self.store.list_tasks(where, 100, 0)
        for task in running:
            await self.cancel(task.id, f"--force when instance {name} was taken out (CLI)")
        return [task.id for task in running]
