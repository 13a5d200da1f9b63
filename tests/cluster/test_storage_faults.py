"""Storage faults under a real `serve` process: PostgreSQL behind a TCP proxy the test cuts
(a restart) or stalls (a partition), `kill -9` with deliveries in the spool, and SQLite on a
small tmpfs filled by deliveries. No delivery is answered 500, every answer comes within the
deadline, and every delivery acknowledged is processed exactly once once storage is back.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from bench.tcp_proxy import TcpProxy, proxy
from sqlalchemy.engine import make_url

from tests.serve_nodes import Cluster, Node, alive, assigned, cluster, wait_for
from tests.support import fixture, forgejo_headers

DEADLINE = 2.0  # server.answer_deadline in these tests


@pytest.fixture
def proxied(pg_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the test's PostgreSQL, and the database's URL through it."""
    url = make_url(pg_url)
    with proxy(url.host or "127.0.0.1", url.port or 5432) as running:
        through = url.set(host="127.0.0.1", port=running.port)
        yield running, through.render_as_string(hide_password=False)


def _query(pg_url: str, sql: str) -> list[tuple[object, ...]]:
    """Straight to the database, not through the proxy."""
    libpq = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq) as conn:
        return list(conn.execute(sql).fetchall())  # type: ignore[call-overload]


def _tasks_per_delivery(pg_url: str) -> dict[str, int]:
    rows = _query(pg_url, "SELECT delivery_id, count(*) FROM tasks GROUP BY delivery_id")
    return {str(delivery): int(count) for delivery, count in rows}


def _post(client: httpx.Client, number: int, delivery: str) -> tuple[httpx.Response, float]:
    body, headers = assigned(number, delivery)
    sent = time.monotonic()
    answer = client.post("/webhook", content=body, headers=headers)
    return answer, time.monotonic() - sent


def _start(nodes: Cluster, name: str, **server: object) -> Node:
    node = nodes.add(name, answer_deadline=DEADLINE, **server)
    node.start()
    return node


def test_a_database_restart_under_a_stream_of_deliveries_loses_none(
    tmp_path: Path, pg_url: str, proxied: tuple[TcpProxy, str]
) -> None:
    gate, through = proxied
    # A lease longer than the restart: the node rides it out without fencing its agents.
    with cluster(tmp_path, through, hold=0.0, lease_seconds=10.0) as nodes:
        node = _start(nodes, "node-1")
        answers: list[tuple[int, str, float]] = []
        with httpx.Client(base_url=node.url, timeout=10) as client:
            for n in range(1, 61):
                if n == 15:
                    gate.cut()  # PostgreSQL restarting: connections dropped, new ones refused
                if n == 40:
                    gate.resume()
                answer, took = _post(client, n, f"stream-{n}")
                answers.append((answer.status_code, answer.text, took))
                time.sleep(0.05)  # a steady stream: one delivery every 50 ms
        assert [a for a in answers if a[0] >= 500] == []
        assert {status for status, _t, _s in answers} == {202}
        assert max(took for _s, _t, took in answers) < DEADLINE + 0.2
        spooled = [text for _s, text, _t in answers if json.loads(text)["status"] == "spooled"]
        assert spooled, "the cut made some deliveries wait in the spool"
        wanted = {f"stream-{n}" for n in range(1, 61)}

        def all_once() -> bool:
            found = _tasks_per_delivery(pg_url)
            return set(found) == wanted and set(found.values()) == {1}

        wait_for(all_once, 20, "every delivery has exactly one task")
        try:
            wait_for(lambda: len(nodes.runs()) == 60, 30, "every task ran")
        except AssertionError:
            print(_query(pg_url, "SELECT state, count(*) FROM tasks GROUP BY state"))
            print(node.log[-6000:])
            raise
        ran = [task_id for task_id, _pid, _node in nodes.runs()]
        twice = {t for t in ran if ran.count(t) > 1}
        assert not twice, "\n".join(
            line
            for line in node.log.splitlines()
            if any(t in line for t in twice) or "WARNING" in line or "ERROR" in line
        )
        with node.client() as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["spooled"] == 0


