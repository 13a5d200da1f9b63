"""The background duties' one shape: a pass per interval or at once when woken, a pass that
raises is logged, counted and the duty starts again, and stopping is bounded."""

from __future__ import annotations

import asyncio
import time

import pytest

from claude_hooks.errors import ClaudeHooksError
from claude_hooks.service.loop import Every, Loop
from tests.support import wait_until


class Counting(Loop):
    def __init__(self, interval: float, failing: int) -> None:
        super().__init__("counting", interval, first=0.0)
        self.passes = 0
        self.failing = failing

    async def run_once(self) -> None:
        self.passes += 1
        if self.passes <= self.failing:
            raise RuntimeError(f"pass {self.passes} fails")


async def test_a_failing_pass_is_logged_counted_and_the_duty_restarts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = Counting(interval=0.01, failing=2)
    loop.start()
    try:
        await wait_until(lambda: loop.passes >= 4)
        assert loop.running
    finally:
        await loop.stop()
    assert not loop.running
    assert loop.failures == 2
    failed = [r for r in caplog.records if "counting failed" in r.getMessage()]
    assert len(failed) == 2
    assert all(r.exc_info is not None for r in failed)  # an unexpected fault: its traceback


async def test_a_known_error_is_logged_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    async def refuse() -> None:
        raise ClaudeHooksError("the forge refused: try later")

    loop = Every("refusing", 0.01, refuse, first=0.0)
    loop.start()
    try:
        await wait_until(lambda: loop.failures >= 2)
    finally:
        await loop.stop()
    failed = [r for r in caplog.records if r.getMessage().startswith("refusing failed")]
    assert failed and failed[0].exc_info is None
    assert "the forge refused: try later" in failed[0].getMessage()


async def test_wake_runs_the_next_pass_at_once() -> None:
    loop = Counting(interval=3600, failing=0)
    loop.start()
    try:
        await wait_until(lambda: loop.passes == 1)  # `first` = 0: at start
        loop.wake()
        await wait_until(lambda: loop.passes == 2, timeout=1)
        await asyncio.sleep(0)
        assert loop.passes == 2  # and not again before the interval
    finally:
        await loop.stop()


async def test_stop_is_bounded_when_a_pass_ignores_the_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def stubborn() -> None:
        entered.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # a pass that will not stop (a bug this bound survives)

    loop = Every("stubborn", 3600, stubborn, first=0.0, stop_grace=0.2)
    loop.start()
    await asyncio.wait_for(entered.wait(), 2)
    began = time.monotonic()
    await loop.stop()
    assert time.monotonic() - began < 1.0
    assert not loop.running
    assert any("stubborn did not stop within" in r.getMessage() for r in caplog.records)
    release.set()  # let the abandoned pass end before the test's loop closes
    await asyncio.sleep(0.01)
