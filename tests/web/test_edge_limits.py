"""The real service under slow and greedy clients: memory, descriptors and time stay bounded.

Each test runs `claude-hooks serve` as a subprocess (so its RSS and descriptors can be read
with psutil, and its descriptor limit set) and attacks it over raw sockets on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

TOKEN = "edge-token"
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


class Served:
    """`claude-hooks serve` with a config and a soft descriptor limit, its log in a file."""

    def __init__(self, tmp_path: Path, server: str, nofile: int | None = None) -> None:
        self.port = free_port()
        release = tmp_path / "release"
        agent = tmp_path / "agent.py"
        agent.write_text(
            "import os, sys, time\n"
            "sys.stdin.read()\n"
            f"while not os.path.exists({str(release)!r}):\n"
            "    time.sleep(0.05)\n"
        )
        self.release = release
        self.config = tmp_path / "claude-hooks.toml"
        self.config.write_text(
            f"""
[server]
port = {self.port}
data_dir = "{tmp_path / "data"}"
webhook_secret = "edge-secret"
api_token = "{TOKEN}"
poll_interval = 0.05
{server}

# Unconfined: the agent waits for a file the test makes in its own /tmp, which a sandbox hides.
[types.dev]
runner = "command"
workdir = "none"
sandbox = false
command = ["{sys.executable}", "{agent}"]

