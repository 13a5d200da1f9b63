"""The command runner with real subprocesses, driven through a running service."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from claude_hooks.core.domain import DispatchRequest, Task, TaskKind, TaskState
from claude_hooks.service.runtime import Service
from tests.conftest import ServiceFactory
from tests.support import wait_until


def script(tmp_path: Path, name: str, body: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return [sys.executable, str(path)]


async def run_one(
    start_service: ServiceFactory,
    command: list[str],
    payload: dict[str, Any] | None = None,
    **type_options: Any,
) -> tuple[Service, str]:
    service: Service = await start_service(
        types={
            "dev": {
                "login": "dev-bot",
                "runner": "command",
                "command": command,
                "workdir": "none",
                **type_options,
            }
        },
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    request = DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", 17, payload or {})
    return service, await service.pool.dispatch_by_type("dev", request)


async def finished(service: Service, task_id: str, timeout: float = 10.0) -> Task:
    found: dict[str, Task] = {}

    async def check() -> bool:
        task = await service.store.get_task(task_id)
        assert task is not None
        found["task"] = task
        return task.state.finished

    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"task still {found['task'].state}"
        await asyncio.sleep(0.01)
    return found["task"]


async def test_success_gets_the_task_on_stdin_and_its_variables(
    start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAUDE_HOOKS_SERVER__WEBHOOK_SECRET", "must-not-leak")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "for-claude-only")
    command = script(
        tmp_path,
        "ok",
        "import json, os, sys\n"
        "task = json.load(sys.stdin)\n"
        "print(json.dumps({'task': task, 'env': dict(os.environ), 'cwd': os.getcwd()}))\n",
    )
    service, task_id = await run_one(
        start_service, command, {"title": "Retry"}, env={"EXTRA": "yes"}
    )
    task = await finished(service, task_id)
    assert task.state is TaskState.SUCCEEDED
    assert task.exit_code == 0
    seen = json.loads(service.pool.log_path(task_id).read_text())
    assert seen["task"]["id"] == task_id
    assert seen["task"]["payload"] == {"title": "Retry"}
    env = seen["env"]
    assert env["CLAUDE_HOOKS_TASK_ID"] == task_id
    assert env["CLAUDE_HOOKS_AGENT"] == "dev-alpha"
    assert env["CLAUDE_HOOKS_TYPE"] == "dev"
    assert env["CLAUDE_HOOKS_KIND"] == "work_issue"
    assert env["CLAUDE_HOOKS_SESSION_KEY"] == "dev:acme/widget:17"
    assert env["CLAUDE_HOOKS_REPO"] == "acme/widget"
    assert env["CLAUDE_HOOKS_NUMBER"] == "17"
    assert env["EXTRA"] == "yes"
    assert "must-not-leak" not in json.dumps(env)
    assert "for-claude-only" not in json.dumps(env)  # a command agent needs no Claude key
    assert seen["cwd"] == str(service.pool.workspaces.workdir("dev:acme/widget:17"))


async def test_failure_records_exit_code_and_output_tail(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    command = script(
        tmp_path, "fail", "import sys\nprint('x' * 9000)\nprint('the reason')\nsys.exit(3)\n"
    )
    service, task_id = await run_one(start_service, command)
    task = await finished(service, task_id)
    assert task.state is TaskState.FAILED
    assert task.exit_code == 3
    assert task.error is not None
    assert task.error.startswith("command exited with code 3")
    assert task.error.rstrip().endswith("the reason")
    assert len(task.error) < 5000


async def test_missing_executable_fails_clearly_and_the_worker_goes_on(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    service, first = await run_one(start_service, [str(tmp_path / "no-such-agent")])
    task = await finished(service, first)
    assert task.state is TaskState.FAILED
    assert task.error is not None and "cannot start command" in task.error
    request = DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", 18)
    second = await service.pool.dispatch_by_type("dev", request)
    assert (await finished(service, second)).state is TaskState.FAILED


async def test_timeout_stops_a_hanging_command_and_the_next_task_runs(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    command = script(
        tmp_path,
        "hang",
        "import json, sys, time\n"
        "task = json.load(sys.stdin)\n"
        "if task['number'] == 17:\n    time.sleep(60)\n"
        "print('quick')\n",
    )
    service, slow = await run_one(start_service, command, timeout=0.5)
    request = DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", 18)
    quick = await service.pool.dispatch_by_type("dev", request)
    started = time.monotonic()
    task = await finished(service, slow)
    assert task.state is TaskState.FAILED
    assert task.error == "timed out after 0.5 s"
    assert time.monotonic() - started < 3
    assert (await finished(service, quick)).state is TaskState.SUCCEEDED


async def test_cancel_sends_sigterm_then_sigkill_to_the_whole_group(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "child.pid"
    command = script(
        tmp_path,
        "stubborn",
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
        "print('working', flush=True)\n"
        "time.sleep(60)\n",
    )
    # Unconfined, so the agent can write its marker outside its workdir; the sandboxed
    # case is in test_hostile_agent.py.
    service, task_id = await run_one(start_service, command, sandbox=False)
    await wait_until(lambda: marker.exists() and marker.read_text() != "")
    child = int(marker.read_text())
    started = time.monotonic()
    result = await service.commands.cancel(task_id)
    assert result.was is TaskState.RUNNING
    task = await finished(service, task_id)
    elapsed = time.monotonic() - started
    assert task.state is TaskState.CANCELLED
    # SIGTERM is ignored, so the grace period (2 s in tests) passes before SIGKILL.
    assert 1.5 < elapsed < 6
    await wait_until(lambda: not Path(f"/proc/{child}").exists() or _zombie(child))
    assert "working" in service.pool.log_path(task_id).read_text()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_cancel_of_a_polite_command_is_prompt(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    command = script(tmp_path, "polite", "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    service, task_id = await run_one(start_service, command)
    log = service.pool.log_path(task_id)
    await wait_until(lambda: log.exists() and "up" in log.read_text())
    started = time.monotonic()
    await service.commands.cancel(task_id)
    task = await finished(service, task_id)
    assert task.state is TaskState.CANCELLED
    assert time.monotonic() - started < 1.0


async def test_huge_output_streams_to_a_capped_log_without_holding_it(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    command = script(
        tmp_path,
        "loud",
        "import sys\nline = b'y' * 1023 + b'\\n'\n"
        "for _ in range(60 * 1024):\n    sys.stdout.buffer.write(line)\n",
    )
    service, task_id = await run_one(start_service, command)
    task = await finished(service, task_id, timeout=30)
    assert task.state is TaskState.SUCCEEDED
    log = service.pool.log_path(task_id)
    limit = service.config.server.max_log_bytes
    assert limit < os.path.getsize(log) < limit + 200  # head, notice, tail
    with log.open("rb") as stream:
        assert stream.read(1024) == b"y" * 1023 + b"\n"
        stream.seek(-2048, os.SEEK_END)
        assert stream.read() == (b"y" * 1023 + b"\n") * 2
    dropped = 60 * 1024 * 1024 - limit
    assert f"{dropped} bytes of output dropped here".encode() in log.read_bytes()
    assert task.result is not None and len(task.result) <= 1000


async def test_command_that_ignores_stdin_still_succeeds(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    service, task_id = await run_one(start_service, ["true"], {"big": "z" * 200_000})
    assert (await finished(service, task_id)).state is TaskState.SUCCEEDED