def test_deferred_deliveries_through_a_database_restart_and_a_partition_are_each_run_once(
    tmp_path: Path, pg_url: str, proxied: tuple[TcpProxy, str]
) -> None:
    """A node that defers every delivery (`max_deciding = 0`): its deferrals' own connections
    are cut (a restart) and then stalled (a partition). Each delivery is answered in time,
    deferred or spooled, none 5xx, and each gets exactly one task once the database is back."""
    gate, through = proxied
    with cluster(tmp_path, through, hold=0.0, lease_seconds=10.0) as nodes:
        node = _start(nodes, "node-1", max_deciding=0, pending_retry_min=0.2)
        answers: list[tuple[int, str, float]] = []
        with httpx.Client(base_url=node.url, timeout=10) as client:
            for n in range(1, 41):
                if n == 10:
                    gate.cut()
                if n in (18, 32):
                    gate.resume()
                if n == 24:
                    gate.pause()
                answer, took = _post(client, n, f"deferred-{n}")
                answers.append((answer.status_code, answer.text, took))
                time.sleep(0.05)
        assert [a for a in answers if a[0] >= 500] == []
        assert {status for status, _t, _s in answers} == {202}
        assert max(took for _s, _t, took in answers) < DEADLINE + 0.2
        kinds = {json.loads(text)["status"] for _s, text, _t in answers}
        assert kinds == {"pending", "spooled"}, kinds
        wanted = {f"deferred-{n}" for n in range(1, 41)}

        def all_once() -> bool:
            found = _tasks_per_delivery(pg_url)
            return set(found) == wanted and set(found.values()) == {1}

        wait_for(all_once, 40, "every delivery has exactly one task")
        assert _query(pg_url, "SELECT count(*) FROM pending_deliveries") == [(0,)]


def test_a_hung_database_fences_the_node_which_answers_and_recovers(
    tmp_path: Path, pg_url: str, proxied: tuple[TcpProxy, str]
) -> None:
    gate, through = proxied
    lease = 3.0
    with cluster(tmp_path, through, lease_seconds=lease, hold=60.0) as nodes:
        node = _start(nodes, "node-1")
        with node.client() as client:
            answer, _took = _post(client, 1, "before")
            assert answer.status_code == 202, answer.text
        wait_for(lambda: len(nodes.runs()) == 1, 10, "the agent runs")
        ((task_id, pid, _where),) = nodes.runs()
        gate.pause()  # a partition: the connections stay open, nothing passes
        hung = time.monotonic()
        with node.client(timeout=5) as client:
            answer, took = _post(client, 2, "during")
            assert answer.status_code == 202, answer.text
            assert answer.json()["status"] == "spooled"
            assert took < DEADLINE + 0.2
            wait_for(lambda: not alive(pid), lease + 1, "the agent is stopped")
            assert time.monotonic() - hung <= lease + 0.5
            sent = time.monotonic()
            assert client.get("/healthz").status_code == 200
            assert time.monotonic() - sent < 1.0
            wait_for(lambda: client.get("/readyz").status_code == 503, 5, "/readyz says 503")
            ready = client.get("/readyz")
            assert ready.json()["reason"].startswith("database: no answer for")
            assert ready.json()["spooled"] == 1
            assert ready.headers["retry-after"]
            api = client.get("/api/tasks")
            assert api.status_code == 503
            assert api.json()["error"].startswith("database: no answer for")
            assert api.headers["retry-after"]
            gate.resume()
            wait_for(lambda: client.get("/readyz").status_code == 200, 15, "ready again")
        wait_for(lambda: "during" in _tasks_per_delivery(pg_url), 10, "the spooled one is in")
        assert _tasks_per_delivery(pg_url)["during"] == 1
        # The task its agent was running when the node fenced itself runs again.
        wait_for(
            lambda: [t for t, _p, _n in nodes.runs()].count(task_id) == 2,
            10,
            "the fenced task starts again",
        )


