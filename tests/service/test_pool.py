"""dispatch_by_type against a real SQLite store, with workers running a gate runner."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.errors import ConflictError, NoInstanceError, UnknownAgentError
from claude_hooks.service.commands import Commands
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.store.decisions import Cause
from tests.conftest import ServiceFactory
from tests.support import (
    GateRunner,
    all_idle,
    instance_idle,
    make_config,
    queue_is,
    queue_of,
    wait_until,
)


def request(
    number: int, repo: str = "acme/widget", kind: TaskKind = TaskKind.WORK_ISSUE
) -> DispatchRequest:
    return DispatchRequest.for_type("dev", kind, repo, number)


async def devs(start_service: ServiceFactory, gate: GateRunner, *names: str) -> Service:
    service: Service = await start_service(
        runner=gate, agents=[{"name": n, "type": "dev"} for n in names]
    )
    return service


async def agent_of(service: Service, task_id: str) -> str:
    task = await service.store.get_task(task_id)
    assert task is not None
    return task.agent


def hold_write_lock(database: Path, seconds: float) -> threading.Thread:
    """Hold SQLite's write lock from another connection for `seconds`, in a thread."""
    locked = threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(database, timeout=1)
        connection.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        connection.rollback()
        connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    locked.wait(5)
    return holder


