"""Kill -9 the real service and start it again: every task is where it was."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

TOKEN = "restart-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, port: int) -> Path:
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import json, os, sys, time\n"
        "task = json.load(sys.stdin)\n"
        "open(os.environ['PIDS'] + '/' + task['id'], 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    (tmp_path / "pids").mkdir()
    config = tmp_path / "claude-hooks.toml"
    config.write_text(
        f"""
[server]
port = {port}
data_dir = "{tmp_path / "data"}"
webhook_secret = "s"
api_token = "{TOKEN}"
cancel_grace = 1.0
poll_interval = 0.05

[types.dev]
runner = "command"
workdir = "none"
sandbox = false  # the agent records its host pid outside its workdir
command = ["{sys.executable}", "{agent}"]
env = {{ PIDS = "{tmp_path / "pids"}" }}

[[agents]]
name = "dev-alpha"
type = "dev"

[[agents]]
name = "dev-bravo"
type = "dev"
"""
    )
    return config


class Server:
    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        started = time.monotonic()
        with (self.config.parent / "service.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "claude_hooks", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=log,
            )
        deadline = started + 20
        while time.monotonic() < deadline:
            try:
                if self.client.get("/healthz").status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                time.sleep(0.02)
        raise AssertionError("service did not answer /healthz")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)
        self.client.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    running = Server(write_config(tmp_path, port), port)
    yield running
    running.stop()


def tasks_by_agent(server: Server) -> dict[str, list[dict[str, object]]]:
    tasks = server.client.get("/api/tasks", params={"limit": 500}).json()["tasks"]
    grouped: dict[str, list[dict[str, object]]] = {}
    for task in sorted(tasks, key=lambda t: (t["state"] != "running", t["queue_position"] or 0)):
        grouped.setdefault(str(task["agent"]), []).append(task)
    return grouped


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_sigkill_and_restart_keeps_every_task_in_place(server: Server, tmp_path: Path) -> None:
    server.start()
    ids = []
    for number in range(1, 9):
        answer = server.client.post(
            "/api/tasks",
            json={"type": "dev", "kind": "work_issue", "repo": "acme/widget", "number": number},
        )
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    pids = tmp_path / "pids"
    wait_for(lambda: len(list(pids.iterdir())) == 2)
    before = tasks_by_agent(server)
    running_before = {a: ts[0]["id"] for a, ts in before.items()}
    assert all(ts[0]["state"] == "running" for ts in before.values())
    old_agents = {p.name: int(p.read_text()) for p in pids.iterdir()}

    server.kill()
    # The agents the dead service started die with it (PR_SET_PDEATHSIG): none runs on.
    wait_for(lambda: not any(_alive(pid) for pid in old_agents.values()), timeout=3)
    for path in pids.iterdir():
        path.unlink()

    server.start()
    wait_for(lambda: len(list(pids.iterdir())) == 2)
    after = tasks_by_agent(server)
    for agent, tasks in before.items():
        assert [t["id"] for t in after[agent]] == [t["id"] for t in tasks]
        assert after[agent][0]["state"] == "running"
        assert after[agent][0]["attempts"] == 2
        assert [t["state"] for t in after[agent][1:]] == ["queued"] * (len(tasks) - 1)
    # The same tasks run again; no process of the crashed service is left.
    assert {p.name for p in pids.iterdir()} == set(running_before.values())
    for pid in old_agents.values():
        wait_for(lambda pid=pid: not _alive(pid), timeout=5)
    assert sorted(ids) == sorted(t["id"] for ts in after.values() for t in ts)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_task_that_keeps_crashing_the_service_is_given_up(server: Server, tmp_path: Path) -> None:
    server.start()
    answer = server.client.post(
        "/api/tasks", json={"type": "dev", "kind": "work_issue", "repo": "acme/widget", "number": 1}
    )
    task_id = answer.json()["id"]
    pids = tmp_path / "pids"
    for _attempt in range(3):
        wait_for(lambda: (pids / task_id).exists())
        (pids / task_id).unlink()
        server.kill()
        server.start()
    task = server.client.get(f"/api/tasks/{task_id}").json()
    assert task["state"] == "failed"
    assert task["attempts"] == 3
    assert "gave up after 3 attempts" in task["error"]
    assert json.dumps(task)  # the record is complete enough to serialise


def test_sigterm_stops_agents_and_hands_their_tasks_back(server: Server, tmp_path: Path) -> None:
    server.start()
    answer = server.client.post(
        "/api/tasks", json={"type": "dev", "kind": "work_issue", "repo": "acme/widget", "number": 1}
    )
    task_id = answer.json()["id"]
    pids = tmp_path / "pids"
    wait_for(lambda: (pids / task_id).exists())
    agent = int((pids / task_id).read_text())
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=15) == 0
    wait_for(lambda: not _alive(agent), timeout=5)
    log = (tmp_path / "service.log").read_text()
    assert "was running when the service stopped" not in log
    (pids / task_id).unlink()
    server.start()
    # Handed back at the head of its queue without counting an attempt, and started again.
    wait_for(lambda: (pids / task_id).exists())
    task = server.client.get(f"/api/tasks/{task_id}").json()
    assert task["state"] == "running"
    assert task["attempts"] == 1
    assert "was running when the service stopped" not in (tmp_path / "service.log").read_text()
