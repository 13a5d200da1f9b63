"""Two nodes (in-process services) on one PostgreSQL database: wake-ups, commands and live
logs cross between them. Node A has the `dev` type only, node B `reviewer` only, so each
pool runs workers for its own instances (as nodes holding different instances do)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from claude_hooks.agents.runners.base import RunContext, RunResult
from claude_hooks.config import Config
from claude_hooks.core.decision import Decision, ForgeCommand
from claude_hooks.core.domain import DispatchRequest, Task, TaskKind, TaskState, new_task_id
from claude_hooks.service.commands import Commands
from claude_hooks.service.events import TASK_CHANGED
from claude_hooks.service.runtime import Service
from claude_hooks.store.schema import nodes, tasks
from claude_hooks.store.sql import SqlStore
from claude_hooks.web.server import bind
from tests.dashboard_fixtures import LoggingGate, serve, url_of
from tests.support import GateRunner, make_config, wait_until

AUTH = {"Authorization": "Bearer test-token"}
WITHIN = 1.0  # seconds: a command or a wake-up reaches the other node within this


def node_config(tmp_path: Path, url: str, name: str, agent_type: str, agent: str) -> Config:
    config = make_config(
        tmp_path / name,
        agents=[{"name": agent, "type": agent_type}],
        server={"database_url": url, "node": name},
    )
    for other in [t for t in config.types if t != agent_type]:
        del config.types[other]
    return config


@dataclass
class Cluster:
    a: Service
    b: Service
    gate_a: GateRunner
    gate_b: LoggingGate
    engine: sa.Engine
    sockets: dict[str, socket.socket]  # bound at each node's start: its lock file names it

    def serve(self, service: Service) -> AbstractAsyncContextManager[str]:
        """A real server for the node's API, where its lock file says it answers."""
        return serve(service, self.sockets[service.config.server.node])

    async def review(self, number: int) -> str:
        """A reviewer task queued through node A; node B holds the reviewer instance."""
        request = DispatchRequest.for_type("reviewer", TaskKind.WORK_ISSUE, "acme/widget", number)
        return await self.a.pool.dispatch_by_type("reviewer", request)

    async def state(self, task_id: str) -> TaskState:
        task = await self.a.store.get_task(task_id)
        assert task is not None
        return task.state

    def node_at(self, name: str, url: str) -> None:
        """Where the node's API is: the test's server, on a port of its own, which the node
        advertises (its relayed requests are signed for it)."""
        for service in (self.a, self.b):
            if service.config.server.node == name:
                service.config.server.advertise_url = url
        with self.engine.begin() as conn:
            conn.execute(nodes.update().where(nodes.c.name == name).values(url=url))


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    made = sa.create_engine(make_url(pg_url).set(drivername="postgresql+psycopg"))
    yield made
    made.dispose()


@pytest.fixture
async def cluster(tmp_path: Path, pg_url: str, engine: sa.Engine) -> AsyncIterator[Cluster]:
    gate_a, gate_b = GateRunner(), LoggingGate()
    a = await Service.open(
        node_config(tmp_path, pg_url, "node-a", "dev", "dev-a"), lambda _: gate_a
    )
    b = await Service.open(
        node_config(tmp_path, pg_url, "node-b", "reviewer", "rev-b"), lambda _: gate_b
    )
    sockets = {"node-a": bind("127.0.0.1", 0), "node-b": bind("127.0.0.1", 0)}
    await a.start(url_of(sockets["node-a"]))
    await b.start(url_of(sockets["node-b"]))
    try:
        assert a.listener is not None and b.listener is not None
        await asyncio.wait_for(b.listener.connected.wait(), 5)
        assert sorted(b.pool.workers) == ["rev-b"] and sorted(a.pool.workers) == ["dev-a"]
        yield Cluster(a, b, gate_a, gate_b, engine, sockets)
    finally:
        gate_a.release_all()
        gate_b.release_all()
        await b.stop()
        await a.stop()
        for sock in sockets.values():
            sock.close()


def has(items: list[str], item: str) -> Callable[[], bool]:
    return lambda: item in items


async def elapsed_until(condition: Callable[[], bool], timeout: float = WITHIN) -> float:
    start = time.monotonic()
    await wait_until(condition, timeout)
    return time.monotonic() - start


