"""Nodes: several real `serve` processes on one PostgreSQL database hold the instances, carry
on a dead node's work, and take commands for work another node runs.

Instances spread over the live nodes (`node_share`), so each test reads who holds what from
the database; the agent script records the node that ran it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import AGENTS, Cluster, Node, alive, assigned, cluster, post_all, wait_for

NODE_KEYS = {
    "name",
    "state",
    "url",
    "host",
    "pid",
    "capacity",
    "started_at",
    "heartbeat_at",
    "instances",
}


@pytest.fixture
def running(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    with cluster(tmp_path, pg_url) as nodes:
        yield nodes


def holders(nodes: Cluster) -> dict[str, str | None]:
    return dict(nodes.query("SELECT name, node FROM agents"))  # type: ignore[arg-type]


def spread(nodes: Cluster, *names: str) -> dict[str, str | None]:
    """Wait until every instance is held, and every one of `names` holds one; who holds what."""

    def settled() -> bool:
        held = holders(nodes)
        return None not in held.values() and set(held.values()) == set(names)

    wait_for(settled, 10, f"the instances spread over {', '.join(names)}")
    return holders(nodes)


def two_nodes(nodes: Cluster) -> tuple[Node, Node, dict[str, str | None]]:
    node_1, node_2 = nodes.start("node-1", "node-2")
    return node_1, node_2, spread(nodes, "node-1", "node-2")


def listed(node: Node, *command: str) -> list[dict[str, Any]]:
    done = node.cli(*command, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def deliver(node: Node, numbers: range) -> list[str]:
    """Deliveries of issues `numbers` to `node`, one after the other; their task ids."""
    ids = []
    with node.client() as client:
        for number in numbers:
            body, headers = assigned(number, f"issue-{number}")
            answer = client.post("/webhook", content=body, headers=headers)
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["tasks"][0]["id"])
    return ids


def run_one_each(nodes: Cluster, held: dict[str, str | None], first: int = 1) -> None:
    """Deliveries of issues `first`.. that start a task on each idle instance, each sent to
    the node holding the instance it lands on (all idle: they go in name order), so none waits
    for a wake-up from another node."""
    by_name = {node.name: node for node in nodes.nodes}
    for number, agent in enumerate(AGENTS, start=first):
        with by_name[str(held[agent])].client() as client:
            body, headers = assigned(number, f"issue-{number}")
            answer = client.post("/webhook", content=body, headers=headers)
        assert answer.status_code == 202, answer.text
        assert answer.json()["tasks"][0]["agent"] == agent
    wait_for(lambda: len(nodes.runs()) == len(AGENTS), 10, "a task runs on every instance")


def runs_on(nodes: Cluster, node: str) -> list[tuple[str, int]]:
    """(task id, agent pid) of the runs `node` started."""
    return [(task_id, pid) for task_id, pid, where in nodes.runs() if where == node]


def tasks_run_on(nodes: Cluster, node: str) -> set[str]:
    return {task_id for task_id, _pid in runs_on(nodes, node)}


def queues(node: Node) -> dict[str, list[tuple[str, str, int]]]:
    """Per instance, (task id, state, attempts): the running task first, then the queue."""
    with node.client() as client:
        tasks = client.get("/api/tasks", params={"limit": 500}).json()["tasks"]
    grouped: dict[str, list[tuple[str, str, int]]] = {}
    order = sorted(tasks, key=lambda t: (t["state"] != "running", t["queue_position"] or 0))
    for task in order:
        if task["state"] in ("running", "queued"):
            grouped.setdefault(task["agent"], []).append(
                (task["id"], task["state"], task["attempts"])
            )
    return grouped


def test_nodes_list_and_agents_list_show_both_nodes_and_who_holds_what(running: Cluster) -> None:
    node_1, node_2, held = two_nodes(running)
    rows = {row["name"]: row for row in listed(node_2, "nodes", "list")}
    assert set(rows) == {"node-1", "node-2"}
    for node in (node_1, node_2):
        row = rows[node.name]
        assert set(row) >= NODE_KEYS
        assert row["state"] == "live"
        assert row["url"] == node.url
        assert node.process is not None and row["pid"] == node.process.pid
        assert row["heartbeat_at"] >= row["started_at"]
        assert sorted(row["instances"]) == sorted(a for a, n in held.items() if n == node.name)
    assert sorted(rows["node-1"]["instances"] + rows["node-2"]["instances"]) == sorted(AGENTS)
    agents = {row["name"]: row for row in listed(node_1, "agents", "list")}
    assert {name: row["node"] for name, row in agents.items()} == held
    assert {row["pinned_node"] for row in agents.values()} == {None}


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


def test_kill_9_of_a_node_hands_its_instances_and_tasks_to_the_other(running: Cluster) -> None:
    node_1, node_2, held = two_nodes(running)
    run_one_each(running, held)
    deliver(node_2, range(4, 8))  # four wait behind the running ones
    before = queues(node_2)
    assert sorted(before) == sorted(AGENTS)
    assert all(queue[0][1:] == ("running", 1) for queue in before.values())
    interrupted = dict(runs_on(running, "node-1"))
    assert interrupted, held  # node-1 holds an instance, so it runs a task
    assert {task for task, _pid in runs_on(running, "node-2")}.isdisjoint(interrupted)

    node_1.kill()
    killed = time.monotonic()
    # No agent of the dead node goes on: an adopted task must never run twice at once.
    wait_for(
        lambda: not any(alive(pid) for pid in interrupted.values()),
        3,
        "the dead node's agents are gone",
    )
    wait_for(
        lambda: tasks_run_on(running, "node-2") >= set(interrupted),
        running.lease_seconds + 5,
        "node-2 runs the interrupted tasks",
    )
    assert time.monotonic() - killed < running.lease_seconds + 5
    assert holders(running) == dict.fromkeys(AGENTS, "node-2")
    after = queues(node_2)
    for agent, queue in before.items():
        # The same order; an interrupted head runs again with its attempt counted.
        assert [task_id for task_id, _s, _a in after[agent]] == [t for t, _s, _a in queue]
        attempts = 2 if queue[0][0] in interrupted else 1
        assert after[agent][0][1:] == ("running", attempts)
        assert [state for _t, state, _a in after[agent][1:]] == ["queued"] * (len(queue) - 1)
    rows = {row["name"]: row for row in listed(node_2, "nodes", "list")}
    assert rows["node-1"]["state"] == "dead"
    assert rows["node-1"]["instances"] == []
    assert sorted(rows["node-2"]["instances"]) == sorted(AGENTS)


def test_a_node_restarted_after_kill_9_rejoins_and_a_second_of_its_name_is_refused(
    running: Cluster,
) -> None:
    (node_1,) = running.start("node-1")
    deliver(node_1, range(1, 2))
    wait_for(lambda: len(runs_on(running, "node-1")) == 1, 10, "a task runs on node-1")
    ((task_id, old_agent),) = runs_on(running, "node-1")
    node_1.kill()
    # At once, while its lease has not yet run out: the same node (same data dir) rejoins,
    # stops what its previous life left running and runs that task again.
    node_1.start()
    wait_for(lambda: not alive(old_agent), 5, "the previous life's agent is stopped")
    wait_for(
        lambda: any(alive(pid) for _task, pid in runs_on(running, "node-1")),
        running.lease_seconds + 5,
        "the interrupted task runs again",
    )
    with node_1.client() as client:
        task = client.get(f"/api/tasks/{task_id}").json()
    assert (task["state"], task["attempts"]) == ("running", 2)
    ((row,),) = [[r for r in listed(node_1, "nodes", "list") if r["name"] == "node-1"]]
    assert node_1.process is not None
    assert (row["state"], row["pid"]) == ("live", node_1.process.pid)

    twin = running.add("node-1")
    process = twin.launch()
    assert process.wait(timeout=20) != 0
    assert "server.node" in twin.log
    assert node_1.process.poll() is None
    assert [r["state"] for r in listed(node_1, "nodes", "list") if r["name"] == "node-1"] == [
        "live"
    ]


def test_a_second_node_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with cluster(tmp_path, url) as nodes:
        first = nodes.add("node-1", database_url=url)
        first.start()
        second = nodes.add("node-2", database_url=url)
        process = second.launch()
        assert process.wait(timeout=20) != 0
        assert "sqlite" in second.log.lower()
        assert "postgresql" in second.log.lower()  # what to use instead
        with first.client() as client:
            assert client.get("/healthz").status_code == 200


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
