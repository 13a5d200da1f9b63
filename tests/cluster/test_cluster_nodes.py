"""Nodes, waiting for what is still being built: a delivery or a cancel that reaches a node
not holding the instance acts on the node that holds it within a second (wake-ups and
commands across nodes), and one delivery id sent to two nodes at once makes one task (the
delivery recorded in the transaction of its tasks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve_nodes import (
    AGENTS,
    Cluster,
    alive,
    assigned,
    cluster,
    deliver,
    post_all,
    run_one_each,
    runs_on,
    tasks_run_on,
    two_nodes,
    wait_for,
)


@pytest.fixture
def running(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    with cluster(tmp_path, pg_url) as nodes:
        yield nodes


def test_a_delivery_to_one_node_starts_at_once_on_the_node_holding_the_instance(
    running: Cluster,
) -> None:
    node_1, node_2, held = two_nodes(running)
    # All idle: the first delivery goes to the first instance by name.
    holder = held[AGENTS[0]]
    other = node_2 if holder == "node-1" else node_1
    sent = time.monotonic()
    (task_id,) = deliver(other, range(1, 2))
    wait_for(lambda: task_id in tasks_run_on(running, str(holder)), 5, f"it runs on {holder}")
    # Woken through the database's notifications, not a poll of the queue.
    assert time.monotonic() - sent < 1.0
    assert runs_on(running, other.name) == []


def test_cancel_sent_to_a_node_that_does_not_run_the_task_stops_it(running: Cluster) -> None:
    node_1, node_2, held = two_nodes(running)
    run_one_each(running, held)
    ran = {where: (task_id, pid) for task_id, pid, where in running.runs()}  # a run per node
    # Node 2 cancels what node 1 runs by its task id, node 1 what node 2 runs by its instance.
    for where, elsewhere, by_agent in (("node-1", node_2, False), ("node-2", node_1, True)):
        task_id, pid = ran[where]
        with elsewhere.client() as client:
            agent = client.get(f"/api/tasks/{task_id}").json()["agent"]
            asked = time.monotonic()
            if by_agent:
                answer = client.post("/cancel", params={"agent": agent})
            else:
                answer = client.post(f"/api/tasks/{task_id}/cancel")
            assert answer.status_code == 200, answer.text
            wait_for(lambda pid=pid: not alive(pid), 1.5, f"the agent of {task_id} is stopped")
            assert time.monotonic() - asked < 1.5
            state = client.get(f"/api/tasks/{task_id}").json()["state"]
            wait_for(
                lambda t=task_id, c=client: c.get(f"/api/tasks/{t}").json()["state"] == "cancelled",
                1.5,
                f"{task_id} is cancelled (was {state})",
            )


@pytest.fixture
def waiting(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    with cluster(tmp_path, pg_url, pinned_away=True) as nodes:
        nodes.start("node-1", "node-2")
        yield nodes


def test_one_delivery_sent_to_both_nodes_at_once_makes_one_task(waiting: Cluster) -> None:
    node_1, node_2 = waiting.nodes
    for attempt in range(10):
        number, delivery = 100 + attempt, f"twice-{attempt}"
        body, headers = assigned(number, delivery)
        answers = asyncio.run(post_all([(node_1, body, headers), (node_2, body, headers)]))
        bodies = [a.json() for a in answers]
        tasks = waiting.query("SELECT id FROM tasks WHERE number = %s", number)
        assert len(tasks) == 1, bodies
        ((task_id,),) = tasks
        # One answer queued the task; the other says the delivery was seen, or names only
        # that same task (merged into it): never a task that does not exist, never a second.
        created = [b for b in bodies if b["status"] == "queued" and not b["tasks"][0]["merged"]]
        assert len(created) == 1, bodies
        assert created[0]["tasks"][0]["id"] == task_id
        (other,) = [b for b in bodies if b is not created[0]]
        assert other["status"] in {"duplicate", "queued"}, bodies
        assert [t["id"] for t in other.get("tasks", [])] in ([], [task_id]), bodies
        assert sorted(a.status_code for a in answers) in ([200, 202], [202, 202]), bodies
        stored = waiting.query("SELECT count(*) FROM deliveries WHERE id = %s", delivery)
        assert stored == [(1,)]