async def test_a_dispatch_on_one_node_wakes_the_worker_on_the_other(cluster: Cluster) -> None:
    task_id = await cluster.review(1)
    seconds = await elapsed_until(lambda: task_id in cluster.gate_b.started)
    assert seconds < WITHIN
    cluster.gate_b.release(task_id)
    await wait_until(lambda: cluster.b.pool.workers["rev-b"].current is None)
    # The next one, queued while B is idle again, starts at once too.
    second = await cluster.review(2)
    await wait_until(lambda: second in cluster.gate_b.started, WITHIN)


async def test_live_views_hear_of_tasks_on_the_other_node(cluster: Cluster) -> None:
    heard = cluster.a.bus.subscribe()
    placed = await cluster.b.store.dispatch(
        Task(
            id=new_task_id(),
            type="reviewer",
            agent="",
            kind=TaskKind.WORK_ISSUE,
            session_key="reviewer:acme/widget:1",
            repo="acme/widget",
            number=1,
            state=TaskState.QUEUED,
            seq=0,
            enqueued_at=time.time(),
        )
    )
    event = await asyncio.wait_for(heard.get(), WITHIN)  # queued by B's store, heard by A
    assert event.kind == TASK_CHANGED and event.task is None
    await wait_until(has(cluster.gate_b.started, placed.task.id))
    cluster.gate_b.release(placed.task.id)
    while (await asyncio.wait_for(heard.get(), WITHIN)).kind != TASK_CHANGED:
        pass  # its end is heard too


async def test_a_task_ending_on_one_node_starts_the_head_waiting_for_its_key_on_the_other(
    cluster: Cluster,
) -> None:
    # Sooner than the blocked head's own recheck (1 s), in each of three rounds.
    for number in (1, 2, 3):
        key = f"shared:acme/widget:{number}"
        work = DispatchRequest(TaskKind.WORK_ISSUE, "acme/widget", number, key)
        running = await cluster.a.pool.dispatch_by_type("dev", work)
        await wait_until(has(cluster.gate_a.started, running))
        waiting = await cluster.a.pool.dispatch_by_type("reviewer", work)
        await wait_until(lambda: cluster.b.pool.workers["rev-b"].blocked)
        cluster.gate_a.release(running)
        assert await elapsed_until(has(cluster.gate_b.started, waiting)) < 0.4
        cluster.gate_b.release(waiting)
        await wait_until(lambda: cluster.b.pool.workers["rev-b"].current is None)


async def test_cancel_through_the_node_that_does_not_run_the_task(
    cluster: Cluster, pg_url: str
) -> None:
    async with (
        cluster.serve(cluster.a) as url_a,
        httpx.AsyncClient(base_url=url_a, headers=AUTH) as api,
    ):
        first = await cluster.review(1)
        await wait_until(lambda: first in cluster.gate_b.started)
        answer = await api.post(f"/api/tasks/{first}/cancel")
        assert answer.json() == {"id": first, "agent": "rev-b", "was": "running"}
        await wait_until(lambda: first in cluster.gate_b.cancelled, WITHIN)

        second = await cluster.review(2)
        await wait_until(lambda: second in cluster.gate_b.started)
        answer = await api.post("/cancel", params={"agent": "rev-b"})
        assert answer.json() == {"cancelled": second, "agent": "rev-b"}
        await wait_until(lambda: second in cluster.gate_b.cancelled, WITHIN)
        await wait_until(lambda: cluster.b.pool.workers["rev-b"].current is None)
        idle = await api.post("/cancel", params={"agent": "rev-b"})
        assert idle.status_code == 409 and "idle" in idle.json()["error"]
        unknown = await api.post("/cancel", params={"agent": "rev-zulu"})
        assert unknown.status_code == 404

    # The CLI's way: its own store, a signal row and its NOTIFY.
    cli = await SqlStore.open(pg_url)
    try:
        third = await cluster.review(3)
        await wait_until(lambda: third in cluster.gate_b.started)
        await Commands(cluster.a.config, cli).cancel(third)
        await wait_until(lambda: third in cluster.gate_b.cancelled, WITHIN)
        # The cancelled run is recorded first (its worker keeps it until then); the let-go of
        # a disabled instance is timed from there.
        await wait_until(lambda: cluster.b.pool.workers["rev-b"].current is None)
        await Commands(cluster.a.config, cli).set_enabled("rev-b", False)
        # Disabled, it is let go by its node: no worker of B runs it any more.
        await wait_until(lambda: "rev-b" not in cluster.b.pool.workers, WITHIN)
    finally:
        await cli.close()
    assert {await cluster.state(t) for t in (first, second, third)} == {TaskState.CANCELLED}


