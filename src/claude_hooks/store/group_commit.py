"""Group commit: on PostgreSQL, the deliveries that arrive together are applied by one writer.

Each `Store.dispatch_all` on PostgreSQL takes the type's cursor lock, so deliveries' write
transactions run one after another however many threads wait; each held the lock for about
five round trips and its commit's fsync. Here one thread takes every call waiting when it is
free (up to `most`) and applies them in arrival order in one transaction
(`SqlStore.dispatch_batch`): one lock hold and one commit for all of them, and each waiter is
answered only once that commit is done, so a 2xx still means committed. A duplicate or a
failed delivery is answered alone and the others are applied again without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from claude_hooks.core.decision import Decision
from claude_hooks.core.domain import Task
from claude_hooks.store.base import Dispatched, Settle
from claude_hooks.store.decisions import Cause


@dataclass(frozen=True, slots=True)
class DispatchCall:
    """The arguments of one `Store.dispatch_all`, as a group commit queues them."""

    tasks: Sequence[Task]
    settle: Settle | None
    decision: Decision | None = None
    cause: Cause | None = None
    pending: bool = False
    separate: frozenset[str] = frozenset()  # tasks never merged into a twin ("queue")


Apply = Callable[[Sequence[DispatchCall]], list[Dispatched | Exception]]
_Waiter = tuple[DispatchCall, asyncio.Future[Dispatched], asyncio.AbstractEventLoop]

# Deliveries in one transaction at most: a bound on how long the cursor locks are held.
MOST = 64


_Answers = list[tuple[asyncio.Future[Dispatched], Dispatched | Exception]]


def _answer(answers: _Answers) -> None:
    """On the waiters' loop: hand each its answer (one wake-up of the loop for them all)."""
    for future, answer in answers:
        if future.done():  # the caller stopped waiting (its timeout): it spooled the delivery
            continue
        if isinstance(answer, Exception):
            future.set_exception(answer)
        else:
            future.set_result(answer)


class GroupCommit:
    """One writer thread applying queued dispatch calls in batches with `apply`."""

    def __init__(self, apply: Apply, most: int = MOST) -> None:
        self._apply = apply
        self._most = most
        self._queue: queue.SimpleQueue[_Waiter | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    async def submit(self, call: DispatchCall) -> Dispatched:
        """Apply `call` with whatever else waits; its answer once their transaction commits."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Dispatched] = loop.create_future()
        self._queue.put((call, future, loop))
        return await future

    def stop(self) -> None:
        """Let the thread go once it has applied what waits (a hung batch is left behind)."""
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._most:
                try:
                    waiter = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiter is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(waiter)
            self._batch(batch)

    def _batch(self, batch: list[_Waiter]) -> None:
        # A caller that stopped waiting (its timeout) spooled its delivery: not applied here.
        # (A racy read: one applied anyway is found recorded when the spool replays it.)
        batch = [waiter for waiter in batch if not waiter[1].done()]
        if not batch:
            return
        answers: Sequence[Dispatched | Exception]
        try:
            answers = self._apply([call for call, _, _ in batch])
        except Exception as exc:  # the transaction failed: nothing of the batch is kept
            answers = [exc] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, _Answers] = {}
        for (_, future, loop), answer in zip(batch, answers, strict=True):
            by_loop.setdefault(loop, []).append((future, answer))
        for loop, answered in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_answer, answered)
