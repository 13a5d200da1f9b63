"""Two real `serve` processes on one PostgreSQL database make the choices one would make.

The instances are pinned to a node that is not running, so no node holds them: no task starts
and every queue only grows. The choice of each delivery then depends on nothing but the
deliveries committed before it, and the tests replay `scheduler.choose` over them in commit
order (`seq`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from claude_hooks.scheduler import Candidate, choose
from tests.cluster import AGENTS, Cluster, assigned, cluster, post_all


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
