"""What every benchmark needs: a service in a subprocess, load, statistics, machine facts."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret"
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stats(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max (and the count) of repeated measurements."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


@dataclass
class Agents:
    """The agent types and instances of a benchmark's service."""

    command: list[str]
    instances: int = 2
    agent_type: str = "dev"
    login: str = "dev-bot"
    env: dict[str, str] | None = None
    runner: str = "command"


def write_config(folder: Path, port: int, agents: Agents) -> Path:
    names = "\n".join(
        f'[[agents]]\nname = "{agents.agent_type}-{i:03d}"\ntype = "{agents.agent_type}"\n'
        for i in range(agents.instances)
    )
    config = folder / "claude-hooks.toml"
    config.write_text(
        f"""
[server]
port = {port}
data_dir = "{folder / "data"}"
webhook_secret = "{SECRET}"
api_token = "{TOKEN}"
log_level = "warning"
cancel_grace = 1.0

[security]
allowed_senders = ["alice"]

[types.{agents.agent_type}]
login = "{agents.login}"
runner = "{agents.runner}"
command = {json.dumps(agents.command)}
env = {{ {", ".join(f"{k} = {json.dumps(v)}" for k, v in (agents.env or {}).items())} }}
workdir = "none"
comments = false
timeout = 3600

{names}
"""
    )
    return config


class Service:
    """`claude-hooks serve` in a subprocess, as a user runs it."""

    def __init__(self, folder: Path, agents: Agents, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.config = write_config(folder, self.port, agents)
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> float:
        """Start and wait for /healthz; returns the seconds that took."""
        started = time.perf_counter()
        with (self.folder / "service.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "claude_hooks", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env={**os.environ, **(self.env or {})},
            )
        wait_healthy(self.url, timeout, self.process)
        return time.perf_counter() - started

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)

    def database(self) -> sqlite3.Connection:
        return sqlite3.connect(self.folder / "data" / "claude-hooks.db")


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 20.0) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after `grace` seconds."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.perf_counter() + timeout
    with httpx.Client(timeout=1.0) as client:
        while time.perf_counter() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the service exited with {process.returncode}")
            try:
                if client.get(f"{url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.002)
    raise RuntimeError(f"{url} did not become healthy in {timeout} s")


@contextmanager
def service(agents: Agents, env: dict[str, str] | None = None) -> Iterator[Service]:
    with tempfile.TemporaryDirectory(prefix="claude-hooks-bench-") as folder:
        running = Service(Path(folder), agents, env)
        try:
            running.start()
            yield running
        finally:
            running.stop()


def runs(quick: bool) -> int:
    """Every figure is a median of 5 runs; the quick mode only checks that nothing rotted."""
    return 2 if quick else 5