async def test_single_idle_instance_takes_the_task(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service = await devs(start_service, gate, "dev-alpha")
    task_id = await service.pool.dispatch_by_type("dev", request(1))
    assert await agent_of(service, task_id) == "dev-alpha"
    await wait_until(lambda: gate.started == [task_id])


async def test_idle_instances_take_turns(start_service: ServiceFactory, gate: GateRunner) -> None:
    service = await devs(start_service, gate, "dev-bravo", "dev-alpha", "dev-charlie")
    placed = []
    for number in range(1, 7):
        task_id = await service.pool.dispatch_by_type("dev", request(number))
        placed.append(await agent_of(service, task_id))
        gate.release(task_id)
        await wait_until(lambda: all_idle(service.store))
    assert placed == ["dev-alpha", "dev-bravo", "dev-charlie"] * 2
    assert await service.store.load_cursors() == {"dev": 3}  # charlie (index 2) + 1


async def test_all_busy_goes_to_the_shortest_queue_with_cursor_tie_break(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service = await devs(start_service, gate, "dev-alpha", "dev-bravo")
    first = [await service.pool.dispatch_by_type("dev", request(n)) for n in (1, 2)]
    await wait_until(lambda: len(gate.started) == 2)
    assert [await agent_of(service, t) for t in first] == ["dev-alpha", "dev-bravo"]
    # Both busy with empty queues: the tie goes to the cursor (index 2 -> alpha), then bravo.
    third = await service.pool.dispatch_by_type("dev", request(3))
    fourth = await service.pool.dispatch_by_type("dev", request(4))
    fifth = await service.pool.dispatch_by_type("dev", request(5))
    assert [await agent_of(service, t) for t in (third, fourth, fifth)] == [
        "dev-alpha",
        "dev-bravo",
        "dev-alpha",
    ]
    # alpha now has 2 queued, bravo 1: the least loaded wins whatever the cursor says.
    sixth = await service.pool.dispatch_by_type("dev", request(6))
    assert await agent_of(service, sixth) == "dev-bravo"


async def test_no_instance_names_the_type(start_service: ServiceFactory, gate: GateRunner) -> None:
    service = await devs(start_service, gate)
    with pytest.raises(NoInstanceError, match="no instance registered for type 'dev'"):
        await service.pool.dispatch_by_type("dev", request(1))
    assert await service.store.count_tasks(TaskFilter()) == 0


async def test_session_key_in_flight_goes_to_its_instance(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service = await devs(start_service, gate, "dev-alpha", "dev-bravo")
    running = await service.pool.dispatch_by_type("dev", request(17))
    await wait_until(lambda: gate.started == [running])
    # bravo is idle, but issue 17's conversation is running on alpha: it waits there.
    again = await service.pool.dispatch_by_type("dev", request(17, kind=TaskKind.ADDRESS_REVIEW))
    assert await agent_of(service, again) == "dev-alpha"
    other = await service.pool.dispatch_by_type("dev", request(18))
    assert await agent_of(service, other) == "dev-bravo"
    gate.release(running)
    await wait_until(lambda: again in gate.started)


async def test_disabled_instance_is_skipped(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service = await devs(start_service, gate, "dev-alpha", "dev-bravo")
    await service.commands.set_enabled("dev-alpha", False)
    placed = {
        await agent_of(service, await service.pool.dispatch_by_type("dev", request(n)))
        for n in range(1, 4)
    }
    assert placed == {"dev-bravo"}
    instances = await service.store.instances()
    assert [i.name for i in instances if i.type == "dev" and i.enabled] == ["dev-bravo"]


async def test_registry_lookups(start_service: ServiceFactory, gate: GateRunner) -> None:
    service = await devs(start_service, gate, "dev-bravo", "dev-alpha")
    assert service.pool.get_worker("dev-alpha").type == "dev"
    assert [w.name for w in service.pool.get_workers_by_type("dev")] == ["dev-alpha", "dev-bravo"]
    assert service.pool.get_workers_by_type("reviewer") == []
    with pytest.raises(UnknownAgentError, match="no agent named 'dev-zulu'"):
        service.pool.get_worker("dev-zulu")


async def test_each_worker_is_fifo_and_runs_one_at_a_time(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service = await devs(start_service, gate, "dev-alpha")
    ids = [await service.pool.dispatch_by_type("dev", request(n)) for n in range(1, 5)]
    for index, task_id in enumerate(ids):
        await wait_until(lambda task_id=task_id: gate.started[-1:] == [task_id])
        assert len(gate.started) == index + 1
        gate.release(task_id)
    await wait_until(lambda: instance_idle(service.store, "dev-alpha"))
    states = {t.id: t.state for t in await service.store.list_tasks(TaskFilter(), 10, 0)}
    assert set(states.values()) == {TaskState.SUCCEEDED}


async def test_disabling_moves_queued_tasks_and_lets_the_running_one_finish(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service = await devs(start_service, gate, "dev-alpha", "dev-bravo")
    running_a = await service.pool.dispatch_by_type("dev", request(1))
    running_b = await service.pool.dispatch_by_type("dev", request(2))
    queued_a = await service.pool.dispatch_by_type("dev", request(3))
    await wait_until(lambda: len(gate.started) == 2)
    assert await agent_of(service, queued_a) == "dev-alpha"
    await service.commands.set_enabled("dev-alpha", False)
    assert await agent_of(service, queued_a) == "dev-bravo"
    assert service.pool.get_worker("dev-alpha").current is not None
    gate.release(running_a)
    # Once idle, the disabled instance may be let go by the node's next beat: its worker gone.
    alpha = service.pool.workers
    await wait_until(lambda: "dev-alpha" not in alpha or alpha["dev-alpha"].current is None)
    task = await service.store.get_task(running_a)
    assert task is not None and task.state is TaskState.SUCCEEDED
    gate.release(running_b)
    await wait_until(lambda: gate.started[-1:] == [queued_a])


async def test_disabling_the_last_instance_fails_its_queue_clearly(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service = await devs(start_service, gate, "dev-alpha")
    await service.pool.dispatch_by_type("dev", request(1))
    queued = await service.pool.dispatch_by_type("dev", request(2))
    await wait_until(lambda: len(gate.started) == 1)
    await service.commands.set_enabled("dev-alpha", False)
    task = await service.store.get_task(queued)
    assert task is not None and task.state is TaskState.FAILED
    assert task.error is not None and "no enabled instance of type 'dev'" in task.error


async def test_cli_changes_reach_the_running_service(
    start_service: ServiceFactory, gate: GateRunner, tmp_path: Path
) -> None:
    service = await devs(start_service, gate, "dev-alpha")
    cli = Commands(service.config, service.store)  # the CLI's: the signal tells the service
    await cli.add_agent("dev-charlie", "dev")
    await wait_until(lambda: "dev-charlie" in service.pool.workers, timeout=1.0)
    first = await service.pool.dispatch_by_type("dev", request(1))
    second = await service.pool.dispatch_by_type("dev", request(2))
    assert {await agent_of(service, first), await agent_of(service, second)} == {
        "dev-alpha",
        "dev-charlie",
    }
    await wait_until(lambda: len(gate.started) == 2)
    queued = await service.pool.dispatch_by_type("dev", request(3))
    queued_on = await agent_of(service, queued)
    await cli.remove_agent(queued_on)
    other = ({"dev-alpha", "dev-charlie"} - {queued_on}).pop()
    await wait_until(lambda: queue_is(service.store, other, [queued]), timeout=1.0)
    assert service.pool.workers[queued_on].retiring
    assert await agent_of(service, queued) == other
    # The removed instance finishes its running task, then leaves the registry.
    running_there = first if await agent_of(service, first) == queued_on else second
    gate.release(running_there)
    await wait_until(lambda: queued_on not in service.pool.workers, timeout=2.0)
    with pytest.raises(ConflictError, match="already exists"):
        await cli.add_agent(other, "dev")


async def test_force_disable_cancels_the_running_task(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service = await devs(start_service, gate, "dev-alpha", "dev-bravo")
    running = await service.pool.dispatch_by_type("dev", request(1))
    await wait_until(lambda: len(gate.started) == 1)
    assert await Commands(service.config, service.store).set_enabled(
        "dev-alpha", False, force=True
    ) == [running]
    await wait_until(lambda: gate.cancelled == [running], timeout=1.0)
    await wait_until(lambda: service.pool.get_worker("dev-alpha").current is None)
    task = await service.store.get_task(running)
    assert task is not None and task.state is TaskState.CANCELLED


async def test_startup_builds_workers_and_queues_from_the_database(
    tmp_path: Path, gate: GateRunner
) -> None:
    config = make_config(tmp_path, agents=[{"name": "dev-alpha", "type": "dev"}])
    first = await Service.open(config, lambda _type: gate)
    await first.start()
    ids = [await first.pool.dispatch_by_type("dev", request(n)) for n in range(1, 4)]
    await wait_until(lambda: len(gate.started) == 1)
    await first.stop()  # a clean stop hands the running task back to the head of its queue
    second_gate = GateRunner()
    second = await Service.open(config, lambda _type: second_gate)
    await second.start()
    try:
        await wait_until(lambda: second_gate.started == [ids[0]])
        assert await queue_of(second.store, "dev-alpha") == ids[1:]
        task = await second.store.get_task(ids[0])
        assert task is not None and task.attempts == 1
    finally:
        await second.stop()


async def test_a_worker_survives_a_database_fault_and_goes_on_with_its_queue(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service = await devs(start_service, gate, "dev-alpha")
    first = await service.pool.dispatch_by_type("dev", request(1))
    second = await service.pool.dispatch_by_type("dev", request(2))
    await wait_until(lambda: gate.started == [first])
    # Another process (a CLI, a backup) holds the lock past the busy timeout (5 s).
    holder = hold_write_lock(service.config.data_dir / "claude-hooks.db", 5.5)
    gate.release(first)  # recording its end needs the lock: the worker hits "database is locked"
    await wait_until(lambda: second in gate.started, timeout=20)
    holder.join()
    task = await service.store.get_task(first)
    assert task is not None and task.state is TaskState.SUCCEEDED  # recorded once it could be
    gate.release(second)
    await wait_until(lambda: instance_idle(service.store, "dev-alpha"))


async def test_a_cancel_asked_before_a_clean_stop_is_honoured_after_it(
    tmp_path: Path, gate: GateRunner
) -> None:
    config = make_config(tmp_path, agents=[{"name": "dev-alpha", "type": "dev"}])
    first = await Service.open(config, lambda _type: gate)
    await first.start()
    task_id = await first.pool.dispatch_by_type("dev", request(1))
    await wait_until(lambda: gate.started == [task_id])
    # As the CLI does (its signal unread: the service stops before acting on it).
    await first.store.cancel_tasks([task_id], Cause("a test", None, time.time()))
    await first.stop()
    second_gate = GateRunner()
    second = await Service.open(config, lambda _type: second_gate)
    await second.start()
    try:
        task = await second.store.get_task(task_id)
        assert task is not None and task.state is TaskState.CANCELLED
        again = await second.pool.dispatch_by_type("dev", request(1))
        assert again != task_id  # a new event is queued, not merged into the cancelled task
        await wait_until(lambda: second_gate.started == [again])
    finally:
        await second.stop()


async def test_a_task_moved_off_a_disabled_waiting_instance_runs_where_it_was_moved(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service = await devs(start_service, gate, "dev-alpha", "dev-bravo", "dev-charlie")
    running = await service.pool.dispatch_by_type("dev", request(1))
    await wait_until(lambda: gate.started == [running])
    await service.commands.set_enabled("dev-alpha", False)  # alpha goes on running issue 1
    follow_up = await service.pool.dispatch_by_type("dev", request(1, kind=TaskKind.FIX_CI))
    waiting_on = await agent_of(service, follow_up)
    waiter = service.pool.get_worker(waiting_on)
    # It waits at the head of its queue there: issue 1's conversation still runs on alpha.
    await wait_until(lambda: waiter.blocked)
    assert await queue_of(service.store, waiting_on) == [follow_up]
    await service.commands.set_enabled(waiting_on, False)
    moved_to = await agent_of(service, follow_up)
    assert moved_to not in ("dev-alpha", waiting_on)
    gate.release(running)
    await wait_until(lambda: follow_up in gate.started)
    await wait_until(lambda: waiter.current is None)
    assert gate.started.count(follow_up) == 1
    assert service.pool.get_worker(moved_to).current is not None
    assert service.pool.get_worker(moved_to).current.id == follow_up
    await service.commands.cancel(follow_up)
    await wait_until(lambda: follow_up in gate.cancelled)


async def test_tasks_moved_during_a_database_fault_are_not_lost(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service = await devs(start_service, gate, "dev-alpha", "dev-bravo")
    await service.pool.dispatch_by_type("dev", request(1))  # alpha runs it
    await service.pool.dispatch_by_type("dev", request(2))  # bravo takes it
    queued = await service.pool.dispatch_by_type("dev", request(3))
    await wait_until(lambda: len(gate.started) == 2)
    assert await agent_of(service, queued) == "dev-alpha"
    await Commands(service.config, service.store).set_enabled("dev-alpha", False)  # as the CLI does
    # Another process (a CLI, a backup) holds the lock past the busy timeout (5 s).
    holder = hold_write_lock(service.config.data_dir / "claude-hooks.db", 5.5)
    await service.pool.sync_agents()  # moving the queued task fails: the database is locked
    holder.join()
    await wait_until(lambda: queue_is(service.store, "dev-bravo", [queued]), 10)
    assert await agent_of(service, queued) == "dev-bravo"
