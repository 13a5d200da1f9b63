"""`claude-hooks tasks retry` against a real `claude-hooks serve`: the retry goes through the
running service's pool, and `tasks show` links the two tasks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.test_restart import TOKEN, Server, free_port, wait_for
from tests.support import fixture, forgejo_headers


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    config = tmp_path / "claude-hooks.toml"
    config.write_text(
        f"""
[server]
port = {port}
data_dir = "{tmp_path / "data"}"
webhook_secret = "s"
api_token = "{TOKEN}"
poll_interval = 0.05

[types.dev]
runner = "command"
workdir = "none"
command = ["{sys.executable}", "-c", "import sys; sys.stdin.read(); sys.exit(3)"]

[[agents]]
name = "dev-alpha"
type = "dev"
"""
    )
    running = Server(config, port)
    yield running
    running.stop()


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "claude_hooks", *args, "--config", str(server.config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_tasks_retry_queues_a_linked_task_through_the_service(server: Server) -> None:
    server.start()
    answer = server.client.post(
        "/api/tasks", json={"type": "dev", "kind": "work_issue", "repo": "acme/widget", "number": 4}
    )
    failed = answer.json()["id"]
    wait_for(lambda: server.client.get(f"/api/tasks/{failed}").json()["state"] == "failed")

    retried = cli(server, "tasks", "retry", failed)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith("task ") and f"a retry of {failed}" in retried.stdout
    new = retried.stdout.split()[1]
    shown = json.loads(cli(server, "tasks", "show", new).stdout)
    assert shown["retry_of"] == failed and shown["session_key"] == "dev:acme/widget:4"
    assert json.loads(cli(server, "tasks", "show", failed).stdout)["retries"] == [new]

    missing = cli(server, "tasks", "retry", "0000000000000000")
    assert missing.returncode == 1 and "no task with id" in missing.stderr


def test_deliveries_replay_prints_one_readable_line_or_json(server: Server) -> None:
    server.start()
    body, _headers = fixture("push")
    sent = server.client.post(
        "/webhook", content=body, headers=forgejo_headers("push", body, "push-1", secret="s")
    )
    assert sent.status_code == 200, sent.text

    replayed = cli(server, "deliveries", "replay", "push-1")
    assert replayed.returncode == 0, replayed.stderr
    lines = replayed.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("delivery push-1 replayed as replay-")
    assert ": ignored: push events need no agent work" in lines[0]
    as_json = cli(server, "deliveries", "replay", "push-1", "--json")
    assert json.loads(as_json.stdout)["status"] == "ignored"
