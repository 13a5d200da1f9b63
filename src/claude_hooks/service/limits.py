"""The gate a worker passes before it starts a task (the budgets and the API breaker), and
the watch of finished runs that opens it again and enforces a hard budget.

A paused type keeps its queue: the worker waits at the gate with the task still at the head,
until the period ends, the budget is raised, or the breaker's next try comes. The gate
(`Limits`) is built before the pool, which passes it; the watch (`BudgetWatch`) after the pool
and the commands, whose running tasks and cancel it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import tzinfo

from claude_hooks.config import Config, zone_of
from claude_hooks.core.breaker import ApiFailure, Breaker, FailureKind, classify
from claude_hooks.core.budget import TEAM, Limit, Overrides, Reached, first_reached, limits_for
from claude_hooks.core.budget import period_bounds as bounds
from claude_hooks.core.domain import Task, TaskState
from claude_hooks.service.events import Event, EventBus
from claude_hooks.service.loop import Every
from claude_hooks.store.base import Outcome, Store
from claude_hooks.store.spend import BreakerState

log = logging.getLogger(__name__)

SIGNAL_BUDGET = "budget"  # the CLI changed a budget: the service reads them again
LONGEST_WAIT = 60.0  # a waiting worker looks again at least this often (spend on other hosts)
PROBE_GRACE = 60.0  # beyond the type's timeout: a probe that never reported is replaced
WATCH_RETRY = 1.0  # after the watch of finished runs failed (it logs its own faults)
BREAKER_DELAY = 30.0  # the first pause of a tripped breaker; it doubles up to 30 minutes
HARD_BUDGET = "the hard budget ([budget] hard = true)"  # why its cancels stop a task


@dataclass(frozen=True, slots=True)
class Pause:
    """Why a type takes no new task now, and until when."""

    type: str
    reason: str  # "budget" or "breaker"
    message: str
    until: float | None


class Limits:
    """One per pool: decides whether a type may start a task, and learns from each run."""

    def __init__(
        self, config: Config, store: Store, clock: Callable[[], float], bus: EventBus
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.bus = bus
        self.zone = zone_of(config.server.timezone)
        self.overrides: Overrides = {}
        self.breakers: dict[str, Breaker] = {}
        self.paused: dict[str, Pause] = {}
        self.trips: Counter[str] = Counter()
        self._noticed: set[str] = set()
        self._changed = asyncio.Event()

    async def reload(self) -> None:
        """Read the budgets set from the CLI; waiting workers look again at once."""
        self.overrides = await self.store.spend.budgets()
        self.poke()

    def poke(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def breaker(self, agent_type: str) -> Breaker:
        found = self.breakers.get(agent_type)
        if found is None:
            type_config = self.config.types[agent_type]
            found = self.breakers[agent_type] = Breaker(
                type_config.breaker_failures,
                type_config.breaker_backoff,
                type_config.timeout + PROBE_GRACE,
            )
        return found

    def limits_of(self, agent_type: str) -> list[Limit]:
        """The budgets a type counts against; none for runners that report no cost."""
        return _limits_of(self.config, agent_type, self.overrides)

    async def reached(self, agent_type: str) -> Reached | None:
        limits = self.limits_of(agent_type)
        return await _first_reached(self.store, limits, self.clock(), self.zone)

    async def restore(self) -> None:
        """Take up the breakers that API failures left open or counting before a restart."""
        for state in await self.store.spend.breaker_states():
            if state.type not in self.config.types:
                continue
            breaker = self.breaker(state.type)
            breaker.failures, breaker.trips = state.failures, state.trips
            breaker.open_until = state.open_until
            breaker.last = ApiFailure(FailureKind(state.kind), state.detail)
            if state.open_until is not None:
                self.trips[state.type] += 1

    async def _keep(self, agent_type: str, breaker: Breaker) -> None:
        if breaker.last is None:
            return
        await self.store.spend.put_breaker(
            BreakerState(
                agent_type,
                breaker.failures,
                breaker.trips,
                breaker.open_until,
                breaker.last.kind.value,
                breaker.last.detail,
            )
        )

    async def _pause(self, agent_type: str, task_id: str) -> Pause | None:
        reached = await self.reached(agent_type)
        if reached is not None:
            message = reached.describe(self.zone)
            return Pause(agent_type, "budget", message, reached.resets_at)
        breaker = self.breaker(agent_type)
        now = self.clock()
        wait = breaker.wait(now, task_id)
        if wait is None:
            return None
        last = breaker.last.detail if breaker.last else "API failures"
        paused = f"type {agent_type!r} is paused after {breaker.failures} API failures in a row"
        if breaker.open_until is not None and now < breaker.open_until:
            message = f"{paused} ({last}); the next try is in {wait:.0f} s"
            return Pause(agent_type, "breaker", message, now + wait)
        # A trial run is under way: the queue resumes as soon as it gets an answer; `wait` is
        # only how long it is given before another task tries instead.
        message = (
            f"{paused} ({last}); trial run {breaker.probe_task or '(one task)'} is under way: "
            f"the queue resumes when it gets an answer (another tries after {wait:.0f} s)"
        )
        return Pause(agent_type, "breaker", message, None)

    async def wait_until_open(self, agent_type: str, task_id: str) -> bool:
        """False at once when a task of the type may start; else wait until that may have
        changed and return True, so the worker looks at its queue again."""
        pause = await self._pause(agent_type, task_id)
        if pause is None:
            if self.paused.pop(agent_type, None) is not None:
                log.info("type %s resumes work", agent_type)
                self.bus.publish(Event("limits"))
            return False
        previous = self.paused.get(agent_type)
        self.paused[agent_type] = pause
        if previous is None or previous.reason != pause.reason:
            log.warning("no new task of type %s starts: %s", agent_type, pause.message)
            self.bus.publish(Event("limits"))
        await self._notice(task_id, pause)
        changed = self._changed
        timeout = LONGEST_WAIT
        if pause.until is not None:
            timeout = min(max(pause.until - self.clock(), 0.01), LONGEST_WAIT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)
        return True

    async def _notice(self, task_id: str, pause: Pause) -> None:
        """Tell the task's issue, once, why it waits."""
        if task_id in self._noticed:
            return
        self._noticed.add(task_id)
        task = await self.store.get_task(task_id)
        if task is not None:
            self.bus.publish(Event("task.waiting", task, {"reason": pause.message}))

    async def after_run(self, task: Task, outcome: Outcome) -> str | None:
        """Learn from a run; when it failed for an API reason and goes back to its queue, why."""
        type_config = self.config.types[task.type]
        breaker = self.breaker(task.type)
        if outcome.state is TaskState.FAILED:
            failure = classify(
                type_config.runner, outcome.error, outcome.exit_code, type_config.breaker_exit_codes
            )
            if failure is not None:
                if breaker.failed(failure, self.clock()):
                    self.trips[task.type] += 1
                    log.warning(
                        "API breaker of type %s open after %d failures in a row (%s): "
                        "task %s goes back to its queue",
                        task.type,
                        breaker.failures,
                        failure.detail,
                        task.id,
                    )
                else:
                    log.warning(
                        "task %s of type %s failed for an API reason (%s): it goes back to its "
                        "queue, no attempt counted",
                        task.id,
                        task.type,
                        failure.detail,
                    )
                await self._keep(task.type, breaker)
                self.bus.publish(Event("task.requeued", task, {"reason": failure.detail}))
                return f"the API failed ({failure.detail}): back to its queue, no attempt counted"
        if outcome.state in (TaskState.SUCCEEDED, TaskState.FAILED):
            if breaker.is_open:
                log.info("API breaker of type %s closed: a run got an answer", task.type)
            if breaker.failures:
                await self.store.spend.clear_breaker(task.type)
            breaker.answered()
        else:
            breaker.probe_lost(task.id)
        self._noticed.discard(task.id)
        return None

    def finished(self, task: Task) -> None:
        """A run was recorded: its spend counts now, so waiting workers look again."""
        if task.type in self.breakers:
            self.breakers[task.type].probe_lost(task.id)
        self.poke()


