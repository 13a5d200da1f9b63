"""The scaler's query (`store/scaler.py`) on the real PostgreSQL: the nodes a recorded workload
needs, as the README's example says, and each of its rules."""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from claude_hooks.core.domain import TaskKind, TaskState
from claude_hooks.store.nodes import NodeInfo
from claude_hooks.store.scaler import NODES_NEEDED
from claude_hooks.store.schema import tasks
from claude_hooks.store.sql import SqlStore
from tests.store.test_store_contract import NOW, new_task

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def pod(name: str, capacity: int) -> NodeInfo:
    return NodeInfo(
        name=name,
        incarnation=f"{name}-1",
        host=name,
        pid=os.getpid(),
        url=f"http://{name}:8080",
        capacity=capacity,
        lease_seconds=30.0,
    )


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(pg_url)
    yield opened
    await opened.close()


@pytest.fixture
def engine(pg_url: str) -> AsyncIterator[sa.Engine]:
    made = sa.create_engine(make_url(pg_url).set(drivername="postgresql+psycopg"))
    yield made
    made.dispose()


def nodes_needed(engine: sa.Engine) -> int:
    """What KEDA's scaler reads: the query's one value."""
    with engine.connect() as conn:
        value = conn.execute(sa.text(NODES_NEEDED)).scalar_one()
    assert isinstance(value, int)
    return value


def readme_answer() -> int:
    start = README.index("### Autoscaled nodes (Kubernetes + KEDA)")
    found = re.search(r"the query answers \*\*(\d+)\*\*", README[start:])
    assert found, "the README's example gives the query's answer"
    return int(found.group(1))


async def test_the_readme_workload_needs_the_nodes_the_readme_says(
    store: SqlStore, engine: sa.Engine
) -> None:
    # The README's example: capacity 4 (deploy/kubernetes/config.yaml), dev-1..dev-6 and
    # reviewer-1..reviewer-2; 9 issues queued or running for dev (one of them with a second
    # task), one pull request under review.
    dev = [f"dev-{n}" for n in range(1, 7)]
    await store.seed_agents([(name, "dev") for name in dev], NOW)
    await store.seed_agents([("reviewer-1", "reviewer"), ("reviewer-2", "reviewer")], NOW)
    pod_a = pod("claude-hooks-5d9c7-a1b2c", capacity=4)
    await store.nodes.join(pod_a, time.time())
    assert nodes_needed(engine) == 0  # no work: nothing beyond the minimum
    for number in range(1, 10):
        await store.dispatch(new_task(number))
    await store.dispatch(new_task(1, kind=TaskKind.ANSWER_MENTION))  # issue 1 again
    await store.dispatch(new_task(20, "reviewer", kind=TaskKind.REVIEW_PR))
    held = await store.nodes.rebalance(pod_a, time.time())
    store.node = pod_a.name
    claimed = (await store.claim_next(held.take[0], time.time())).task
    assert claimed is not None  # one runs, the others wait
    # dev: least(6 instances, 9 sessions) = 6; reviewer: least(2, 1) = 1; 7 at 4 a node.
    assert nodes_needed(engine) == readme_answer() == 2

    # The capacity is the live nodes': a stopped one's does not count.
    await store.nodes.join(pod("claude-hooks-5d9c7-d3e4f", capacity=1), time.time())
    await store.nodes.leave(pod_a, time.time())
    assert nodes_needed(engine) == 7
    # A disabled instance runs nothing; an instance pinned to a node runs on that node.
    await store.set_agent_enabled("dev-6", False)
    await store.add_agent("dev-vm", "dev", NOW, pinned_node="build-vm")
    assert nodes_needed(engine) == 6
    # A paused session's tasks wait for no instance.
    with engine.begin() as conn:
        conn.execute(
            tasks.update().where(tasks.c.type == "reviewer").values(state=TaskState.HELD.value)
        )
    assert nodes_needed(engine) == 5
    # Fewer sessions than instances: the sessions count.
    with engine.begin() as conn:
        conn.execute(
            tasks.update()
            .where(tasks.c.number > 3, tasks.c.state == TaskState.QUEUED.value)
            .values(state=TaskState.CANCELLED.value, finished_at=NOW)
        )
    assert nodes_needed(engine) == 3


async def test_without_a_capacity_one_node_holds_everything(
    store: SqlStore, engine: sa.Engine
) -> None:
    await store.seed_agents([("dev-1", "dev"), ("dev-2", "dev")], NOW)
    await store.dispatch(new_task(1))
    await store.dispatch(new_task(2))
    assert nodes_needed(engine) == 1  # no live node yet: no capacity known
    await store.nodes.join(pod("claude-hooks-5d9c7-a1b2c", capacity=0), time.time())
    assert nodes_needed(engine) == 1  # capacity 0: no limit