async def test_the_listener_connects_again_and_misses_nothing(
    cluster: Cluster, pg_url: str
) -> None:
    listener = cluster.b.listener
    assert listener is not None
    running = await cluster.review(1)
    await wait_until(lambda: running in cluster.gate_b.started)
    dropped = listener.backend_pid
    admin = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [dropped])
    await wait_until(lambda: not listener.connected.is_set())
    # Sent while B is deaf: B reads it at its one look after connecting again.
    async with (
        cluster.serve(cluster.a) as url_a,
        httpx.AsyncClient(base_url=url_a, headers=AUTH) as api,
    ):
        await api.post(f"/api/tasks/{running}/cancel")
    await wait_until(lambda: running in cluster.gate_b.cancelled, 2 * WITHIN)
    assert listener.connected.is_set() and listener.backend_pid != dropped
    # And wake-ups flow again.
    after = await cluster.review(2)
    await wait_until(lambda: after in cluster.gate_b.started, WITHIN)


def cli_config(config: Config) -> Path:
    """A configuration for `claude-hooks` run beside a node: its data dir (where its lock file
    says where its API answers), its database, its name, its API token."""
    path = config.data_dir / "cli.toml"
    token = config.server.api_token.get_secret_value() if config.server.api_token else ""
    path.write_text(
        f"[server]\ndata_dir = {json.dumps(str(config.data_dir))}\n"
        f"database_url = {json.dumps(config.database_url)}\n"
        f"node = {json.dumps(config.server.node)}\napi_token = {json.dumps(token)}\n"
    )
    return path


def tasks_log(config: Config, task_id: str) -> subprocess.CompletedProcess[str]:
    """`claude-hooks tasks log` run beside a node (see `cli_config`)."""
    argv = [sys.executable, "-m", "claude_hooks", "tasks", "log", task_id]
    argv += ["--config", str(cli_config(config))]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


async def test_the_live_log_of_a_task_on_another_node(cluster: Cluster) -> None:
    cluster.gate_b.lines = ["checking out", "working"]
    async with (
        cluster.serve(cluster.a) as url_a,
        cluster.serve(cluster.b) as url_b,
        httpx.AsyncClient(base_url=url_a, headers=AUTH) as api,
    ):
        cluster.node_at("node-a", url_a)
        cluster.node_at("node-b", url_b)
        task_id = await cluster.review(1)
        await wait_until(lambda: task_id in cluster.gate_b.started)
        assert not cluster.a.pool.log_path(task_id).exists()  # the file is on B only

        whole = await api.get(f"/api/tasks/{task_id}/log")
        assert whole.status_code == 200 and whole.text == "checking out\nworking\n"
        assert whole.headers["x-task-state"] == "running"
        tail = await api.get(f"/api/tasks/{task_id}/log", params={"tail": 1})
        assert tail.text == "working\n"
        # The CLI beside node A reads it the same way: through A's API, which relays from B.
        shown = await asyncio.to_thread(tasks_log, cluster.a.config, task_id)
        assert (shown.returncode, shown.stdout) == (0, "checking out\nworking\n"), shown.stderr
        # The dashboard shows the configured types' instances: nodes share one configuration.
        cluster.a.config.types["reviewer"] = cluster.b.config.types["reviewer"]
        overview = (await api.get("/")).text  # with the log tail of each running task
        assert "rev-b" in overview and "checking out" in overview

        received: list[str] = []
        async with api.stream("GET", f"/api/tasks/{task_id}/log?follow=true") as answer:
            chunks = answer.aiter_text()
            received.append(await anext(chunks))
            with cluster.b.pool.log_path(task_id).open("a") as log:
                log.write("still working\n")
            received.append(await asyncio.wait_for(anext(chunks), 2))
            cluster.gate_b.release(task_id)
            received.extend([chunk async for chunk in chunks])
        assert "".join(received) == "checking out\nworking\nstill working\n"

        # A node that does not answer: a 502 that says which node and why; the dashboard
        # says so in the tail, and does not ask again at once.
        cluster.node_at("node-b", "http://127.0.0.1:9")
        gone = await api.get(f"/api/tasks/{task_id}/log")
        assert gone.status_code == 502
        assert "node-b" in gone.json()["error"] and "did not answer" in gone.json()["error"]
        shown = await asyncio.to_thread(tasks_log, cluster.a.config, task_id)
        assert shown.returncode == 1 and shown.stdout == ""
        assert shown.stderr.startswith(f"error: the log of task {task_id} is on node node-b")
        second = await cluster.review(2)
        await wait_until(has(cluster.gate_b.started, second))
        assert "which did not answer (ConnectError" in (await api.get("/")).text
        assert "did not answer a moment ago" in (await api.get("/")).text
        cluster.gate_b.release(second)


