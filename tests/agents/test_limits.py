"""Limits per agent: a fork bomb, a memory balloon and a disk fill from a sandboxed `command`
agent each end their task with the limit's reason, while the service keeps answering, an
agent beside it finishes its work and the next task runs; a data dir short of free disk
holds every agent, and says so."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from claude_hooks.agents import cages
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.service.runtime import Service
from tests.agents.test_command_runner import finished
from tests.conftest import ServiceFactory
from tests.dashboard_fixtures import serve
from tests.e2e.test_hostile_agent import pytestmark as needs_bwrap
from tests.messages_standin import MessagesStandin, cli_environment, text, tool_use

pytestmark = needs_bwrap

# What the task's title asks of it.
GREEDY = """\
import json, os, sys, time
mode = json.load(sys.stdin)["payload"]["title"]
print("starting", mode, flush=True)
if mode == "fork":
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)
elif mode == "memory":
    balloon = []
    while True:
        balloon.append(b"x" * (8 << 20))
elif mode == "disk":
    for n in range(200):  # many files: no single one meets RLIMIT_FSIZE
        with open(f"fill-{n}", "wb") as out:
            out.write(os.urandom(1 << 20))
    time.sleep(60)
elif mode == "tmp":
    try:
        for n in range(200):
            with open(f"/tmp/fill-{n}", "wb") as out:
                out.write(os.urandom(1 << 20))
    except OSError as exc:
        print("tmp full:", exc.strerror, flush=True)
print("done", flush=True)
"""


@contextlib.asynccontextmanager
async def healthz_watch(service: Service) -> AsyncIterator[list[float]]:
    """Asks a real server's /healthz every 0.1 s; yields the answer times seen so far."""
    times: list[float] = []
    async with serve(service) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:

        async def ask() -> None:
            while True:
                began = time.monotonic()
                answer = await client.get("/healthz")
                assert answer.status_code == 200
                times.append(time.monotonic() - began)
                await asyncio.sleep(0.1)

        asker = asyncio.create_task(ask())
        try:
            yield times
        finally:
            asker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asker


async def start(
    start_service: ServiceFactory, tmp_path: Path, sandbox: bool = True, **server: object
) -> Service:
    agent = tmp_path / "greedy.py"
    agent.write_text(GREEDY)
    service: Service = await start_service(
        server=server,
        types={
            "dev": {
                "runner": "command",
                "command": [sys.executable, str(agent)],
                "workdir": "none",
                "timeout": 60,
                "max_processes": 64,
                "max_memory": "256M",
                "max_disk": "50M",
                "sandbox": sandbox,
            },
            # Another agent, working beside the greedy one.
            "reviewer": {
                "runner": "command",
                "command": [sys.executable, str(agent)],
                "workdir": "none",
                "sandbox": sandbox,
            },
        },
        agents=[{"name": "dev-alpha", "type": "dev"}, {"name": "reviewer-1", "type": "reviewer"}],
    )
    return service


async def run(
    service: Service, mode: str, number: int, agent_type: str = "dev"
) -> tuple[TaskState, str | None, float]:
    request = DispatchRequest.for_type(
        agent_type, TaskKind.WORK_ISSUE, "acme/widget", number, {"title": mode}
    )
    began = time.monotonic()
    task_id = await service.pool.dispatch_by_type(agent_type, request)
    task = await finished(service, task_id, 30)
    return task.state, task.error, time.monotonic() - began


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandboxed", "unconfined"])
async def test_each_limit_ends_its_task_with_its_reason_and_the_next_task_runs(
    start_service: ServiceFactory, tmp_path: Path, sandbox: bool
) -> None:
    service = await start(start_service, tmp_path, sandbox)
    async with healthz_watch(service) as answers:
        for number, (mode, reason) in enumerate(
            [
                ("fork", "process limit 64 reached"),
                ("memory", "memory limit 256M reached"),
                ("disk", "disk limit 50M reached"),
            ]
        ):
            (state, error, took), beside = await asyncio.gather(
                run(service, mode, number), run(service, "nothing", number, "reviewer")
            )
            assert (state, error) == (TaskState.FAILED, reason), mode
            assert took < 10, f"{mode}: {took:.1f} s"
            assert beside[0] is TaskState.SUCCEEDED, beside
        state, error, _ = await run(service, "nothing", 9)
        assert state is TaskState.SUCCEEDED, error
    assert answers, "no /healthz answer"
    assert max(answers) < 1.0, f"/healthz took {max(answers):.2f} s"
    assert service.pool.confinement is not None
    assert service.pool.confinement.kind == cages.detect().kind


