"""Changes made from the CLI, whether or not a service is running.

The database is the control plane: each change is written there, then a signal row tells a
running service to act on it within `server.poll_interval`. A service that starts later reads
the same rows, so nothing depends on the service being up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from claude_hooks.config import Config
from claude_hooks.core.domain import AgentInstance, TaskState
from claude_hooks.errors import ConfigError, ConflictError
from claude_hooks.names import NAME_RULE, valid_name
from claude_hooks.service.task_lookup import find_task
from claude_hooks.store.base import Store, TaskFilter
from claude_hooks.store.decisions import Cause
from claude_hooks.store.elastic import SIGNAL_AGENTS


@dataclass(frozen=True, slots=True)
class CancelRequest:
    task_id: str
    was: TaskState  # the state the task was in when the cancel arrived
    agent: str
    message: str


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


async def add_agent(
    store: Store, config: Config, name: str, agent_type: str, node: str | None = None
) -> AgentInstance:
    if not valid_name(name):
        raise ConflictError(f"{name!r} is not a valid agent name: {NAME_RULE}")
    check_type(config, agent_type)
    check_node(node)
    agent = await store.add_agent(name, agent_type, time.time(), node)
    await store.emit_signal(SIGNAL_AGENTS, name, time.time())
    return agent


async def set_enabled(store: Store, name: str, enabled: bool, force: bool = False) -> list[str]:
    """Enable or disable an instance; with `force`, also cancel its running task."""
    await store.set_agent_enabled(name, enabled)
    await store.emit_signal(SIGNAL_AGENTS, name, time.time())
    return await _cancel_running_on(store, name) if force and not enabled else []


async def remove_agent(store: Store, name: str, force: bool = False) -> list[str]:
    await store.remove_agent(name)
    await store.emit_signal(SIGNAL_AGENTS, name, time.time())
    return await _cancel_running_on(store, name) if force else []


async def _cancel_running_on(store: Store, name: str) -> list[str]:
    running = await store.list_tasks(TaskFilter(state=TaskState.RUNNING, agent=name), 100, 0)
    for task in running:
        await cancel_task(store, task.id, f"--force when instance {name} was taken out (CLI)")
    return [task.id for task in running]


async def cancel_task(
    store: Store,
    task_id: str,
    by: str = "a user, with the CLI (tasks cancel)",
    delivery_id: str | None = None,
) -> CancelRequest:
    """Cancel a queued or running task, noting who asked (`Store.cancel_tasks`, the act the
    intake's decisions use too); a running one is stopped by the node that runs it, told by
    a signal. ConflictError if it has already finished. `Pool.cancel_task` adds what the
    service itself does at once."""
    task = await find_task(store, task_id)
    task_id = task.id  # the full id, whichever tail of it was given
    written = await store.cancel_tasks([task_id], Cause(by, delivery_id, time.time()))
    if written.cancelled:
        # A held task (its session paused) waits like a queued one and is cancelled the same.
        was = TaskState.HELD if task.state is TaskState.HELD else TaskState.QUEUED
        message = f"task {task_id} cancelled (was {was.value})"
        return CancelRequest(task_id, was, task.agent, message)
    if written.stopping:
        message = (
            f"task {task_id} is running on {task.agent}: cancel requested, "
            "the service stops it within a second"
        )
        return CancelRequest(task_id, TaskState.RUNNING, task.agent, message)
    finished = await store.get_task(task_id)
    state = finished.state.value if finished else "gone"
    raise ConflictError(f"task {task_id} has already finished ({state})")