def follow_log(config: Config, task_id: str) -> subprocess.Popen[str]:
    """`claude-hooks tasks log -f` started beside a node (see `cli_config`)."""
    argv = [sys.executable, "-m", "claude_hooks", "tasks", "log", task_id, "-f"]
    return subprocess.Popen(
        [*argv, "--config", str(cli_config(config))], stdout=subprocess.PIPE, text=True
    )


async def test_following_a_queued_task_reads_it_from_the_node_it_starts_on(
    cluster: Cluster,
) -> None:
    cluster.gate_b.lines = ["started on b"]
    async with cluster.serve(cluster.a) as url_a, cluster.serve(cluster.b) as url_b:
        cluster.node_at("node-a", url_a)
        cluster.node_at("node-b", url_b)
        first = await cluster.review(1)
        await wait_until(lambda: first in cluster.gate_b.started)
        queued = await cluster.review(2)  # behind the first, on B's instance
        follower = follow_log(cluster.a.config, queued)
        try:
            await asyncio.sleep(0.5)  # the CLI follows the queued task from node A
            cluster.gate_b.release(first)
            await wait_until(lambda: queued in cluster.gate_b.started, WITHIN)
            cluster.gate_b.release(queued)
            out, _ = await asyncio.to_thread(follower.communicate, timeout=30)
        finally:
            follower.kill()
        assert (follower.returncode, out) == (0, "started on b\n")


async def test_a_stop_command_heard_by_one_node_stops_the_task_on_the_other(
    cluster: Cluster,
) -> None:
    """`@<login> stop` arrives at whichever node Forgejo reaches; the run stops within 2 s."""
    running = await cluster.review(1)
    queued = await cluster.review(1)
    await wait_until(lambda: running in cluster.gate_b.started)
    key = "reviewer:acme/widget:1"
    stop = ForgeCommand(
        word="stop",
        agent_type="reviewer",
        repo="acme/widget",
        number=1,
        session=key,
        keys=(key,),
        comment_id=1,
        sender="alice",
        allowed=True,
    )
    done = await cluster.a.intake.commands.run(stop, "d-stop")
    assert sorted(done.cancelled) == sorted([running, queued])
    assert await elapsed_until(has(cluster.gate_b.cancelled, running), 2.0) < 2.0
    await wait_until(lambda: cluster.b.pool.workers["rev-b"].current is None)
    assert {await cluster.state(t) for t in (running, queued)} == {TaskState.CANCELLED}


class SteeredRunner:
    """Runs until a steering message comes; the message is its result."""

    async def run(self, ctx: RunContext) -> RunResult:
        assert ctx.steering is not None
        while True:
            messages = await ctx.steering.take()
            if messages:
                return RunResult(succeeded=True, exit_code=0, result=messages[0].body)
            await ctx.steering.wait()


