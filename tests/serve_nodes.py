"""Several real `claude-hooks serve` processes (nodes) on one database, for the cluster tests.

Each node has its own port, data dir and `server.node`, and the same `server.database_url`.
The `dev` type runs a small agent script that records, in a folder of the test, one file per
run named `<task id>.<pid>` holding the node that ran it, and then sleeps: the tests read that
folder to know what ran where, and /proc to know what still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from bench.common import stop_process
from sqlalchemy.engine import make_url

from tests.support import FIXTURE_SECRET, fixture, forgejo_headers

TOKEN = "cluster-token"
AWAY = "node-away"  # a node name no test starts
AGENTS = ("dev-a", "dev-b", "dev-c")
AGENT_SCRIPT = """\
import json, os, sys, time
task = json.load(sys.stdin)
record = os.path.join(os.environ["PIDS"], task["id"] + "." + str(os.getpid()))
with open(record, "w") as out:
    out.write(os.environ["NODE"])
time.sleep(float(os.environ["HOLD"]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assigned(number: int, delivery: str) -> tuple[bytes, dict[str, str]]:
    """The fixture "issue assigned to dev-bot", for issue `number`, signed, as `delivery`."""
    data = json.loads(fixture("issues_assigned_dev")[0])
    data["number"] = data["issue"]["number"] = number
    body = json.dumps(data).encode()
    return body, forgejo_headers("issue_assign", body, delivery)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout:g} s: {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Node:
    """One `claude-hooks serve` process with its own config, port and data dir."""

    name: str
    folder: Path
    config: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout
        )

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it (see `start`)."""
        with (self.folder / "service.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "claude_hooks", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=log,
            )
        return self.process

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait until /healthz answers; fails with the log if the process exits."""
        process = self.launch()
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    code = process.returncode
                    raise AssertionError(f"{self.name} exited with {code}:\n{self.log}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/healthz").status_code == 200:
                        return
                time.sleep(0.02)
        raise AssertionError(f"{self.name} did not answer /healthz in {timeout:g} s:\n{self.log}")

    @property
    def log(self) -> str:
        path = self.folder / "service.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """kill -9: no handler runs, nothing is handed back."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        stop_process(self.process)

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """`claude-hooks ARGS --config <this node's config>` in a subprocess."""
        argv = [sys.executable, "-m", "claude_hooks", *args, "--config", str(self.config)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@dataclass
class Cluster:
    """Nodes sharing one database; `pids` is where the agent script records its runs."""

    root: Path
    database_url: str
    agents: Sequence[str] = AGENTS
    lease_seconds: float = 2.0
    hold: float = 60.0  # how long each agent run sleeps
    # The instances pinned to a node that never starts: they wait unheld, so every task
    # stays queued and none runs.
    pinned_away: bool = False
    dev: dict[str, Any] = field(default_factory=dict)  # more `[types.dev]` keys
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pids = self.root / "pids"
        self.pids.mkdir(parents=True, exist_ok=True)
        self.agent = self.root / "agent.py"
        self.agent.write_text(AGENT_SCRIPT)

    def add(self, name: str, data_dir: Path | None = None, **server: Any) -> Node:
        """A node's config (not started); `server` adds or replaces `[server]` keys."""
        folder = self.root / f"{name}-{len(self.nodes)}"
        folder.mkdir()
        port = free_port()
        settings: dict[str, Any] = {
            "port": port,
            "data_dir": str(data_dir or folder / "data"),
            "node": name,
            "lease_seconds": self.lease_seconds,
            "database_url": self.database_url,
            "webhook_secret": FIXTURE_SECRET,
            "api_token": TOKEN,
            "cancel_grace": 1.0,
            "poll_interval": 0.05,
            **server,
        }
        lines = ["[server]", *(f"{key} = {json.dumps(value)}" for key, value in settings.items())]
        lines += [
            "",
            "[security]",
            'allowed_senders = ["alice"]',
            "",
            "[types.dev]",
            'login = "dev-bot"',
            'runner = "command"',
            'workdir = "none"',
            "comments = false",
            "# Not sandboxed: the agent records its runs in the test's folder, outside a workdir.",
            "sandbox = false",
            f"command = {json.dumps([sys.executable, str(self.agent)])}",
            f"env = {{ PIDS = {json.dumps(str(self.pids))}, NODE = {json.dumps(name)}, "
            f"HOLD = {json.dumps(str(self.hold))} }}",
            *(f"{key} = {json.dumps(value)}" for key, value in self.dev.items()),
        ]
        for agent in self.agents:
            lines += ["", "[[agents]]", f'name = "{agent}"', 'type = "dev"']
        config = folder / "claude-hooks.toml"
        config.write_text("\n".join(lines) + "\n")
        node = Node(name, folder, config, port)
        self.nodes.append(node)
        return node

    def start(self, *names: str) -> list[Node]:
        """Add and start nodes one after the other (each seeds the same agents)."""
        started = []
        for name in names:
            node = self.add(name)
            if self.pinned_away and not started:
                for agent in self.agents:
                    added = node.cli("agents", "add", agent, "--type", "dev", "--node", AWAY)
                    assert added.returncode == 0, added.stdout + added.stderr
            node.start()
            started.append(node)
        return started

    def runs(self) -> list[tuple[str, int, str]]:
        """(task id, agent pid, node) of every agent run so far."""
        found = []
        for path in self.pids.iterdir():
            task_id, pid = path.name.rsplit(".", 1)
            found.append((task_id, int(pid), path.read_text()))
        return found

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Rows of a query on the shared database (PostgreSQL)."""
        url = make_url(self.database_url).set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
            return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop every node, kill -9 what does not stop, and any agent a node left behind."""
        for node in self.nodes:
            node.stop()
        for _task_id, pid, _node in self.runs():
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def cluster(root: Path, database_url: str, **options: Any) -> Iterator[Cluster]:
    running = Cluster(root, database_url, **options)
    try:
        yield running
    finally:
        running.close()


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


async def post_all(
    sends: Sequence[tuple[Node, bytes, dict[str, str]]], concurrency: int = 16
) -> list[httpx.Response]:
    """POST every delivery to /webhook of its node, `concurrency` at a time per node; the
    answers in the order of `sends`."""
    limits = {node.name: asyncio.Semaphore(concurrency) for node, _b, _h in sends}
    async with httpx.AsyncClient(timeout=30.0) as client:

        async def send(node: Node, body: bytes, headers: dict[str, str]) -> httpx.Response:
            async with limits[node.name]:
                return await client.post(f"{node.url}/webhook", content=body, headers=headers)

        return list(await asyncio.gather(*(send(*one) for one in sends)))
