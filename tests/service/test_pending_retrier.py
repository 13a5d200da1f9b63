"""While the node defers what arrives, the pending retrier leaves it the event loop: a pass of
a few deliveries a second; once the oldest has waited too long, full passes back to back."""

from __future__ import annotations

import time
from pathlib import Path

from claude_hooks.service import pending
from claude_hooks.service.pending import PendingRetrier
from claude_hooks.store.pending import PendingEntry
from tests.support import make_config


class Backlog:
    """A `PendingStore` of deferred deliveries received at the given times."""

    def __init__(self, received: list[float]) -> None:
        self.entries = [PendingEntry(f"d-{n}", 0, at, "deferred") for n, at in enumerate(received)]
        self.retried: list[str] = []

    async def due(self, now: float, limit: int) -> list[PendingEntry]:
        return [e for e in self.entries if e.next_attempt_at <= now][:limit]

    async def retry(self, entry: PendingEntry) -> str:
        self.retried.append(entry.id)
        self.entries.remove(entry)
        return "queued"


def retrier(tmp_path: Path, backlog: Backlog, crowded: bool) -> PendingRetrier:
    return PendingRetrier(
        make_config(tmp_path),
        backlog,
        time.time,
        backlog.retry,
        lambda: crowded,  # type: ignore[arg-type]
    )


async def test_while_crowded_a_pass_is_small_and_the_next_waits(tmp_path: Path) -> None:
    now = time.time()
    backlog = Backlog([now - 1.0] * 120)
    loop = retrier(tmp_path, backlog, crowded=True)
    assert await loop.run_once() == pending.CROWDED_PASS
    assert len(backlog.retried) == pending.CROWDED_BATCH
    wait = await loop.run_once()  # too soon: nothing is retried
    assert wait is not None and 0 < wait <= pending.CROWDED_PASS
    assert len(backlog.retried) == pending.CROWDED_BATCH


async def test_once_the_oldest_waited_too_long_full_passes_run_back_to_back(
    tmp_path: Path,
) -> None:
    now = time.time()
    backlog = Backlog([now - pending.BEHIND - 5.0] * 120)
    loop = retrier(tmp_path, backlog, crowded=True)
    await loop.run_once()  # a small pass finds the backlog old
    assert len(backlog.retried) == pending.CROWDED_BATCH
    assert await loop.run_once() == 0  # a full pass, and the next at once
    assert len(backlog.retried) == pending.CROWDED_BATCH + pending.BATCH


async def test_when_not_crowded_passes_are_full_until_the_backlog_is_done(
    tmp_path: Path,
) -> None:
    backlog = Backlog([time.time() - 1.0] * 70)
    loop = retrier(tmp_path, backlog, crowded=False)
    assert await loop.run_once() == 0
    assert await loop.run_once() is None
    assert len(backlog.retried) == 70
    assert backlog.retried == [f"d-{n}" for n in range(70)]


async def test_none_received_after_a_delivery_still_being_deferred_is_taken(
    tmp_path: Path,
) -> None:
    """Two deferrals may commit in either order: the later one waits for the earlier."""
    now = time.time()
    backlog = Backlog([now - 3.0, now - 2.0, now - 1.0])
    loop = PendingRetrier(
        make_config(tmp_path),
        backlog,  # type: ignore[arg-type]
        time.time,
        backlog.retry,
        lambda: False,
        lambda: now - 2.5,  # one received then is still being recorded
    )
    await loop.run_once()
    assert backlog.retried == ["d-0"]
