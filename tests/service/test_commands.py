"""The operator's acts in one place: the CLI's `Commands` writes to the database alone; a
node's also acts at once through its pool (`Here`)."""

from __future__ import annotations

import time

import pytest

from claude_hooks.config import Config
from claude_hooks.core.domain import DispatchRequest, Task, TaskKind, TaskState
from claude_hooks.errors import ConflictError
from claude_hooks.service.commands import Commands
from claude_hooks.store.sql import SqlStore


class Pool:
    """What a node's pool does at once, over the real store: places, and notes the rest."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.finished: list[str] = []
        self.stopped: list[str] = []

    async def dispatch(self, agent_type: str, request: DispatchRequest) -> Task:
        return (await self.store.dispatch(request.task(agent_type, time.time()))).task

    async def publish_finished(self, task_id: str) -> None:
        self.finished.append(task_id)

    def stop_running(self, task_id: str) -> bool:
        self.stopped.append(task_id)
        return True


async def _queued(store: SqlStore) -> Task:
    await store.add_agent("dev-alpha", "dev", time.time())
    request = DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", 7, {})
    return (await store.dispatch(request.task("dev", time.time()))).task


async def test_the_clis_cancel_writes_alone_and_a_retry_needs_the_service(
    config: Config, store: SqlStore
) -> None:
    task = await _queued(store)
    cli = Commands(config, store)
    with pytest.raises(ConflictError, match="only a failed or cancelled task"):
        await cli.retry(task.id)
    request = await cli.cancel(task.id[-6:])  # a tail of the id names it too
    assert (request.task_id, request.was) == (task.id, TaskState.QUEUED)
    with pytest.raises(ConflictError, match="already finished"):
        await cli.cancel(task.id)
    with pytest.raises(ConflictError, match="needs the running service"):
        await cli.retry(task.id)


async def test_a_nodes_commands_act_here_at_once(config: Config, store: SqlStore) -> None:
    task = await _queued(store)
    pool = Pool(store)
    changed: list[str] = []

    async def agents_changed() -> None:
        changed.append("synced")

    commands = Commands(config, store, time.time, pool, agents_changed)
    await commands.cancel(task.id, "a user, through the API")
    assert pool.finished == [task.id]  # announced finished here, not only through a signal
    new = await commands.retry(task.id)
    assert (new.session_key, new.kind, new.state) == (task.session_key, task.kind, TaskState.QUEUED)
    assert new.id != task.id
    await commands.set_enabled("dev-alpha", False)
    assert changed == ["synced"]
    agent = await store.get_agent("dev-alpha")
    assert agent is not None and not agent.enabled