class BudgetWatch:
    """Watches the recorded runs: each opens the gate for another look, and one that cost
    something stops, with `[budget] hard = true`, the running tasks of types over a budget."""

    def __init__(
        self,
        limits: Limits,
        bus: EventBus,
        running: Callable[[], list[Task]],
        cancel: Callable[[str, str], Awaitable[object]],
    ) -> None:
        """`running` lists the tasks this node's workers run now (the pool's); `cancel`
        cancels one with a reason (the commands')."""
        self.limits = limits
        self.running = running
        self.cancel = cancel
        self._finished = bus.subscribe(10_000)
        self.loop = Every("limits", WATCH_RETRY, self._on_finished, first=0.0)

    def start(self) -> None:
        self.loop.start()

    async def stop(self) -> None:
        self._finished.close()
        await self.loop.stop()

    async def _on_finished(self) -> float:
        """A recorded run changes the spend: waiting workers look again, hard budgets act.
        Every event waiting in one pass (a pass per event cost a turn of the event loop)."""
        event: Event | None = await self._finished.get()
        while event is not None:
            if event.kind == "task.finished" and event.task is not None:
                self.limits.finished(event.task)
                if event.task.cost_usd:
                    try:
                        await self.enforce()
                    except Exception:
                        log.exception("could not stop the work over a hard budget; trying later")
            event = self._finished.take()
        return 0.0

    async def enforce(self) -> None:
        """With `[budget] hard = true`, stop the running tasks of types over a budget."""
        config = self.limits.config
        if not config.budget.hard:
            return
        reached_by_type: dict[str, Reached | None] = {}
        for task in self.running():
            if task.type not in config.types:
                continue
            if task.type not in reached_by_type:
                reached_by_type[task.type] = await self.limits.reached(task.type)
            reached = reached_by_type[task.type]
            if reached is not None:
                log.warning("stopping task %s: %s", task.id, reached.describe(self.limits.zone))
                await self.cancel(task.id, HARD_BUDGET)


