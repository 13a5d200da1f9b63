"""The background duties' one shape: a pass per interval or at once when woken, and a pass
that raises does not end the duty."""

from __future__ import annotations

import asyncio

import pytest

from claude_hooks.service.loop import Loop
from tests.support import wait_until


class Counting(Loop):
    def __init__(self, interval: float, failures: int) -> None:
        super().__init__("counting", interval, first=0.0)
        self.passes = 0
        self.failures = failures

    async def run_once(self) -> None:
        self.passes += 1
        if self.passes <= self.failures:
            raise RuntimeError(f"pass {self.passes} fails")


async def test_a_failing_pass_is_logged_and_the_duty_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = Counting(interval=0.01, failures=2)
    loop.start()
    try:
        await wait_until(lambda: loop.passes >= 4)
        assert loop.running
    finally:
        await loop.stop()
    assert not loop.running
    failed = [r for r in caplog.records if "counting failed" in r.getMessage()]
    assert len(failed) == 2


async def test_wake_runs_the_next_pass_at_once() -> None:
    loop = Counting(interval=3600, failures=0)
    loop.start()
    try:
        await wait_until(lambda: loop.passes == 1)  # `first` = 0: at start
        loop.wake()
        await wait_until(lambda: loop.passes == 2, timeout=1)
        await asyncio.sleep(0)
        assert loop.passes == 2  # and not again before the interval
    finally:
        await loop.stop()
