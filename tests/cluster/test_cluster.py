"""Real `serve` processes on one PostgreSQL database: the choices one node would make, the
nodes and who holds what, adoption after `kill -9`, a node rejoining, SQLite's one node.

For the choices, the instances are pinned to a node that is not running, so no node holds
them: no task starts and every queue only grows. The choice of each delivery then depends on
nothing but the deliveries committed before it, and the tests replay `scheduler.choose` over
them in commit order (`seq`). Elsewhere instances spread over the live nodes (`node_share`),
so the tests read who holds what from the database; the agent script records the node that
ran it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from claude_hooks.core.scheduler import Candidate, choose
from tests.serve_nodes import (
    AGENTS,
    Cluster,
    alive,
    assigned,
    cluster,
    deliver,
    holders,
    listed,
    post_all,
    queues,
    run_one_each,
    runs_on,
    tasks_run_on,
    two_nodes,
    wait_for,
)


@pytest.fixture
def waiting(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    with cluster(tmp_path, pg_url, pinned_away=True) as running:
        running.start("node-1", "node-2")
        yield running


def single_node_choices(count: int, agents: Sequence[str] = AGENTS) -> list[str]:
    """The instances one node picks for `count` deliveries of distinct issues, none running."""
    names = sorted(agents)
    queued = dict.fromkeys(names, 0)
    cursor, picked = 0, []
    for _ in range(count):
        choice = choose([Candidate(n, False, queued[n]) for n in names], cursor)
        cursor = choice.cursor
        picked.append(names[choice.index])
        queued[names[choice.index]] += 1
    return picked


def agents_in_commit_order(running: Cluster) -> list[str]:
    return [agent for (agent,) in running.query("SELECT agent FROM tasks ORDER BY seq")]


def test_deliveries_sent_to_either_node_go_round_robin_as_on_one_node(waiting: Cluster) -> None:
    node_1, node_2 = waiting.nodes
    landed = []
    for number in range(1, 10):
        node = node_1 if number % 2 else node_2
        with node.client() as client:
            body, headers = assigned(number, f"rr-{number}")
            answer = client.post("/webhook", content=body, headers=headers)
        assert answer.status_code == 202, answer.text
        landed.append(answer.json()["tasks"][0]["agent"])
    expected = single_node_choices(9)
    assert expected == ["dev-a", "dev-b", "dev-c"] * 3
    assert landed == expected
    assert agents_in_commit_order(waiting) == expected
    assert waiting.runs() == []  # the premise: nothing started


def test_200_concurrent_deliveries_over_two_nodes(waiting: Cluster) -> None:
    node_1, node_2 = waiting.nodes
    sends = []
    for number in range(1, 201):
        body, headers = assigned(number, f"burst-{number}")
        sends.append((node_1 if number % 2 else node_2, body, headers))
    answers = asyncio.run(post_all(sends))
    assert [a.status_code for a in answers] == [202] * 200, [a.text for a in answers][:5]
    named = [task["id"] for a in answers for task in a.json()["tasks"]]
    assert len(named) == len(set(named)) == 200
    rows = waiting.query("SELECT id, delivery_id FROM tasks")
    assert sorted(task_id for task_id, _ in rows) == sorted(named)
    assert Counter(delivery for _, delivery in rows) == {f"burst-{n}": 1 for n in range(1, 201)}
    (deliveries,) = waiting.query("SELECT count(*) FROM deliveries WHERE outcome = 'queued'")
    assert deliveries == (200,)
    # Committed one at a time under the type's lock: exactly one node's choices, in that order,
    # so after every commit the queues differ by at most one task.
    order = agents_in_commit_order(waiting)
    assert order == single_node_choices(200)
    tally: Counter[str] = Counter()
    for agent in order:
        tally[agent] += 1
        lengths = [tally[name] for name in AGENTS]
        assert max(lengths) - min(lengths) <= 1
    assert waiting.runs() == []


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
    # Each interrupted task keeps its first run, lost with node-1, and shows it on its page.
    lost_task = sorted(interrupted)[0]
    with node_2.client() as client:
        runs = client.get(f"/api/tasks/{lost_task}").json()["runs"]
        page = client.get(f"/tasks/{lost_task}").text
        part = client.get(f"/api/tasks/{lost_task}/log", params={"run": 1})
    assert [(r["run"], r["node"], r["outcome"], r["error"]) for r in runs] == [
        (1, "node-1", "lost", "its node died"),
        (2, "node-2", None, None),
    ]
    assert 'class="badge s-lost">lost</span> with its node node-1' in page
    # That run's part of the log is on node-1, which is gone: said, not hidden.
    assert part.status_code == 502 and "is on node node-1" in part.json()["error"]


def test_a_node_restarted_after_kill_9_rejoins_and_a_second_of_its_name_is_refused(
    tmp_path: Path, pg_url: str
) -> None:
    # A longer lease than the other tests': the second node of the name must find node-1's
    # lease live, and under the full suite's load a 2 s lease once lapsed between two beats.
    with cluster(tmp_path, pg_url, lease_seconds=5.0) as running:
        _restarted_rejoins_and_a_twin_is_refused(running)


def _restarted_rejoins_and_a_twin_is_refused(running: Cluster) -> None:
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