async def test_rlimits_and_proc_counts_where_no_cgroup_is_writable(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    service = await start(start_service, tmp_path)
    service.pool.confinement = cages.Confinement("rlimits")
    for number, (mode, reason) in enumerate(
        [("fork", "process limit 64 reached"), ("memory", "memory limit 256M reached")]
    ):
        state, error, took = await run(service, mode, number)
        assert (state, error) == (TaskState.FAILED, reason), mode
        assert took < 10, f"{mode}: {took:.1f} s"


async def test_a_data_dir_short_of_disk_holds_the_agents_and_says_why(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    service = await start(start_service, tmp_path, min_free_disk="1000T")
    request = DispatchRequest.for_type(
        "dev", TaskKind.WORK_ISSUE, "acme/widget", 1, {"title": "nothing"}
    )
    task_id = await service.pool.dispatch_by_type("dev", request)
    headers = {"Authorization": "Bearer test-token"}
    async with serve(service) as url, httpx.AsyncClient(base_url=url, headers=headers) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200
        paused = health.json()["agents_paused"]
        assert "less than server.min_free_disk = 1000T" in paused
        page = await client.get("/")
        assert "Agents paused</b>: no agent starts" in page.text
        await asyncio.sleep(0.5)
        task = await service.store.get_task(task_id)
        assert task is not None and task.state is TaskState.QUEUED

        service.config.server.min_free_disk = "1K"
        service.pool.wake_all()
        assert (await finished(service, task_id)).state is TaskState.SUCCEEDED
        assert (await client.get("/healthz")).json()["agents_paused"] is None


def test_a_cgroup_v2_cage_writes_its_limits_and_reads_its_events(tmp_path: Path) -> None:
    """The cgroup v2 files of a cage, in a plain folder standing for a delegated subtree
    (this host's cgroup v2 has no memory or pids controller to delegate)."""
    confinement = cages.Confinement("cgroup2", {"": tmp_path})
    limits = cages.Caps(64, 256 << 20, 50 << 20, "256M", "50M")
    cage = confinement.cage("task-1", limits)
    (folder,) = tmp_path.glob("task-1-*")
    assert (folder / "pids.max").read_text() == "64"
    assert (folder / "memory.max").read_text() == str(256 << 20)
    assert (folder / "memory.swap.max").read_text() == "0"
    prefix = cage.prefix()
    assert prefix == [
        "/bin/sh", "-c", f"ulimit -f {(50 << 20) // 512} || exit 125; {cages.JOIN}", "sh",
        str(folder / "cgroup.procs"), "--",
    ]  # fmt: skip
    assert cage.exceeded() is None
    (folder / "pids.events").write_text("max 3\n")
    assert cage.exceeded() == "process limit 64 reached"
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
    assert cage.exceeded() == "memory limit 256M reached"
    (folder / "cgroup.kill").write_text("")
    cage.kill()
    assert (folder / "cgroup.kill").read_text() == "1"


def test_start_removes_the_empty_cgroups_a_dead_service_left(tmp_path: Path) -> None:
    found = cages.detect()
    if found.kind != "cgroup1":
        pytest.skip(f"needs a writable cgroup v1 (this host: {found.describe()})")
    limits = cages.Caps(8, 64 << 20, 1 << 20, "64M", "1M")
    left, fresh = found.cage("left", limits), found.cage("fresh", limits)
    for folder in left.cgroups.values():
        os.utime(folder, (time.time() - 3600, time.time() - 3600))
    cages.detect()
    assert not any(folder.exists() for folder in left.cgroups.values())
    assert all(folder.exists() for folder in fresh.cgroups.values())
    asyncio.run(fresh.close())
    assert not any(folder.exists() for folder in fresh.cgroups.values())


async def test_the_sandboxs_tmp_holds_at_most_max_disk(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    service = await start(start_service, tmp_path)
    request = DispatchRequest.for_type(
        "dev", TaskKind.WORK_ISSUE, "acme/widget", 1, {"title": "tmp"}
    )
    task_id = await service.pool.dispatch_by_type("dev", request)
    task = await finished(service, task_id, 30)
    assert task.state is TaskState.SUCCEEDED, task.error
    assert "tmp full: No space left on device" in service.pool.log_path(task_id).read_text()


async def test_a_claude_agents_fork_bomb_ends_its_task_with_the_reason(
    start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real Claude Code CLI, driven by a stand-in Messages API, starts a fork bomb with
    its Bash tool: the CLI and its tools share the run's cage."""
    with MessagesStandin() as api:
        cli_environment(api, monkeypatch)
        bomb = (
            "import os, time\n"
            "while True:\n"
            "    try:\n"
            "        os.fork()\n"
            "    except OSError:\n"
            "        time.sleep(0.01)\n"
        )
        api.script(
            tool_use("Bash", {"command": f"python3 -c {shlex.quote(bomb)}", "description": "b"}),
            text("done"),
        )
        service: Service = await start_service(
            types={
                "dev": {
                    "runner": "claude",
                    "workdir": "none",
                    "comments": False,
                    "max_processes": 128,
                    "timeout": 60,
                }
            },
            agents=[{"name": "dev-alpha", "type": "dev"}],
        )
        request = DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", 1, {})
        task_id = await service.pool.dispatch_by_type("dev", request)
        task = await finished(service, task_id, 30)
    assert (task.state, task.error) == (TaskState.FAILED, "process limit 128 reached")
