"""Work stealing end to end in a Service: an idle instance takes work queued behind a long run
on its peer with `rebalance = "steal"`, and leaves it there with the default `"none"`."""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

from claude_hooks.service.events import Event, Subscription
from claude_hooks.service.notifier import task_comment
from claude_hooks.service.runtime import Service
from claude_hooks.web.metrics import families
from tests.conftest import ServiceFactory
from tests.service.test_pool import agent_of, request
from tests.support import GateRunner, instance_idle, wait_until
from tests.web.test_dashboard_api import AUTH, serve

COMMAND = [sys.executable, "-c", "import sys; sys.stdin.read()"]


async def two_devs(
    start_service: ServiceFactory, gate: GateRunner, database_url: str, rebalance: str
) -> Service:
    service: Service = await start_service(
        runner=gate,
        agents=[{"name": "dev-a", "type": "dev"}, {"name": "dev-b", "type": "dev"}],
        server={"database_url": database_url},
        types={
            "dev": {
                "runner": "command",
                "command": COMMAND,
                "workdir": "none",
                "rebalance": rebalance,
            }
        },
    )
    return service


async def long_task_with_a_queue_behind_it(
    service: Service, gate: GateRunner
) -> tuple[str, str, str]:
    """dev-a runs a long task and has one queued behind it; dev-b runs a short one.
    The long, short and waiting tasks' ids (the two runs may start in either order)."""
    long = await service.pool.dispatch_by_type("dev", request(1))
    short = await service.pool.dispatch_by_type("dev", request(2))
    await wait_until(lambda: sorted(gate.started) == sorted([long, short]))
    waiting = await service.pool.dispatch_by_type("dev", request(3))
    assert await agent_of(service, long) == "dev-a" and await agent_of(service, short) == "dev-b"
    assert await agent_of(service, waiting) == "dev-a"  # both busy: the cursor's turn
    return long, short, waiting


async def test_an_idle_instance_steals_the_task_queued_behind_a_long_run(
    start_service: ServiceFactory, gate: GateRunner, database_url: str
) -> None:
    service = await two_devs(start_service, gate, database_url, "steal")
    events = service.pool.bus.subscribe()
    long, short, waiting = await long_task_with_a_queue_behind_it(service, gate)
    freed = time.monotonic()
    gate.release(short)  # dev-b's short task ends; dev-a's long one goes on
    await wait_until(lambda: waiting in gate.started, timeout=1.0)
    took = time.monotonic() - freed
    assert took < 1.0
    task = await service.store.get_task(waiting)
    assert task is not None and task.agent == "dev-b"
    async with serve(service) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        shown = (await client.get(f"/api/tasks/{waiting}")).json()
        page = await client.get(f"/tasks/{waiting}")
    assert shown["moved_from"] == "dev-a" and shown["moved_at"] is not None
    assert page.status_code == 200 and '<dd class="moved">from dev-a\'s queue' in page.text
    moved = await next_event(events, "task.moved")
    assert moved.task is not None and moved.task.id == waiting
    assert moved.data == {"from": "dev-a"}
    comment = task_comment(moved)
    assert comment is not None and "from the queue of `dev-a` to `dev-b`" in comment
    assert long not in gate.cancelled
    assert await beside_idle(service) == 0
    gate.release_all()


async def test_without_steal_the_task_waits_behind_the_long_run(
    start_service: ServiceFactory, gate: GateRunner, database_url: str
) -> None:
    service = await two_devs(start_service, gate, database_url, "none")
    long, short, waiting = await long_task_with_a_queue_behind_it(service, gate)
    gate.release(short)
    await wait_until(lambda: instance_idle(service.store, "dev-b"), timeout=15)
    # The window in which `steal` takes it (see the test above); a negative needs a span.
    await asyncio.sleep(1.0)
    assert waiting not in gate.started
    assert await agent_of(service, waiting) == "dev-a"
    assert await beside_idle(service) == 1  # what `steal` would have taken
    gate.release(long)
    await wait_until(lambda: waiting in gate.started)


async def next_event(subscription: Subscription, kind: str) -> Event:
    while True:
        event = await asyncio.wait_for(subscription.get(), 5.0)
        if event.kind == kind:
            return event


async def beside_idle(service: Service) -> float:
    """The gauge of tasks waiting while an instance of their type idles, for type dev."""
    for family in await families(service):
        if family.name == "claude_hooks_waiting_beside_idle":
            return next(s.value for s in family.samples if s.labels == {"type": "dev"})
    raise AssertionError("no claude_hooks_waiting_beside_idle gauge")
