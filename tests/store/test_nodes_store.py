"""Nodes in the store, over every backend: joining, leases, fenced claims, rescue, the lead."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from claude_hooks.core.domain import TaskKind, TaskState
from claude_hooks.errors import ConflictError
from claude_hooks.store.base import Outcome
from claude_hooks.store.decisions import Cause
from claude_hooks.store.nodes import NodeInfo, NodeLoad
from claude_hooks.store.runs import RunOutcome
from claude_hooks.store.schema import agents as agents_table
from claude_hooks.store.sql import SqlStore
from tests.store.test_store_contract import NOW, agents, new_task
from tests.support import queue_of

LEASE = 3.0


def node(name: str, pid: int = 0, host: str = "elsewhere", capacity: int = 0) -> NodeInfo:
    return NodeInfo(
        name=name,
        incarnation=f"{name}-{pid}",
        host=host,
        pid=pid or os.getpid(),
        url=f"http://{name}:8080",
        capacity=capacity,
        lease_seconds=LEASE,
    )


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(database_url)
    yield opened
    await opened.close()


async def test_a_live_namesake_is_refused_and_a_crashed_one_on_this_host_replaced(
    database_url: str, store: SqlStore
) -> None:
    await store.nodes.join(node("one"), NOW)
    refusal = (
        r"node 'one' .* is live on this SQLite database, which serves one node"
        if database_url.startswith("sqlite")
        else r"a live node named 'one'.*server\.node"
    )
    with pytest.raises(ConflictError, match=refusal):
        await store.nodes.join(node("one", pid=12345678), NOW + 1)
    # After its lease, a namesake is dead and may join again from anywhere.
    await store.nodes.join(node("one", pid=12345678), NOW + LEASE + 2)
    # The same name on this host, after the process that had it is gone: a restart.
    await store.nodes.leave(node("one", pid=12345678), NOW + LEASE + 2)
    dead_pid = 2**22 + 7  # above pid_max's default: no such process
    await store.nodes.join(node("two", pid=dead_pid, host=socket.gethostname()), NOW)
    await store.nodes.join(node("two", host=socket.gethostname()), NOW + 1)
    views = {v.name: v for v in await store.nodes.list_nodes(NOW + 1)}
    assert views["two"].pid == os.getpid() and views["two"].state == "live"


async def test_sqlite_serves_one_node(database_url: str, store: SqlStore) -> None:
    await store.nodes.join(node("one"), NOW)
    if not database_url.startswith("sqlite"):
        await store.nodes.join(node("two"), NOW)
        return
    with pytest.raises(ConflictError, match="SQLite database, which serves one node"):
        await store.nodes.join(node("two"), NOW)
    await store.nodes.leave(node("one"), NOW + 1)  # once it stopped, another may start
    await store.nodes.join(node("two"), NOW + 2)


async def test_heartbeats_keep_a_node_live_and_a_stop_lets_everything_go(store: SqlStore) -> None:
    one = node("one")
    await agents(store, "dev-a", "dev-b")
    await store.nodes.join(one, NOW)
    assert (await store.nodes.rebalance(one, NOW)).take == ("dev-a", "dev-b")
    assert await store.nodes.heartbeat(one, NOW + 2)
    assert [v.state for v in await store.nodes.list_nodes(NOW + 4)] == ["live"]
    assert [v.state for v in await store.nodes.list_nodes(NOW + 6)] == ["dead"]
    await store.nodes.leave(one, NOW + 4)
    views = await store.nodes.list_nodes(NOW + 4)
    assert views[0].state == "stopped" and views[0].instances == ()
    assert all(a.node is None for a in await store.list_agents())
    assert not await store.nodes.heartbeat(one, NOW + 5)


async def test_only_the_holder_claims_and_a_rescued_task_refuses_the_dead_nodes_writes(
    pg_url: str,
) -> None:
    """Between nodes, so on PostgreSQL only (SQLite serves one node)."""
    store = await SqlStore.open(pg_url)
    try:
        await _rescue(store)
    finally:
        await store.close()


async def _rescue(store: SqlStore) -> None:
    one, two = node("one"), node("two")
    await agents(store, "dev-a")
    await store.nodes.join(one, NOW)
    await store.nodes.rebalance(one, NOW)
    await store.nodes.join(two, NOW)
    first = (await store.dispatch(new_task(1))).task
    second = (await store.dispatch(new_task(2))).task
    store.node = "two"
    assert (await store.claim_next("dev-a", NOW)).task is None  # two does not hold dev-a
    store.node = "one"
    claimed = (await store.claim_next("dev-a", NOW)).task
    assert claimed is not None and claimed.id == first.id
    running = await store.get_task(first.id)
    assert running is not None and running.state is TaskState.RUNNING
    # one goes silent; two leads and rescues.
    assert await store.nodes.heartbeat(two, NOW + LEASE + 1)
    assert await store.nodes.lead("cluster", two, NOW + LEASE + 1)
    rescued = await store.nodes.rescue(3, NOW + LEASE + 1)
    assert [(r.id, r.state) for r in rescued] == [(first.id, TaskState.QUEUED)]
    requeued = await store.get_task(first.id)
    assert requeued is not None and requeued.attempts == 1  # the lost run counts
    assert (await store.nodes.rebalance(two, NOW + LEASE + 1)).take == ("dev-a",)
    # The dead node's late end of the run changes nothing.
    finished = await store.finish_task(first.id, Outcome(TaskState.SUCCEEDED), NOW + LEASE + 2)
    assert not finished
    assert not await store.nodes.heartbeat(one, NOW + LEASE + 2)  # it learns it is dead
    store.node = "two"
    claimed = (await store.claim_next("dev-a", NOW + LEASE + 2)).task
    assert claimed is not None and claimed.id == first.id  # order kept: head first
    assert claimed.attempts == 2
    lost, again = await store.runs.of_task(first.id)
    assert (lost.node, lost.outcome, lost.error) == ("one", RunOutcome.LOST, "its node died")
    assert lost.finished_at == NOW + LEASE + 1
    assert (again.run, again.node, again.outcome) == (2, "two", None)
    assert await queue_of(store, "dev-a") == [second.id]


async def test_one_node_leads_until_its_lease_runs_out(store: SqlStore) -> None:
    one, two = node("one"), node("two")
    assert await store.nodes.lead("cluster", one, NOW)
    assert not await store.nodes.lead("cluster", two, NOW + 1)
    assert await store.nodes.lead("cluster", one, NOW + 2)  # renewed
    assert not await store.nodes.lead("cluster", two, NOW + 2 + LEASE - 0.5)
    assert await store.nodes.lead("cluster", two, NOW + 2 + LEASE + 0.5)
    assert not await store.nodes.lead("cluster", one, NOW + 2 + LEASE + 1)
    await store.nodes.resign("cluster", two)
    assert await store.nodes.lead("cluster", one, NOW + 2 + LEASE + 1)


async def test_a_node_never_holds_an_instance_of_a_type_it_does_not_run(pg_url: str) -> None:
    store = await SqlStore.open(pg_url)
    try:
        await agents(store, "dev-a")
        await agents(store, "rev-a", agent_type="reviewer")
        devs = replace(node("devs"), types=frozenset({"dev"}))
        await store.nodes.join(devs, NOW)
        assert (await store.nodes.rebalance(devs, NOW)).take == ("dev-a",)
        everything = node("all")
        await store.nodes.join(everything, NOW)
        assert (await store.nodes.rebalance(everything, NOW)).take == ("rev-a",)
    finally:
        await store.close()


async def test_each_node_prunes_only_the_logs_on_its_own_disk(pg_url: str) -> None:
    store = await SqlStore.open(pg_url)
    try:
        await agents(store, "dev-a", "dev-b")
        with store.engine.begin() as conn:  # one holds dev-a, two holds dev-b
            for name, holder in (("dev-a", "one"), ("dev-b", "two")):
                conn.execute(
                    agents_table.update().where(agents_table.c.name == name).values(node=holder)
                )
        ran = {}
        for number in (1, 2):
            task = (await store.dispatch(new_task(number))).task
            store.node = "one" if task.agent == "dev-a" else "two"
            claimed = (await store.claim_next(task.agent, NOW)).task
            assert claimed is not None and claimed.id == task.id
            assert await store.finish_task(task.id, Outcome(TaskState.SUCCEEDED), NOW + 1)
            ran[store.node] = task.id
        never = (await store.dispatch(new_task(3))).task  # cancelled before any node ran it
        await store.cancel_tasks([never.id], Cause("a test", None, NOW + 2))
        later = NOW + 10
        assert await store.retention.unpruned_logs(later, 10, "one") == [ran["one"], never.id]
        assert await store.retention.unpruned_logs(later, 10, "two") == [ran["two"], never.id]
    finally:
        await store.close()


async def test_a_nodes_load_and_work_first_when_it_has_room_for_one(store: SqlStore) -> None:
    one = node("one", capacity=1)
    await agents(store, "dev-a", "dev-b")
    await store.nodes.join(one, NOW)
    assert await store.nodes.load("one") == NodeLoad(running=0, queued=0)
    # Placed on dev-a, then dev-b; dev-a's is cancelled: dev-b has work, dev-a none.
    first = (await store.dispatch(new_task(1))).task
    await store.dispatch(new_task(2))
    await store.cancel_tasks([first.id], Cause("a test", None, NOW))
    assert (await store.nodes.rebalance(one, NOW)).take == ("dev-b",)  # its work comes first
    assert await store.nodes.load("one") == NodeLoad(running=0, queued=1)
    store.node = "one"
    assert (await store.claim_next("dev-b", NOW)).task is not None
    await store.dispatch(new_task(2, kind=TaskKind.ANSWER_MENTION))  # behind it, on dev-b
    assert await store.nodes.load("one") == NodeLoad(running=1, queued=1)
    assert await store.nodes.load("two") == NodeLoad(running=0, queued=0)