def test_a_table_locked_elsewhere_makes_the_delivery_answer_within_its_deadline(
    tmp_path: Path, pg_url: str
) -> None:
    """A lock held by another session on a table the decide phase reads holds the delivery up
    to the answer deadline at most, then it is spooled, and it goes in once the lock is let
    go; the node's liveness answers meanwhile."""
    libpq = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with cluster(tmp_path, pg_url, hold=0.0) as nodes:
        # A lock timeout past the storage budget (90 % of the deadline): the wait is cut by
        # the intake's bound, not by the server.
        node = _start(nodes, "node-1", database_lock_timeout=DEADLINE * 2)
        with node.client() as client:
            answer, _took = _post(client, 1, "before")
            assert answer.status_code == 202, answer.text
            with psycopg.connect(libpq) as holder:
                holder.execute("LOCK TABLE assignments IN ACCESS EXCLUSIVE MODE")
                answer, took = _post(client, 2, "locked")
                assert answer.status_code == 202, answer.text
                assert answer.json()["status"] == "spooled"
                assert took < DEADLINE + 0.2
                sent = time.monotonic()
                assert client.get("/healthz").status_code == 200
                assert time.monotonic() - sent < 1.0
                holder.rollback()
            wait_for(lambda: "locked" in _tasks_per_delivery(pg_url), 15, "the spooled one is in")
            wait_for(lambda: client.get("/readyz").json()["spooled"] == 0, 5, "the spool empty")
        assert _tasks_per_delivery(pg_url) == {"before": 1, "locked": 1}


def test_kill_9_with_a_full_spool_and_the_restarted_node_replays_it(
    tmp_path: Path, pg_url: str, proxied: tuple[TcpProxy, str]
) -> None:
    gate, through = proxied
    with cluster(tmp_path, through, hold=0.0) as nodes:
        node = _start(nodes, "node-1")
        gate.cut()
        with httpx.Client(base_url=node.url, timeout=10) as client:
            for n in range(1, 6):
                answer, _took = _post(client, n, f"spooled-{n}")
                assert answer.status_code == 202, answer.text
                assert answer.json()["status"] == "spooled"
        node.kill()
        gate.resume()
        assert (node.folder / "data" / "deliveries.spool").stat().st_size > 0
        node.start()
        wanted = {f"spooled-{n}" for n in range(1, 6)}
        found = _tasks_per_delivery(pg_url)
        # Replayed before the node took new work: all there once /healthz answers.
        assert set(found) == wanted and set(found.values()) == {1}
        wait_for(lambda: len(nodes.runs()) == 5, 10, "every task ran")
        assert "replayed 5 spooled deliveries" in node.log


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs, unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _big(number: int, delivery: str) -> tuple[bytes, dict[str, str]]:
    """An issue assignment of about 200 KB."""
    data = json.loads(fixture("issues_assigned_dev")[0])
    data["number"] = data["issue"]["number"] = number
    data["issue"]["body"] = "x" * 200_000
    body = json.dumps(data).encode()
    return body, forgejo_headers("issue_assign", body, delivery)


def test_a_full_disk_answers_spooled_or_503_and_loses_nothing_acknowledged(
    tmp_path: Path, small_disk: Path
) -> None:
    data_dir = small_disk / "data"
    with cluster(tmp_path, "", hold=0.0) as nodes:
        node = _start(nodes, "node-1", data_dir=str(data_dir))
        filler = small_disk / "filler"
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler.write_bytes(b"\0" * (free - 3 * 1024 * 1024))
        acknowledged, refused = [], []
        with httpx.Client(base_url=node.url, timeout=10) as client:
            for n in range(1, 41):
                body, headers = _big(n, f"big-{n}")
                sent = time.monotonic()
                answer = client.post("/webhook", content=body, headers=headers)
                assert time.monotonic() - sent < DEADLINE + 0.5
                assert answer.status_code in (202, 503), answer.text
                if answer.status_code == 503:
                    assert answer.headers["retry-after"]
                    assert "No space left on device" in answer.json()["error"]
                    refused.append(n)
                else:
                    acknowledged.append(f"big-{n}")
        assert refused, "the disk filled up"
        filler.unlink()  # space returns

        def stored() -> set[str]:
            with sqlite3.connect(data_dir / "claude-hooks.db") as conn:
                return {row[0] for row in conn.execute("SELECT delivery_id FROM tasks")}

        wait_for(lambda: set(acknowledged) <= stored(), 15, "every acknowledged delivery")
