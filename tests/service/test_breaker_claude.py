"""The API breaker with the REAL Claude Code CLI against the stand-in Messages API: overloaded,
rate-limited and usage-limited answers pause the type; the queue survives and drains after."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_hooks.core.breaker import FailureKind
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.service.runtime import Service
from tests.conftest import ServiceFactory
from tests.messages_standin import MessagesStandin, cli_environment, error, usage_limit
from tests.support import instance_idle, make_config, queue_of, wait_until


@pytest.fixture
def api() -> Iterator[MessagesStandin]:
    with MessagesStandin() as standin:
        yield standin


async def start(
    start_service: ServiceFactory,
    tmp_path: Path,
    api: MessagesStandin,
    monkeypatch: pytest.MonkeyPatch,
    subscription: bool = False,
) -> Service:
    cli_environment(api, monkeypatch, tmp_path / "home", subscription)
    config = make_config(
        tmp_path,
        types={
            "dev": {
                "runner": "claude",
                "workdir": "none",
                "comments": False,
                "max_api_retries": 0,
                "breaker_failures": 2,
                "breaker_backoff": 1.0,
                "env": {"DISABLE_TELEMETRY": "1"},
            }
        },
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    service: Service = await start_service(config)
    return service


async def test_an_api_outage_pauses_the_type_and_the_queue_drains_when_it_recovers(
    start_service: ServiceFactory,
    tmp_path: Path,
    api: MessagesStandin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = await start(start_service, tmp_path, api, monkeypatch)
    # Two failures open the breaker; the first probe fails too.
    api.script(
        error(529, "overloaded_error"),
        error(429, "rate_limit_error", {"retry-after": "1"}),
        error(529, "overloaded_error"),
    )
    ids = [
        await service.pool.dispatch_by_type(
            "dev", DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", n)
        )
        for n in (1, 2)
    ]
    limits = service.pool.limits
    await wait_until(lambda: "dev" in limits.paused, timeout=60)
    assert limits.paused["dev"].reason == "breaker"
    worker = service.pool.get_worker("dev-alpha")
    assert await queue_of(service.store, worker.name) == ids
    started = time.monotonic()

    async def drained() -> bool:
        return not api.replies and await instance_idle(service.store, worker.name)

    await wait_until(drained, timeout=90)
    assert time.monotonic() - started >= 1.0  # it waited for the probe's backoff
    for task_id in ids:
        task = await service.store.get_task(task_id)
        assert task is not None
        assert task.state is TaskState.SUCCEEDED, task.error
        assert task.attempts == 1
    assert limits.trips["dev"] == 2  # opened, then the failed probe opened it again
    assert not limits.breaker("dev").is_open
    assert len(api.message_requests()) == 5  # three refused, then one per task


async def test_a_usage_limit_pauses_the_type_until_the_reset_time_it_gives(
    start_service: ServiceFactory,
    tmp_path: Path,
    api: MessagesStandin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = await start(start_service, tmp_path, api, monkeypatch, subscription=True)
    # Well past the 1 s backoff the breaker would use, and after both refused runs: one sandboxed
    # CLI run took 1.6-3.5 s on 2 loaded cores, and a run after the reset gets no reset time.
    resets_at = int(time.time()) + 12
    api.script(usage_limit(resets_at), usage_limit(resets_at))
    ids = [
        await service.pool.dispatch_by_type(
            "dev", DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", n)
        )
        for n in (1, 2)
    ]
    limits = service.pool.limits
    await wait_until(lambda: "dev" in limits.paused, timeout=60)
    pause = limits.paused["dev"]
    assert pause.reason == "breaker"
    last = limits.breaker("dev").last
    assert last is not None and last.kind is FailureKind.USAGE_LIMIT, last
    assert last.retry_at == resets_at
    worker = service.pool.get_worker("dev-alpha")
    assert await queue_of(service.store, worker.name) == ids

    async def drained() -> bool:
        return not api.replies and await instance_idle(service.store, worker.name)

    await wait_until(drained, timeout=90)
    requests = api.message_requests()
    assert len(requests) == 4  # two refused, then one per task
    probe_wall_time = time.time() - (time.monotonic() - requests[2].at)
    assert probe_wall_time >= resets_at - 0.05  # waited for the reset, not the 1 s backoff
    for task_id in ids:
        task = await service.store.get_task(task_id)
        assert task is not None
        assert task.state is TaskState.SUCCEEDED, task.error
        assert task.attempts == 1
    assert not limits.breaker("dev").is_open