async def test_a_mention_heard_by_one_node_steers_the_run_on_the_other(
    tmp_path: Path, pg_url: str
) -> None:
    a = await Service.open(
        node_config(tmp_path, pg_url, "node-a", "dev", "dev-a"), lambda _: GateRunner()
    )
    b = await Service.open(
        node_config(tmp_path, pg_url, "node-b", "reviewer", "rev-b"), lambda _: SteeredRunner()
    )
    await a.start()
    await b.start()
    try:
        assert b.listener is not None
        await asyncio.wait_for(b.listener.connected.wait(), 5)
        request = DispatchRequest.for_type("reviewer", TaskKind.REVIEW_PR, "acme/widget", 19)
        running = await a.pool.dispatch_by_type("reviewer", request)

        async def state(expected: TaskState) -> bool:
            task = await a.store.get_task(running)
            return task is not None and task.state is expected

        await wait_until(lambda: state(TaskState.RUNNING))
        mention = dataclasses.replace(
            request,
            payload={"sender": "alice", "comment_body": "check the retries", "comment_id": 3},
        )
        decision = Decision(steer=[("reviewer", mention)])
        await a.intake.steer(decision)
        assert decision.dispatch == [] and f"running task {running}" in decision.reason
        await wait_until(lambda: state(TaskState.SUCCEEDED), 2.0)
        task = await a.store.get_task(running)
        assert task is not None and task.result == "check the retries"
    finally:
        await b.stop()
        await a.stop()


class Listener(ThreadingHTTPServer):
    """What a database writer points a node's URL at: records each request, answers a log
    line of its own making."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                listener.requests.append((self.path, dict(self.headers.items())))
                body = b"forged <script>alert(1)</script>\x1b[2J\n" * 3
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_a_node_url_written_in_the_database_never_receives_a_credential(
    cluster: Cluster, listener: Listener
) -> None:
    """Issue 19 item 1: the relay to a URL read from the database carries no API token, and
    nothing the listener receives works again, at the real node or anywhere."""
    cluster.gate_b.lines = ["the real log"]
    cluster.a.config.types["reviewer"] = cluster.b.config.types["reviewer"]
    async with (
        cluster.serve(cluster.a) as url_a,
        cluster.serve(cluster.b) as url_b,
        httpx.AsyncClient(base_url=url_a, headers=AUTH) as api,
    ):
        cluster.node_at("node-a", url_a)
        cluster.node_at("node-b", url_b)
        running = await cluster.review(1)
        await wait_until(lambda: running in cluster.gate_b.started)
        assert (await api.get(f"/api/tasks/{running}/log")).text == "the real log\n"

        # A node that is not, and a task said to run there.
        ghost = await cluster.review(2)
        with cluster.engine.begin() as conn:
            now = time.time()
            conn.execute(
                nodes.insert().values(
                    name="ghost", incarnation="0" * 32, host="x", pid=1, url=listener.url,
                    lease_seconds=30.0, started_at=now, heartbeat_at=now,
                )
            )  # fmt: skip
            conn.execute(tasks.update().where(tasks.c.id == ghost).values(node="ghost"))
        answer = await api.get(f"/api/tasks/{ghost}/log")
        assert answer.status_code == 200 and answer.text.startswith("forged <script>")
        # The real node's own row, pointed at the listener: the dashboard's tails go there too.
        with cluster.engine.begin() as conn:
            conn.execute(nodes.update().where(nodes.c.name == "node-b").values(url=listener.url))
        await api.get(f"/api/tasks/{running}/log", params={"tail": 5})
        overview = (await api.get("/")).text
        assert "forged &lt;script&gt;alert(1)&lt;/script&gt;" in overview
        assert "<script>alert(1)" not in overview and "\x1b" not in overview
        assert len(listener.requests) >= 3

        for path, headers in listener.requests:
            assert "test-token" not in path + repr(headers)
            assert "authorization" not in {name.lower() for name in headers}
            forwarded = {k: v for k, v in headers.items() if k.lower() != "host"}
            for node_url in (url_a, url_b):
                async with httpx.AsyncClient(base_url=node_url) as replay:
                    again = await replay.get(path, headers=forwarded)
                assert again.status_code == 401, (node_url, path, again.text)
        cluster.node_at("node-b", url_b)
        assert (await api.get(f"/api/tasks/{running}/log")).text == "the real log\n"
        cluster.gate_b.release(running)
