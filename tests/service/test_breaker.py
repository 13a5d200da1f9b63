"""The API breaker: the classifier, the state machine, and a command runner keyed on exit codes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_hooks.core.breaker import ApiFailure, Breaker, FailureKind, classify
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.service.runtime import Service
from claude_hooks.store.runs import RunOutcome
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory
from tests.support import instance_idle, make_config, queue_of, run_cli, wait_until


@pytest.mark.parametrize(
    ("error", "kind", "retry_at"),
    [
        ("Claude API error (HTTP 529): Overloaded", FailureKind.OVERLOADED, None),
        ("Claude API error (HTTP 429): rate_limit_error", FailureKind.RATE_LIMIT, None),
        ("Claude AI usage limit reached|1767225600", FailureKind.USAGE_LIMIT, 1767225600.0),
        ("API Error: Connection error. (ECONNREFUSED)", FailureKind.NETWORK, None),
        ("5-hour limit reached ∙ resets 3pm", FailureKind.USAGE_LIMIT, None),
        # What the runner makes of the real CLI's answer to a subscription's usage limit: the
        # result text, and the reset time from the CLI's rate-limit event.
        (
            "Claude API error (HTTP 429): You've hit your 5-hour limit · resets 4:33am (UTC)"
            " (usage limit resets at 1795840398)",
            FailureKind.USAGE_LIMIT,
            1795840398.0,
        ),
        (
            "Claude API error (HTTP 429): You've hit your weekly limit",
            FailureKind.USAGE_LIMIT,
            None,
        ),
        # With an API key the CLI reads no usage-limit headers: a 429 is a rate limit.
        (
            "Claude API error (HTTP 429): API Error: Request rejected (429) · This request would"
            " exceed your account's rate limit. Please try again later.",
            FailureKind.RATE_LIMIT,
            None,
        ),
        ("Claude API error (HTTP 400): prompt is too long", None, None),
        ("gave up after 3 attempts", None, None),
    ],
)
def test_claude_failures_are_classified(
    error: str, kind: FailureKind | None, retry_at: float | None
) -> None:
    found = classify("claude", error, 1, [])
    assert (found.kind if found else None) == kind
    if found is not None:
        assert found.retry_at == retry_at


def test_command_failures_count_only_for_the_named_exit_codes() -> None:
    assert classify("command", "exit 75", 75, [75]) == ApiFailure(
        FailureKind.EXIT_CODE, "exit code 75"
    )
    assert classify("command", "exit 1", 1, [75]) is None


def test_breaker_opens_after_n_failures_probes_once_and_backs_off() -> None:
    breaker = Breaker(threshold=3, base_delay=10.0, probe_timeout=100.0)
    failure = ApiFailure(FailureKind.OVERLOADED, "529")
    assert not breaker.failed(failure, 0.0)
    assert not breaker.failed(failure, 1.0)
    assert breaker.wait(1.5, "t1") is None  # still closed
    assert breaker.failed(failure, 2.0)
    assert breaker.wait(5.0, "t1") == 7.0
    assert breaker.wait(12.0, "t1") is None  # the probe
    assert breaker.wait(12.5, "t2") == 99.5  # the others wait for the probe
    assert breaker.failed(failure, 13.0)  # the probe failed: twice the delay
    assert breaker.wait(20.0, "t1") == 13.0
    assert breaker.wait(33.0, "t1") is None
    breaker.probe_lost("t1")  # the probe was cancelled before it ran: the next one probes
    assert breaker.wait(33.2, "t2") is None
    breaker.answered()
    assert breaker.wait(33.5, "t1") is None
    assert not breaker.is_open


def test_a_usage_limit_opens_until_its_reset_time() -> None:
    breaker = Breaker(threshold=1, base_delay=10.0, probe_timeout=100.0)
    assert breaker.failed(ApiFailure(FailureKind.USAGE_LIMIT, "limit", retry_at=5000.0), 100.0)
    assert breaker.wait(200.0, "t1") == 4800.0


async def test_a_command_failing_with_a_breaker_exit_code_pauses_the_type_and_loses_nothing(
    tmp_path: Path, start_service: ServiceFactory
) -> None:
    down = tmp_path / "api-down"
    down.touch()
    script = (
        f"import os, sys; sys.stdin.read(); down = os.path.exists({str(down)!r})\n"
        "print('api down' if down else 'done', flush=True); sys.exit(75 if down else 0)"
    )
    config = make_config(
        tmp_path,
        types={
            "dev": {
                "runner": "command",
                "command": [sys.executable, "-c", script],
                "workdir": "none",
                "breaker_failures": 2,
                "breaker_backoff": 1.5,
                "breaker_exit_codes": [75],
                # Unconfined: the command looks for a file in the test's /tmp.
                "sandbox": False,
            }
        },
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    service = await start_service(config)
    ids = [
        await service.pool.dispatch_by_type(
            "dev", DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", n)
        )
        for n in (1, 2, 3)
    ]
    limits = service.pool.limits
    await wait_until(lambda: "dev" in limits.paused, timeout=20)
    assert limits.paused["dev"].reason == "breaker"
    assert limits.trips["dev"] >= 1
    assert await queue_of(service.store, "dev-alpha") == ids  # the failed one is back at the head
    for task_id in ids:
        task = await service.store.get_task(task_id)
        assert task is not None and task.state is TaskState.QUEUED and task.attempts == 0
    # The task page of the one that ran says so, and shows its earlier output, not "waiting".
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)),
        base_url="http://test",
        headers={"Authorization": "Bearer test-token"},
    )
    async with client:
        page = (await client.get(f"/tasks/{ids[0]}")).text
    runs = page[page.index('<ol class="runs">') : page.index("</ol>", page.index('class="runs"'))]
    assert runs.count('class="badge s-returned">returned</span> to its queue') >= 1
    assert "the API failed (exit code 75)" in runs
    assert "waiting for the task to start…" not in page

    down.unlink()  # the API is back: the next probe succeeds and the queue drains
    await wait_until(lambda: instance_idle(service.store, "dev-alpha"), timeout=20)
    for task_id in ids:
        task = await service.store.get_task(task_id)
        assert task is not None and task.state is TaskState.SUCCEEDED and task.attempts == 1
    assert "dev" not in limits.paused
    # Every run of the first task is kept, each with its own part of the log.
    *returned, last = await service.store.runs.of_task(ids[0])
    assert returned and {r.outcome for r in returned} == {RunOutcome.RETURNED}
    assert last.outcome is RunOutcome.SUCCEEDED and last.run == len(returned) + 1
    assert all(r.node == service.config.server.node and r.agent == "dev-alpha" for r in returned)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)),
        base_url="http://test",
        headers={"Authorization": "Bearer test-token"},
    ) as client:
        for run in returned:
            part = await client.get(f"/api/tasks/{ids[0]}/log", params={"run": run.run})
            assert part.text == "api down\n"
        part = await client.get(f"/api/tasks/{ids[0]}/log", params={"run": last.run})
        assert part.text == "done\n"
        whole = await client.get(f"/api/tasks/{ids[0]}/log")
        assert whole.text == "api down\n" * len(returned) + "done\n"
        missing = await client.get(f"/api/tasks/{ids[0]}/log", params={"run": last.run + 1})
        assert missing.status_code == 404
        assert missing.json()["error"] == (
            f"task {ids[0]} has no run {last.run + 1}: it ran {last.run} times (its runs are "
            "on its page and in 'claude-hooks tasks show')"
        )
        page = (await client.get(f"/tasks/{ids[0]}")).text
    assert page.count(f'href="/api/tasks/{ids[0]}/log?run=') == last.run
    assert 'class="badge s-succeeded">succeeded</span> after' in page
    # The CLI reads one run alone (the file here: this test's service has no HTTP server).
    cli = await asyncio.to_thread(run_cli, "tasks", "log", ids[0], "--run", "1", config=config)
    assert (cli.returncode, cli.stdout) == (0, "api down\n"), cli.stderr
    shown = await asyncio.to_thread(run_cli, "tasks", "show", ids[0], config=config)
    assert [r["outcome"] for r in json.loads(shown.stdout)["runs"]] == [
        *(["returned"] * len(returned)),
        "succeeded",
    ]
    assert not limits.breaker("dev").is_open


async def test_an_open_breaker_stays_open_across_a_restart(
    tmp_path: Path, start_service: ServiceFactory
) -> None:
    down = tmp_path / "api-down"
    down.touch()
    runs = tmp_path / "runs"
    script = (
        "import os, sys, time; sys.stdin.read()\n"
        f"open({str(runs)!r}, 'a').write(f'{{time.time()}}\\n')\n"
        f"sys.exit(75 if os.path.exists({str(down)!r}) else 0)"
    )
    config = make_config(
        tmp_path,
        types={
            "dev": {
                "runner": "command",
                "command": [sys.executable, "-c", script],
                "workdir": "none",
                "breaker_failures": 1,
                "breaker_backoff": 4.0,
                "breaker_exit_codes": [75],
                "sandbox": False,
            }
        },
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    first = await Service.open(config)
    await first.start()
    try:
        task_id = await first.pool.dispatch_by_type(
            "dev", DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", 1)
        )
        await wait_until(lambda: "dev" in first.pool.limits.paused, timeout=20)
        open_until = first.pool.limits.breaker("dev").open_until
        assert open_until is not None
    finally:
        await first.stop()
    down.unlink()  # the API is back, but the breaker said to wait until open_until

    service = await start_service(config)
    limits = service.pool.limits
    assert limits.breaker("dev").open_until == open_until
    assert limits.trips["dev"] == 1
    await wait_until(lambda: instance_idle(service.store, "dev-alpha"), timeout=20)
    task = await service.store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCEEDED and task.attempts == 1
    failed_at, probed_at = (float(line) for line in runs.read_text().split())
    assert probed_at >= open_until > failed_at  # the restarted service waited for the reset
    assert not limits.breaker("dev").is_open
    assert await service.store.spend.breaker_states() == []  # closed, and forgotten


def _cli_json(config_path: Path, *args: str) -> Any:
    argv = [sys.executable, "-m", "claude_hooks", *args, "--json", "--config", str(config_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_waiting_on_the_breaker_is_said_truly_where_people_look(
    tmp_path: Path, start_service: ServiceFactory
) -> None:
    """While a trial run is under way the queue resumes when it answers, not after the
    trial's time limit; `tasks list` and `agents list` (no service memory: the database)
    show why the queue waits instead of `queued` and `idle`."""
    down, hold = tmp_path / "api-down", tmp_path / "hold"
    down.touch()
    hold.touch()
    script = (
        "import os, sys, time; sys.stdin.read()\n"
        f"if os.path.exists({str(down)!r}): sys.exit(75)\n"
        f"while os.path.exists({str(hold)!r}): time.sleep(0.05)\n"
    )
    dev = {
        "runner": "command",
        "command": [sys.executable, "-c", script],
        "workdir": "none",
        "breaker_failures": 1,
        "breaker_backoff": 2.0,
        "breaker_exit_codes": [75],
        "sandbox": False,
    }
    agents = [{"name": "dev-alpha", "type": "dev"}, {"name": "dev-beta", "type": "dev"}]
    config = make_config(tmp_path, types={"dev": dev}, agents=agents)
    cli_config = tmp_path / "cli.toml"
    cli_config.write_text(
        f'[server]\ndata_dir = "{config.data_dir}"\n\n'
        '[types.dev]\nrunner = "command"\ncommand = ["true"]\nworkdir = "none"\n'
    )
    service = await start_service(config)
    limits = service.pool.limits

    def request(number: int) -> DispatchRequest:
        return DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", number)

    first = await service.pool.dispatch_by_type("dev", request(1))
    await wait_until(lambda: limits.breaker("dev").is_open, timeout=20)
    second = await service.pool.dispatch_by_type("dev", request(2))
    down.unlink()  # the API is back: the trial run will hang on `hold` until released
    await wait_until(lambda: "trial run" in getattr(limits.paused.get("dev"), "message", ""))
    pause = limits.paused["dev"]
    assert "the queue resumes when it gets an answer" in pause.message
    assert "the next try is in" not in pause.message and pause.until is None

    tasks = {row["id"]: row for row in _cli_json(cli_config, "tasks", "list")}
    waiting = [row for row in tasks.values() if row["state"] == "queued"]
    assert len(waiting) == 1 and waiting[0]["id"] in (first, second)
    assert "a trial run decides when the queue resumes" in waiting[0]["waiting_for"]
    states = {row["name"]: row for row in _cli_json(cli_config, "agents", "list")}
    assert sorted(row["state"] for row in states.values()) == ["busy", "paused"]
    assert all(row["paused"]["reason"] == "breaker" for row in states.values())

    hold.unlink()
    for task_id in (first, second):
        await wait_until(lambda t=task_id: _succeeded(service, t), timeout=20)
    assert "dev" not in limits.paused
    rows = _cli_json(cli_config, "tasks", "list")
    assert [row["waiting_for"] for row in rows] == [None, None]


async def _succeeded(service: Service, task_id: str) -> bool:
    task = await service.store.get_task(task_id)
    return task is not None and task.state is TaskState.SUCCEEDED
