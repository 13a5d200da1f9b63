"""Elastic instances across two nodes on PostgreSQL: `instances = "1..3"` grows to 3 under a
burst and shrinks back to 1 once the added instances idle (short timings)."""

from __future__ import annotations

from pathlib import Path

from tests.serve_nodes import cluster, deliver, wait_for

ELASTIC = {"instances": "1..3", "scale_up_wait": 0.5, "scale_down_idle": 1.0}


def test_a_burst_grows_the_type_to_its_maximum_and_idleness_shrinks_it_back(
    tmp_path: Path, pg_url: str
) -> None:
    with cluster(tmp_path, pg_url, agents=("dev-a",), hold=1.0, dev=ELASTIC) as nodes:
        node_1, node_2 = nodes.start("node-1", "node-2")

        def instances() -> list[str]:
            return [name for (name,) in nodes.query("SELECT name FROM agents ORDER BY name")]

        ids = deliver(node_2, range(1, 6))  # five issues at once: one runs, four wait
        seen: set[int] = set()

        def grown() -> bool:
            seen.add(len(instances()))
            return len({task for task, _pid, _node in nodes.runs()}) >= 3

        wait_for(grown, 15, "three tasks run at once")
        assert instances() == ["dev-a", "dev-auto-1", "dev-auto-2"]
        # The added instances took the tasks that waited longest: issues 2 and 3.
        moved = dict(nodes.query("SELECT id, agent FROM tasks WHERE agent LIKE %s", "dev-auto-%"))
        assert moved == {ids[1]: "dev-auto-1", ids[2]: "dev-auto-2"}

        def shrunk() -> bool:
            seen.add(len(instances()))
            return instances() == ["dev-a"]

        wait_for(shrunk, 20, "the added instances are retired")
        assert max(seen) == 3
        wait_for(lambda: len(nodes.runs()) == 5, 20, "every task ran")
        listing = node_1.cli("agents", "list")
        assert listing.returncode == 0, listing.stderr
        assert "dev: instances 1..3, 1 now" in listing.stdout
        assert "node-1 added dev-auto-1" in listing.stdout
        assert "task(s) waited 0.5 s or more" in listing.stdout
        assert "node-1 retired dev-auto-" in listing.stdout
        # Instances float between the nodes: both ran some of the burst.
        assert {where for _task, _pid, where in nodes.runs()} == {"node-1", "node-2"}
        # Added as tasks waited past 0.5 s (one by one or together, as the deliveries came),
        # retired once idle: each change recorded with the node that made it and the wait.
        changes = nodes.query(
            "SELECT act, names, node, moved, wait_seconds FROM instance_changes ORDER BY id"
        )
        added = [row for row in changes if row[0] == "add"]
        retired = [row for row in changes if row[0] == "retire"]
        assert [row[0] for row in changes] == ["add"] * len(added) + ["retire"] * len(retired)
        assert ",".join(row[1] for row in added) == "dev-auto-1,dev-auto-2"
        assert sorted(",".join(row[1] for row in retired).split(",")) == [
            "dev-auto-1",
            "dev-auto-2",
        ]
        assert {row[2] for row in changes} == {"node-1"}  # the leader
        assert sum(row[3] for row in added) == 2
        assert all(row[4] > 0.5 for row in added) and all(row[4] >= 1.0 for row in retired)
        wait_for(
            lambda: nodes.query("SELECT DISTINCT state FROM tasks") == [("succeeded",)],
            10,
            "every task succeeded",
        )