[[agents]]
name = "dev-alpha"
type = "dev"
"""
        )
        self.log = tmp_path / "service.log"
        self.nofile = nofile
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def _limit(self) -> None:
        if self.nofile is not None:
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, hard))

    def start(self) -> psutil.Process:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "claude_hooks", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                preexec_fn=self._limit,
            )

        def healthy() -> bool:
            try:
                return self.client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(healthy, 30)
        except AssertionError:
            raise AssertionError(f"the service did not start:\n{self.log_text()}") from None
        return psutil.Process(self.process.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        self.client.close()

    def queue_task(self, number: int) -> str:
        answer = self.client.post(
            "/api/tasks",
            json={"type": "dev", "kind": "work_issue", "repo": "acme/widget", "number": number},
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def task(self, task_id: str) -> dict[str, object]:
        answer = self.client.get(f"/api/tasks/{task_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(server: str = "", nofile: int | None = None) -> Served:
        running = Served(tmp_path, server, nofile)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def connect(port: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(first)
    sock.setblocking(False)
    return sock


def webhook_head(length: int) -> bytes:
    return (
        "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-Forgejo-Delivery: {uuid.uuid4()}\r\nX-Forgejo-Event-Type: issues\r\n"
        f"X-Forgejo-Signature: {'0' * 64}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def answer_of(sock: socket.socket, timeout: float) -> bytes:
    """The first bytes the server sends back, or b"" once it closes; waits at most `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.1)
        if ready:
            try:
                return sock.recv(4096)
            except ConnectionResetError:
                return b""
    raise AssertionError("the server neither answered nor closed the connection in time")


def read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection, within `timeout`."""
    deadline = time.monotonic() + timeout
    received = b""
    while True:
        chunk = answer_of(sock, deadline - time.monotonic())
        if not chunk:
            return received
        received += chunk


@contextlib.contextmanager
def closing_all(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


def test_slow_large_bodies_do_not_grow_memory(served: Callable[..., Served]) -> None:
    """60 clients each start a 5 MB body and feed it slowly: 300 MB offered, the server holds
    at most server.max_pending_body_bytes of it, answers 503 beyond, and 408 to the slow."""
    server = served("read_timeout = 2.0\nmax_pending_body_bytes = 8388608")
    process = server.start()
    before = process.memory_info().rss
    with closing_all([connect(server.port, webhook_head(5 * MB)) for _ in range(60)]) as clients:
        chunk = b"x" * (64 * 1024)
        peak = before
        started = time.monotonic()
        open_clients = list(clients)
        while open_clients and time.monotonic() - started < 4:
            for sock in list(open_clients):
                try:
                    sock.send(chunk)
                except BlockingIOError:
                    continue
                except OSError:
                    open_clients.remove(sock)
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.02)
        answers = [answer_of(sock, 5) for sock in clients]
    grown = (peak - before) / MB
    print(f"RSS before {before / MB:.0f} MB, peak {peak / MB:.0f} MB (+{grown:.1f} MB)")
    assert grown < 48, f"RSS grew {grown:.1f} MB under 300 MB of slow bodies"
    statuses = {a.split(b" ")[1] for a in answers if a.startswith(b"HTTP/1.1 ")}
    assert b"503" in statuses, answers[:3]
    # 401: a body that arrived whole within the budget, and its (made-up) signature is wrong.
    assert statuses <= {b"503", b"408", b"401"}, statuses
    assert any(b"max_pending_body_bytes" in a for a in answers)
    wait_for(lambda: process.memory_info().rss - before < 48 * MB, 5)


def test_slow_headers_and_bodies_are_cut_off(served: Callable[..., Served]) -> None:
    server = served("read_timeout = 1.5")
    server.start()
    with closing_all([]) as socks:
        silent = connect(server.port, b"")
        headers = connect(server.port, b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
        body = connect(server.port, webhook_head(1000) + b"{")
        socks += [silent, headers, body]
        started = time.monotonic()
        assert answer_of(silent, 5) == b""
        assert answer_of(headers, 5) == b""
        slow_answer = read_all(body, 5)
        took = time.monotonic() - started
    assert slow_answer.startswith(b"HTTP/1.1 408"), slow_answer
    assert b"server.read_timeout" in slow_answer, slow_answer
    assert took < 4, f"slow clients were cut off after {took:.1f} s"
    assert server.client.get("/healthz").status_code == 200


def test_slowloris_at_the_connection_limit(served: Callable[..., Served]) -> None:
    """200 half-sent requests against a limit of 128 connections (soft RLIMIT_NOFILE 256):
    /healthz still answers and a task queued meanwhile runs to success."""
    server = served("read_timeout = 30.0", nofile=256)
    process = server.start()
    slowloris = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
    with closing_all([connect(server.port, slowloris) for _ in range(200)]):
        wait_for(lambda: len(process.net_connections()) >= 128, 10)
        for _ in range(5):
            assert server.client.get("/healthz").status_code == 200
        task_id = server.queue_task(1)
        server.release.touch()
        wait_for(lambda: server.task(task_id)["state"] == "succeeded", 20)
        assert process.num_fds() < 256
    log = server.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert "Too many open files" not in log, log[-3000:]
    assert "out of system resource" not in log, log[-3000:]


def test_a_task_that_cannot_start_for_want_of_descriptors_waits_in_its_queue(
    served: Callable[..., Served],
) -> None:
    """The service's descriptor limit is lowered to what it holds (prlimit, as root), so the
    next task cannot open its log or pipes: it goes back to its queue, the log says so once,
    and it succeeds once the limit is raised again."""
    server = served(nofile=256)
    process = server.start()
    first = server.queue_task(1)
    wait_for(lambda: server.task(first)["state"] == "running")
    second = server.queue_task(2)
    server.client.close()  # no HTTP while the service has no descriptor to spare
    assert "could not start" not in server.log_text()
    soft, hard = process.rlimit(psutil.RLIMIT_NOFILE)
    process.rlimit(psutil.RLIMIT_NOFILE, (process.num_fds(), hard))
    try:
        server.release.touch()
        wait_for(lambda: "could not start" in server.log_text(), 15)
        time.sleep(2.5)  # two more tries, which must not be logged again
    finally:
        process.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
    server.client = httpx.Client(
        base_url=f"http://127.0.0.1:{server.port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    wait_for(lambda: server.task(second)["state"] == "succeeded", 30)
    assert server.task(first)["state"] == "succeeded"
    assert server.task(second)["attempts"] == 1
    log = server.log_text()
    assert log.count("could not start") == 1, log[-3000:]
    assert "out of file descriptors" in log
