"""The pool's dispatch and a restart, end to end in a Service, over SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from claude_hooks.core.domain import TaskKind, TaskState
from claude_hooks.service.runtime import Service
from tests.conftest import ServiceFactory
from tests.service.test_pool import agent_of, request
from tests.support import GateRunner, all_idle, make_config, queue_of, wait_until


async def devs_on(
    start_service: ServiceFactory, gate: GateRunner, database_url: str, *names: str
) -> Service:
    service: Service = await start_service(
        runner=gate,
        agents=[{"name": n, "type": "dev"} for n in names],
        server={"database_url": database_url},
    )
    return service


async def test_idle_round_robin_then_shortest_queue_then_session_key(
    start_service: ServiceFactory, gate: GateRunner, database_url: str
) -> None:
    service = await devs_on(start_service, gate, database_url, "dev-b", "dev-a", "dev-c")
    placed = []
    for number in range(1, 4):
        task_id = await service.pool.dispatch_by_type("dev", request(number))
        placed.append(await agent_of(service, task_id))
        gate.release(task_id)
        await wait_until(lambda: all_idle(service.store))
    assert placed == ["dev-a", "dev-b", "dev-c"]
    running = [await service.pool.dispatch_by_type("dev", request(n)) for n in range(4, 7)]
    await wait_until(lambda: sorted(gate.started[3:]) == sorted(running))
    queued = await service.pool.dispatch_by_type("dev", request(7))
    assert await agent_of(service, queued) == "dev-a"  # all busy: the cursor breaks the tie
    follow_up = await service.pool.dispatch_by_type("dev", request(6, kind=TaskKind.FIX_CI))
    assert await agent_of(service, follow_up) == await agent_of(service, running[2])
    gate.release(running[0])
    await wait_until(lambda: queued in gate.started)
    task = await service.store.get_task(running[0])
    assert task is not None and task.state is TaskState.SUCCEEDED


async def test_a_restart_keeps_every_queue_in_order(
    tmp_path: Path, gate: GateRunner, database_url: str
) -> None:
    config = make_config(
        tmp_path,
        agents=[{"name": "dev-a", "type": "dev"}],
        server={"database_url": database_url},
    )
    first = await Service.open(config, lambda _type: gate)
    await first.start()
    ids = [await first.pool.dispatch_by_type("dev", request(n)) for n in range(1, 4)]
    await wait_until(lambda: gate.started == ids[:1])
    await first.stop()  # a clean stop hands the running task back to the head of its queue
    second_gate = GateRunner()
    second = await Service.open(config, lambda _type: second_gate)
    await second.start()
    try:
        await wait_until(lambda: second_gate.started == ids[:1])
        assert await queue_of(second.store, "dev-a") == ids[1:]
        second_gate.release(ids[0])
        await wait_until(lambda: second_gate.started == ids[:2])
        task = await second.store.get_task(ids[0])
        assert task is not None and task.state is TaskState.SUCCEEDED and task.attempts == 1
    finally:
        await second.stop()
