"""The one async boundary: on PostgreSQL, store calls run on threads, never on the event loop.

Each method of the SQL store is a coroutine whose body runs to its end without suspending
(SQLAlchemy's synchronous engine). On SQLite that body runs on the event loop's thread: a
statement takes microseconds, less than a hop to a thread. On PostgreSQL a call waits for the
network and the server, so `Offloaded` runs it on a bounded pool of threads: a query that hangs
(a lock held elsewhere, a partition) holds one thread, not the loop, and the caller bounds its
own wait (`asyncio.timeout`), so heartbeats, fencing and answers go on meanwhile; no call
waits longer than `bound` (the statement and connect timeouts together). `dispatch_all`, a
delivery's write transaction, goes to the group commit's writer instead (`group_commit`), and
the deliveries a crowded node defers (`pending.defer`) are written from the event loop
itself, on an async connection of their own (`deferrals`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from claude_hooks.core.decision import Decision
from claude_hooks.core.domain import Task
from claude_hooks.store.base import Dispatched, Settle
from claude_hooks.store.decisions import Cause
from claude_hooks.store.deferrals import LoopDeferrals
from claude_hooks.store.group_commit import DispatchCall, GroupCommit
from claude_hooks.store.intake import DeliveryRecord

# The parts of `SqlStore` with store calls of their own (`store.intake.add_delivery`, ...).
PARTS = (
    "intake",
    "pending",
    "rejections",
    "notes",
    "egress",
    "outbox",
    "retention",
    "spend",
    "nodes",
    "elastic",
    "transcripts",
    "worktree_states",
    "commands",
    "labels",
    "steering",
    "outcomes",
    "runs",
)


def _drive(function: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **kwargs: Any) -> Any:
    """Run a store coroutine to its end on this thread."""
    coroutine = function(*args, **kwargs)
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError(f"{function.__qualname__} suspended: a store call must not await")


class Offloaded:
    """`target` (a store or one of its parts) with every coroutine method run on `executor`;
    other attributes, read or set, are the target's own."""

    def __init__(
        self,
        target: Any,
        executor: ThreadPoolExecutor,
        bound: float,
        parts: tuple[str, ...] = (),
    ) -> None:
        wrapped = {name: Offloaded(getattr(target, name), executor, bound) for name in parts}
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_executor", executor)
        object.__setattr__(self, "_bound", bound)
        object.__setattr__(self, "_parts", wrapped)

    def __getattr__(self, name: str) -> Any:
        part = self._parts.get(name)
        if part is not None:
            return part
        value = getattr(self._target, name)
        if inspect.iscoroutinefunction(value):
            return functools.partial(self._call, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    async def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        call = functools.partial(_drive, function, *args, **kwargs)
        # Bounded even when the server cannot say so (a partition: no statement_timeout
        # arrives); the thread is left to finish or fail on its own.
        async with asyncio.timeout(self._bound):
            return await loop.run_in_executor(self._executor, call)


class OffloadedPending(Offloaded):
    """The pending deliveries' part, the deferrals of a crowded node written from the event
    loop together (`deferrals`)."""

    _deferrals: LoopDeferrals

    def __init__(
        self, target: Any, executor: ThreadPoolExecutor, bound: float, deferrals: LoopDeferrals
    ) -> None:
        super().__init__(target, executor, bound)
        object.__setattr__(self, "_deferrals", deferrals)

    async def defer(self, record: DeliveryRecord) -> bool:
        """`SqlPending.defer`, written with the other deferrals waiting at the time."""
        async with asyncio.timeout(self._bound):
            return await self._deferrals.defer(record)


class OffloadedStore(Offloaded):
    """The store itself: its parts offloaded too, its deliveries' transactions grouped (see
    `group_commit`), and its threads let go when it closes."""

    def __init__(
        self, target: Any, executor: ThreadPoolExecutor, bound: float, deferrals: LoopDeferrals
    ) -> None:
        super().__init__(target, executor, bound, PARTS)
        self._group: GroupCommit
        object.__setattr__(self, "_group", GroupCommit(target.dispatch_batch))
        self._deferrals: LoopDeferrals
        object.__setattr__(self, "_deferrals", deferrals)
        self._parts["pending"] = OffloadedPending(target.pending, executor, bound, deferrals)

    async def dispatch_all(
        self,
        tasks: Sequence[Task],
        settle: Settle | None,
        decision: Decision | None = None,
        cause: Cause | None = None,
        pending: bool = False,
        separate: frozenset[str] = frozenset(),
    ) -> Dispatched:
        """`SqlStore.dispatch_all`, applied with the other deliveries waiting at the time."""
        call = DispatchCall(tasks, settle, decision, cause, pending, separate)
        async with asyncio.timeout(self._bound):
            return await self._group.submit(call)

    async def close(self) -> None:
        """Close the store, then let the threads go (one still in a hung call is left behind)."""
        self._group.stop()
        try:
            await self._deferrals.close()
            await self._call(self._target.close)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