def _limits_of(config: Config, agent_type: str, overrides: Overrides) -> list[Limit]:
    if config.types[agent_type].runner != "claude":
        return []
    return limits_for(agent_type, config, overrides)


async def _first_reached(
    store: Store, limits: list[Limit], now: float, zone: tzinfo
) -> Reached | None:
    if not limits:
        return None
    spent: dict[Limit, float] = {}
    for limit in limits:
        start, end = bounds(limit.period, now, zone)
        scope = None if limit.scope == TEAM else limit.scope
        spent[limit] = await store.spend.spent(scope, start, end)
    return first_reached(limits, spent, now, zone)


async def stored_pauses(config: Config, store: Store, now: float) -> dict[str, Pause]:
    """Why each type waits, from what the database holds (budgets, spend, the breakers that
    are open): for readers without the service's memory, such as the CLI."""
    zone = zone_of(config.server.timezone)
    overrides = await store.spend.budgets()
    pauses: dict[str, Pause] = {}
    for state in await store.spend.breaker_states():
        if state.type not in config.types or state.open_until is None:
            continue
        paused = f"type {state.type!r} is paused after {state.failures} API failures in a row"
        if now < state.open_until:
            message = (
                f"{paused} ({state.detail}); the next try is in {state.open_until - now:.0f} s"
            )
            pauses[state.type] = Pause(state.type, "breaker", message, state.open_until)
        else:
            message = f"{paused} ({state.detail}); a trial run decides when the queue resumes"
            pauses[state.type] = Pause(state.type, "breaker", message, None)
    for agent_type in config.types:
        limits = _limits_of(config, agent_type, overrides)
        reached = await _first_reached(store, limits, now, zone)
        if reached is not None:
            message = reached.describe(zone)
            pauses[agent_type] = Pause(agent_type, "budget", message, reached.resets_at)
    return pauses
