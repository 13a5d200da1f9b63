"""Workers and the registry: one worker per instance, dispatch by type.

The database is the truth: `Store.dispatch` places a task in one transaction and each worker
claims the head of its instance's queue from the store, so every process sharing the
database sees the same queues. In memory are only the workers and their wake-up events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from claude_hooks.agents import cages, processes, resources
from claude_hooks.agents.disk_room import DiskRoom
from claude_hooks.agents.egress import EgressProxy, EgressSession
from claude_hooks.agents.environment import agent_environment
from claude_hooks.agents.forge_tools import ForgeTools
from claude_hooks.agents.runners.base import AgentRunner, RunContext, RunResult
from claude_hooks.agents.sandbox import Sandbox, SandboxError
from claude_hooks.agents.setup import run_setup
from claude_hooks.agents.workspace import WorkspaceError, Workspaces
from claude_hooks.config import Config, TypeConfig, size_bytes
from claude_hooks.core.decision import Decision
from claude_hooks.core.domain import AgentInstance, DispatchRequest, Task, TaskState
from claude_hooks.errors import (
    ClaudeHooksError,
    NoInstanceError,
    UnknownAgentError,
)
from claude_hooks.forge.gateway import Forge
from claude_hooks.service import outcomes
from claude_hooks.service.events import Event, EventBus
from claude_hooks.service.limits import Limits
from claude_hooks.service.policies import Gate, Policies, RunPolicy
from claude_hooks.service.private_files import private_dir, private_file
from claude_hooks.service.steering import Inbox, follow_ups
from claude_hooks.store import wakeups
from claude_hooks.store.base import (
    Claim,
    Dispatched,
    Outcome,
    Placement,
    QueueEntry,
    Settle,
    Store,
    TaskFilter,
)
from claude_hooks.store.decisions import Cause
from claude_hooks.store.faults import fault_reason, is_storage_fault
from claude_hooks.store.wakeups import Wake

log = logging.getLogger(__name__)

RunnerFactory = Callable[[str], AgentRunner]
RETRY_SECONDS = 1.0
BLOCKED_RECHECK_SECONDS = 1.0
# How often an idle instance of a `rebalance = "steal"` type looks for work queued on a peer
# (another process's dispatch does not wake it); a dispatch in this process wakes it at once.
STEAL_LOOK_SECONDS = 0.5
# How often instances look at the free disk again while it is below server.min_free_disk.
LOW_DISK_RECHECK_SECONDS = 5.0


class Worker:
    """One instance: it takes the head of its queue from the database and runs one task at a
    time. The wake-up event only says "look again"; the queue itself lives in the store."""

    def __init__(self, pool: Pool, name: str, agent_type: str, enabled: bool) -> None:
        self.pool = pool
        self.name = name
        self.type = agent_type
        self.enabled = enabled
        self.retiring = False
        self.blocked = False  # the head of the queue waits for its session key
        self.waiting: str | None = None  # why the head waits for its concurrency group
        self._head: str | None = None  # the head of the queue when last looked at
        self.current: Task | None = None
        self._cancel_current = False
        self._run: asyncio.Task[RunResult] | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._unfinished: tuple[Task, Outcome] | None = None
        self._claim_unsure = False  # a claim failed with a storage fault: it may have committed

    def __repr__(self) -> str:
        return f"<Worker {self.name} type={self.type} running={self.current is not None}>"

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._loop = asyncio.create_task(self._serve(), name=f"worker-{self.name}")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    def cancel_current(self) -> bool:
        if self.current is None:
            return False
        if self._cancel_current:
            # Asked again (the cancel's signal, heard after the local stop): a second
            # cancellation would cut the runner's grace period short.
            return True
        self._cancel_current = True
        if self._run is not None:
            self._run.cancel()
        return True

    async def _serve(self) -> None:
        while True:
            try:
                if self._unfinished is not None:
                    await self._record(*self._unfinished)
                if self.retiring:
                    self.pool.retired(self)
                    return
                self._wake.clear()
                if self._claim_unsure:
                    await self._requeue_lost_claim()
                if self.enabled and await self._held():
                    continue
                task = await self._claim() if self.enabled else None
                if task is None:
                    await self._idle()
                    continue
                await self._take(task)
            except Exception as exc:
                # A store or runner fault must not end the worker: its queue would wait forever.
                if is_storage_fault(exc):
                    log.warning(
                        "worker %s: %s; it goes on in %g s",
                        self.name,
                        fault_reason(exc),
                        RETRY_SECONDS,
                    )
                else:
                    log.exception(
                        "worker %s hit an error; it goes on in %g s", self.name, RETRY_SECONDS
                    )
                await asyncio.sleep(RETRY_SECONDS)

    async def _requeue_lost_claim(self) -> None:
        """Put back at the head of the queue a task a claim took without this worker knowing."""
        where = TaskFilter(agent=self.name, state=TaskState.RUNNING)
        for task in await self.pool.store.list_tasks(where, 10, 0):
            why = "the claim's answer was lost with the database connection"
            if await self.pool.store.requeue_interrupted(task.id, self.pool.clock(), why):
                log.warning(
                    "task %s was claimed as the database connection dropped: back at the "
                    "head of %s's queue",
                    task.id,
                    self.name,
                )
        self._claim_unsure = False

    async def _held(self) -> bool:
        """Wait while the data dir's disk is low, or a budget or the API breaker holds the
        type; True to look again after."""
        if self.pool.low_disk() is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LOW_DISK_RECHECK_SECONDS)
            return True
        head = self._head = await self.pool.store.queue_head(self.name)
        return head is not None and await self.pool.limits.wait_until_open(self.type, head)

    @property
    def steals(self) -> bool:
        return self.pool.config.types[self.type].rebalance == "steal"

    @property
    def idle(self) -> bool:
        return self.enabled and not self.retiring and self.current is None

    async def _claim(self) -> Task | None:
        """Claim the head of the queue; with an empty queue, a stealing type takes work from a
        peer first (without the claim's write: an idle instance looks twice a second)."""
        if not self.steals or self._head is not None:
            claim = await self._claim_head()
            if claim.task is not None or claim.blocked or not self.steals:
                return claim.task
        self.blocked = False
        if not await self.pool.steal_for(self):
            return None
        self._head = await self.pool.store.queue_head(self.name)
        return (await self._claim_head()).task

    async def _claim_head(self) -> Claim:
        """Claim the head within its repository's policy: a head the policy refuses ends
        here, and one whose concurrency group is full waits (blocked, with the reason)."""
        gated = self.pool.policies.active
        if gated and self._head is None:
            # Not looked at since the last wake-up: the policy must see the task that starts.
            self._head = await self.pool.store.queue_head(self.name)
            if self._head is None:
                return Claim(None)
        gate = await self.pool.gate(self._head)
        if gate is not None and (gate.refusal is not None or gate.not_now is not None):
            # Refused: the head was ended and the worker woken; not_now: look again soon.
            self.blocked, self.waiting = gate.not_now is not None, gate.not_now
            return Claim(None, blocked=self.blocked)
        group = gate.group if gate is not None else None
        try:
            claim = await self.pool.store.claim_next(
                self.name,
                self.pool.clock(),
                group,
                self._head if gated else None,
                self.pool.log_size,
            )
        except Exception as exc:
            # The claim may have committed with its answer lost on the way (the connection
            # dropped): its task would stay running with nothing running it.
            self._claim_unsure = is_storage_fault(exc)
            raise
        self.blocked, self.waiting = claim.blocked, claim.waiting
        if claim.waiting is not None and self._head is not None:
            await self.pool.notice_waiting(self._head, claim.waiting.removeprefix("waiting: "))
        return claim

    async def _idle(self) -> None:
        """Wait for a wake-up; a blocked head is looked at again after a while regardless,
        since the session key it waits for may end in another process, and so are a stealing
        type's peers' queues."""
        if not self.blocked and not self.steals:
            await self._wake.wait()
            return
        timeout = BLOCKED_RECHECK_SECONDS if self.blocked else STEAL_LOOK_SECONDS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _take(self, task: Task) -> None:
        """Run a claimed task and record how it ended."""
        self.current = task
        self._cancel_current = False
        try:
            self.pool.bus.publish(Event("task.started", task))
            outcome = await self._execute(task)
            if outcome is None:
                await self._requeue_exhausted(task)
                return
            returned = await self.pool.limits.after_run(task, outcome)
            if returned is not None:
                await self.pool.store.requeue_interrupted(task.id, self.pool.clock(), returned)
                return
            self._unfinished = (task, outcome)
            await self._record(task, outcome)
        finally:
            self.current = None
            self._run = None
            self.pool.inboxes.pop(task.id, None)

    async def _record(self, task: Task, outcome: Outcome) -> None:
        """Save how a run ended; kept for another try if the store fails, so it is never lost."""
        await self.pool.store.finish_task(task.id, outcome, self.pool.clock())
        self._unfinished = None
        self.pool.key_freed()
        await self.pool.follow_up_steers(task)
        log.info("task %s on %s: %s", task.id, self.name, outcome.state.value)
        try:
            await self.pool.publish_finished(task.id)
        except Exception:
            log.exception("could not announce the end of task %s", task.id)

    async def _requeue_exhausted(self, task: Task) -> None:
        """Back to the head of the queue: the run could not start for want of descriptors or
        processes, which passes; it starts again after a pause, its attempt not counted."""
        why = "it could not start: out of file descriptors or processes"
        await self.pool.store.requeue_interrupted(task.id, self.pool.clock(), why)
        _exhausted_notice(
            "task %s could not start (out of file descriptors or processes): "
            "it waits at the head of its queue and is tried again",
            task.id,
        )
        await asyncio.sleep(resources.BACKOFF_SECONDS)

    async def _execute(self, task: Task) -> Outcome | None:
        """Run the task to its end: how it went, or its timeout or cancel; None if it could
        not start for want of file descriptors or processes."""
        pool = self.pool
        type_config = pool.config.types[task.type]
        if self._cancel_current:
            return Outcome(TaskState.CANCELLED, error="cancelled before it started")
        self._run = asyncio.create_task(pool.prepare_and_run(task), name=f"run-{task.id}")
        try:
            done, _ = await asyncio.wait({self._run}, timeout=type_config.timeout)
        except asyncio.CancelledError:
            # The service is stopping: stop the agent, hand the task back to its queue.
            self._run.cancel()
            await asyncio.gather(self._run, return_exceptions=True)
            await pool.store.requeue_interrupted(task.id, pool.clock(), "the service stopped")
            raise
        if not done:
            outcome = Outcome(TaskState.FAILED, error=f"timed out after {type_config.timeout:g} s")
            self._run.cancel()
            try:
                await asyncio.gather(self._run, return_exceptions=True)
            except asyncio.CancelledError:
                # Stopping while the agent was being stopped: the timeout is still its end.
                await pool.store.finish_task(task.id, outcome, pool.clock())
                raise
            return outcome
        if self._run.cancelled():
            return Outcome(TaskState.CANCELLED, error="cancelled while running")
        error = self._run.exception()
        if resources.exhausted(error):
            return None
        if error is not None:
            log.error("runner of task %s failed", task.id, exc_info=error)
            return Outcome(TaskState.FAILED, error=f"runner error: {error!r}")
        return _outcome(self._run.result())


_exhausted_notice = resources.Notice()


def _outcome(result: RunResult) -> Outcome:
    return Outcome(
        TaskState.SUCCEEDED if result.succeeded else TaskState.FAILED,
        exit_code=result.exit_code,
        result=result.result,
        error=result.error,
        cost_usd=result.cost_usd,
        claude_session_id=result.claude_session_id,
    )


def _gone(agent: AgentInstance | None) -> str:
    """Why this node no longer runs an instance it ran: the log's words for it."""
    if agent is None:
        return "removed"
    if agent.node is None:
        return "let go: it goes to the next node with room"
    return f"handed over to node {agent.node}"


class Pool:
    """The registry of this process's workers, and `dispatch_by_type` through the store."""

    def __init__(
        self,
        config: Config,
        store: Store,
        runner_for: RunnerFactory,
        clock: Callable[[], float],
        bus: EventBus,
        limits: Limits,
        forge: Forge,
        policies: Policies,
        sandbox: Sandbox | None,
        confinement: cages.Confinement | None,
        workspaces: Workspaces,
        disk_room: DiskRoom,
    ) -> None:
        """`forge`: the forge the agents' forge tools act on;
        `policies`: repositories' policies, checked before a queued task starts; `limits`:
        the gate before a run (budgets, breaker); `sandbox`: the agents' sandbox, as probed
        (types with `sandbox = true` use it); `confinement`: where runs' limits go;
        `workspaces`: the sessions' workdirs (the sweeper's too); `disk_room`: whether the
        disk has room for new runs."""
        self.config = config
        self.store = store
        self.runner_for = runner_for
        self.forge = forge
        self.policies = policies
        self.clock = clock
        self.bus = bus
        self.disk_room = disk_room
        self.workspaces = workspaces
        self.workers: dict[str, Worker] = {}
        self.inboxes: dict[str, Inbox] = {}  # steering messages of this node's running tasks
        self._stranded = False
        self._unknown_types_warned: set[str] = set()
        self._noticed: set[str] = set()  # tasks whose wait for their group was told
        self.limits = limits
        self.sandbox = sandbox
        self.egress = EgressProxy()
        self.confinement = confinement
        self._disk_was_low = False

    # registry

    def get_worker(self, name: str) -> Worker:
        try:
            return self.workers[name]
        except KeyError:
            raise UnknownAgentError(name) from None

    def get_workers_by_type(self, agent_type: str) -> list[Worker]:
        """This process's enabled workers of a type, sorted by name."""
        return sorted(
            (
                w
                for w in self.workers.values()
                if w.type == agent_type and w.enabled and not w.retiring
            ),
            key=lambda w: w.name,
        )

    # lifecycle

    async def start(self) -> None:
        """Recover from a crash, build one worker per instance, move orphaned tasks, start."""
        recovered = await self.store.recover(self.config.server.max_attempts, self.clock())
        stale = [r for r in recovered if r.pid is not None]
        await asyncio.gather(
            *(
                processes.stop_stale(r.pid, r.pid_start, self.config.server.cancel_grace)
                for r in stale
                if r.pid is not None
            )
        )
        for r in recovered:
            log.warning("task %s was running when the service stopped: now %s", r.id, r.state.value)
        await self.limits.reload()
        await self.limits.restore()
        for agent in await self.store.list_agents():
            if self._holds(agent):
                self._add_worker(agent.name, agent.type, agent.enabled)
        await self._redispatch(await self.store.orphaned_tasks())
        for worker in self.workers.values():
            worker.start()

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in list(self.workers.values())))
        await self.egress.aclose()

    async def drop_all(self) -> None:
        """Stop every worker and its agent now, recording nothing: the node lost its lease,
        so its tasks are another node's to run (the store refuses this node's late writes)."""
        workers = list(self.workers.values())
        self.workers.clear()
        await asyncio.gather(*(w.stop() for w in workers))

    def _holds(self, agent: AgentInstance) -> bool:
        """The instance is this node's to run (every instance, outside a cluster)."""
        return self.store.node is None or agent.node == self.store.node

    def _add_worker(self, name: str, agent_type: str, enabled: bool) -> Worker | None:
        if agent_type not in self.config.types:
            if name not in self._unknown_types_warned:
                self._unknown_types_warned.add(name)
                log.warning(
                    "agent %r has type %r, which the configuration does not define: "
                    "it takes no work until [types.%s] is added",
                    name,
                    agent_type,
                    agent_type,
                )
            return None
        worker = Worker(self, name, agent_type, enabled)
        self.workers[name] = worker
        return worker

    def retired(self, worker: Worker) -> None:
        """A removed instance's worker has finished its last task: forget it."""
        if self.workers.get(worker.name) is worker:
            del self.workers[worker.name]

    async def sync_agents(self) -> None:
        """Bring the workers in line with the instances this node holds in the `agents` table
        (changed by the CLI, and by the node taking and letting go of instances)."""
        every = {agent.name: agent for agent in await self.store.list_agents()}
        rows = {name: agent for name, agent in every.items() if self._holds(agent)}
        for name, agent in rows.items():
            worker = self.workers.get(name)
            if worker is None:
                worker = self._add_worker(name, agent.type, agent.enabled)
                if worker is not None:
                    worker.start()
                    log.info("agent %s (%s) added", name, agent.type)
                continue
            worker.retiring = False
            if worker.enabled != agent.enabled:
                worker.enabled = agent.enabled
                worker.wake()
                log.info("agent %s %s", name, "enabled" if agent.enabled else "disabled")
        for name, worker in list(self.workers.items()):
            if name not in rows and not worker.retiring:
                worker.retiring = True
                worker.enabled = False
                worker.wake()
                log.info("agent %s %s", name, _gone(every.get(name)))
        await self._redispatch(await self.store.orphaned_tasks())

    # dispatch

    async def dispatch_by_type(self, agent_type: str, request: DispatchRequest) -> str:
        """Queue the request on one instance of the type; the task is committed on return."""
        return (await self.dispatch(agent_type, request)).id

    async def dispatch(self, agent_type: str, request: DispatchRequest) -> Task:
        """`dispatch_by_type`, returning the queued task itself."""
        placed = await self.store.dispatch(request.task(agent_type, self.clock()))
        self._placed(placed)
        return placed.task

    async def dispatch_all(
        self,
        requests: Sequence[tuple[str, DispatchRequest]],
        settle: Settle | None,
        decision: Decision | None = None,
        cause: Cause | None = None,
        pending: bool = False,
    ) -> Dispatched:
        """Queue a delivery's requests in order, apply the rest of its decision and record
        the delivery as `settle` says, in one transaction (see `Store.dispatch_all`)."""
        tasks = [request.task(agent_type, self.clock()) for agent_type, request in requests]
        separate = frozenset(
            task.id
            for task, (_, request) in zip(tasks, requests, strict=True)
            if not request.coalesce
        )
        dispatched = await self.store.dispatch_all(
            tasks, settle, decision, cause, pending, separate
        )
        for placed in dispatched.placements:
            self._placed(placed)
        return dispatched

    def _placed(self, placed: Placement) -> None:
        """A committed task: wake its instance and announce it."""
        self._wake(placed.task.agent)
        self.bus.publish(
            Event("task.queued", placed.task, {"position": placed.position, "busy": placed.busy})
        )
        if placed.busy:
            self._wake_thieves(placed.task.type)

    def _wake_thieves(self, agent_type: str) -> None:
        """A task waits behind another: idle instances of a stealing type look at once."""
        type_config = self.config.types.get(agent_type)
        if type_config is None or type_config.rebalance != "steal":
            return
        for worker in self.get_workers_by_type(agent_type):
            if worker.idle:
                worker.wake()

    async def steal_for(self, worker: Worker) -> bool:
        """Move queued work of a peer to the idle `worker` and announce it; True if any moved."""
        stolen = await self.store.steal(worker.name, self.clock())
        if stolen is None:
            return False
        for task in stolen.tasks:
            log.info("task %s moved from %s to %s, idle", task.id, stolen.source, task.agent)
            self.bus.publish(Event("task.moved", task, {"from": stolen.source}))
        return True

    def heard(self, wake: Wake) -> None:
        """A wake-up from another node (or this one) through the database: look again."""
        if wake.kind == wakeups.TASK:
            self._wake(wake.target)
        elif wake.kind == wakeups.BUSY:
            self._wake_thieves(wake.target)
        elif wake.kind == wakeups.FREED:
            self.key_freed()
        elif wake.kind == wakeups.STEER and wake.target in self.inboxes:
            self.inboxes[wake.target].arrived()

    def wake_all(self) -> None:
        """Every worker looks again (wake-ups may have been missed while not listening), and
        every running task's steering inbox."""
        for worker in self.workers.values():
            worker.wake()
        for inbox in self.inboxes.values():
            inbox.arrived()

    def _wake(self, agent: str) -> None:
        worker = self.workers.get(agent)
        if worker is not None:
            worker.wake()

    async def _redispatch(self, entries: Iterable[QueueEntry]) -> None:
        for entry in entries:
            try:
                await self._redispatch_one(entry)
            except Exception:
                # Off its disabled instance and still queued there: try again shortly.
                log.exception("could not move task %s; trying again shortly", entry.id)
                self._stranded = True

    async def retry_stranded(self) -> None:
        """Try again to move the tasks a store fault left on a disabled instance."""
        if self._stranded:
            self._stranded = False
            await self._redispatch(await self.store.orphaned_tasks())

    async def _redispatch_one(self, entry: QueueEntry) -> None:
        try:
            moved = await self.store.reassign_task(entry.id)
        except NoInstanceError:
            await self.store.fail_queued(
                entry.id,
                f"instance {entry.agent!r} was disabled or removed and no enabled "
                f"instance of type {entry.type!r} is left to take the task",
                self.clock(),
            )
            return
        if moved is not None:
            self._wake(moved.agent)
            log.info("task %s moved from %s to %s", entry.id, entry.agent, moved.agent)

    async def waits(self) -> dict[str, str]:
        """Instance -> why the head of its queue waits: its concurrency group (from the
        database, so the instances of every node are seen) or a budget of its repository
        (as this node's workers saw it)."""
        waits = await self.store.group_waits()
        for name, worker in self.workers.items():
            if worker.waiting is not None:
                waits[name] = worker.waiting
        return waits

    async def notice_waiting(self, task_id: str, reason: str) -> None:
        """Tell the task's issue, once per task, that it waits for its group."""
        if task_id in self._noticed:
            return
        self._noticed.add(task_id)
        task = await self.store.get_task(task_id)
        if task is not None:
            self.bus.publish(Event("task.waiting", task, {"reason": reason}))

    async def gate(self, task_id: str | None) -> Gate | None:
        """The policy's word on a queued task about to start; a refused task is ended here
        (cancelled or failed, with the reason) and the instance looks at its queue again."""
        if task_id is None or not self.policies.active:
            return None
        task = await self.store.get_task(task_id)
        if task is None or task.state is not TaskState.QUEUED:
            return None
        gate = await self.policies.gate(task)
        if gate.refusal is None:
            return gate
        now = self.clock()
        if gate.cancel:
            cause = Cause("the repository's policy", None, now, reason=gate.refusal)
            ended = bool((await self.store.cancel_tasks([task.id], cause)).cancelled)
        else:
            ended = await self.store.fail_queued(task.id, gate.refusal, now)
        if ended:
            log.warning("task %s not started: %s", task.id, gate.refusal)
            await self.publish_finished(task.id)
        self._wake(task.agent)
        return gate

    def key_freed(self) -> None:
        """A task ended: workers whose head waits for a session key look again."""
        for worker in self.workers.values():
            if worker.blocked:
                worker.wake()

    # running

    async def prepare_and_run(self, task: Task) -> RunResult:
        """Set up the workdir, then run: one coroutine, so cancel and timeout cover both."""
        type_config = self.config.types[task.type]
        try:
            sandbox = self.known_sandbox(task)
            if sandbox is None and self.confined(task):
                sandbox = await asyncio.to_thread(self.sandbox_for, task)
        except SandboxError as exc:
            return RunResult(succeeded=False, error=f"cannot sandbox the agent: {exc}")
        try:
            workdir = await self.workspaces.prepare(task, type_config, sandbox)
        except WorkspaceError as exc:
            return RunResult(succeeded=False, error=f"cannot prepare the workdir: {exc}")
        policy = RunPolicy()
        if self.policies.active:
            policy = await self.policies.for_run(task)
        try:
            cage = self._cage(task, workdir)
        except OSError as exc:
            return RunResult(succeeded=False, error=f"cannot set the agent's limits: {exc}")
        self.inboxes[task.id] = Inbox(self.store.steering, task.id, self.clock)
        context = replace(
            self._context(task, workdir, sandbox, cage),
            type_config=await self._variant_config(task),
            **policy.context,
        )
        session: EgressSession | None = None
        try:
            if sandbox is not None and type_config.runner != "merge":  # merge runs no agent
                session = await self.egress.open(
                    task.id,
                    task.type,
                    context.type_config,  # the session's variant's, its budget included
                    context.env,
                    sandbox.account,
                    self._keep_egress,
                    policy.egress,
                    None if cage is None else cage.stop,
                )
                context = replace(
                    context,
                    env=session.environment(context.env),
                    bridge=session.socket,
                    listen=session.serve,
                )
            run = self._run_agent(task, context, policy.setup)
            result = await (run if cage is None else cages.enforce(cage, run))
        except asyncio.CancelledError:
            # Stopped mid-run (the agent is gone by now): its work still moves with the session.
            await self.workspaces.save_state(task, type_config, sandbox)
            raise
        finally:
            if session is not None:
                await self._close_egress(session)
            if cage is not None:
                await cage.close()
        if context.forge_tools is not None and context.forge_tools.calls:
            # What the agent did on the forge, and what it was refused: for its status comment.
            calls = list(context.forge_tools.calls)
            self.bus.publish(Event("task.report", task, {"calls": calls}))
        return await self.workspaces.deliver(task, type_config, sandbox, result)

    async def _run_agent(self, task: Task, context: RunContext, setup: Sequence[str]) -> RunResult:
        """The repository's setup commands, then the agent (a merge runs no agent)."""
        if setup and self.config.types[task.type].runner != "merge":
            failed = await run_setup(setup, context)
            if failed is not None:
                return failed
        return await self.runner_for(task.type).run(context)

    async def _close_egress(self, session: EgressSession) -> None:
        """End the run's egress (its token with it) and keep what it refused and metered."""
        await session.close()
        try:
            await self._keep_egress(session)
        except Exception:
            log.exception("task %s: could not store its egress record", session.task_id)

    async def _keep_egress(self, session: EgressSession) -> None:
        blocked, metered = session.blocked(), session.metered()
        if blocked or metered is not None:
            await self.store.egress.put_egress(
                session.task_id, session.agent_type, blocked, metered
            )

    async def _variant_config(self, task: Task) -> TypeConfig:
        """The type's settings with the session's prompt variant applied: the one recorded
        when the session was first seen, so it keeps it for its whole life (no record yet:
        the same seeded choice the record will hold)."""
        if not self.config.types[task.type].variants:
            return self.config.types[task.type]
        try:
            recorded = await self.store.outcomes.variant_of(task.session_key)
        except Exception as exc:
            if not is_storage_fault(exc):
                raise
            log.warning("task %s: its session's variant is not readable now: %s", task.id, exc)
            recorded = None
        if recorded is not None:
            variant = recorded[0]
        else:
            variant = outcomes.variant_of(self.config, task.type, task.session_key)
        return outcomes.with_variant(self.config, task.type, variant)

    def _cage(self, task: Task, workdir: Path) -> cages.Cage | None:
        """The run's limits (`max_processes`, `max_memory`, `max_disk`); none for `merge`."""
        type_config = self.config.types[task.type]
        if self.confinement is None or type_config.runner == "merge":
            return None
        cage = self.confinement.cage(task.id, cages.Caps.of(type_config))
        cage.disk_paths.append(workdir)
        return cage

    def low_disk(self) -> str | None:
        """Why no agent starts, while the data dir's filesystem has less free space than
        `server.min_free_disk` (a full disk would fail runs and the database alike); the
        service keeps answering webhooks and queues their work meanwhile."""
        minimum = self.config.server.min_free_disk
        try:
            free = cages.free_disk(self.config.data_dir)
        except OSError as exc:
            free, note = 0, f"cannot read the free disk of {self.config.data_dir}: {exc}"
        else:
            note = (
                f"no agent starts: {free / (1 << 30):.1f}G free on the data dir's filesystem, "
                f"less than server.min_free_disk = {minimum}"
            )
        low = free < size_bytes(minimum)
        if low != self._disk_was_low:
            self._disk_was_low = low
            if low:
                log.warning("%s", note)
            else:
                log.info("free disk back above server.min_free_disk: agents start again")
        return note if low else None

    def confined(self, task: Task) -> bool:
        """Whether `task`'s agent runs in a sandbox (not a type with `sandbox = false`)."""
        return self.sandbox is not None and self.config.types[task.type].sandbox

    def known_sandbox(self, task: Task) -> Sandbox | None:
        """`sandbox_for` without blocking when its instance's account is known already (its
        runs after the first); None when it is not, or the type runs unconfined."""
        if self.sandbox is None or not self.confined(task):
            return None
        return self.sandbox.known_for(task.agent)

    def sandbox_for(self, task: Task) -> Sandbox | None:
        """The sandbox of `task`'s instance (its own account), None for an unconfined type.
        It may create the account: call it off the event loop."""
        if self.sandbox is None or not self.confined(task):
            return None
        return self.sandbox.for_instance(task.agent)

    def _context(
        self,
        task: Task,
        workdir: Path,
        sandbox: Sandbox | None = None,
        cage: cages.Cage | None = None,
    ) -> RunContext:
        type_config = self.config.types[task.type]

        async def on_process(pid: int, pid_start: int | None) -> None:
            if cage is not None:
                cage.pid = pid
            await self.store.set_process(task.id, pid, pid_start)

        return RunContext(
            task=task,
            type_config=type_config,
            workdir=workdir,
            log_path=self._private_log(task.id),
            env=agent_environment(task, type_config, self.config.forgejo.url),
            cancel_grace=self.config.server.cancel_grace,
            on_process=on_process,
            sandbox=sandbox,
            max_log_bytes=self.config.server.max_log_bytes,
            disk_room=self.disk_room.ok,
            on_progress=lambda progress: self.bus.publish(
                Event("task.progress", task, {"progress": progress})
            ),
            steering=self.inboxes.get(task.id),
            cage=cage,
            forge_tools=ForgeTools(task, type_config, self.forge, self.workspaces, sandbox),
        )

    def log_path(self, task_id: str) -> Path:
        return self.config.data_dir / "logs" / f"{task_id}.log"

    def log_size(self, task_id: str) -> int:
        """The size of the task's log here: where the output of a run starting now begins."""
        try:
            return self.log_path(task_id).stat().st_size
        except FileNotFoundError:
            return 0

    def _private_log(self, task_id: str) -> Path:
        """The task's log, created 0600 before the runner appends to it."""
        return private_file(private_dir(self.config.data_dir / "logs") / f"{task_id}.log")

    # running tasks

    def running_tasks(self) -> list[Task]:
        """The tasks this node's workers run now."""
        return [w.current for w in list(self.workers.values()) if w.current is not None]

    async def follow_up_steers(self, task: Task) -> None:
        """Queue a follow-up for each steering message the ended run did not take. One that
        cannot be queued (its type lost its instances) is logged and stays recorded, not
        followed up, on the task's page."""
        leftovers = await self.store.steering.leftovers(task.id)
        for steer, request in zip(
            leftovers, follow_ups(task, [s.payload for s in leftovers]), strict=True
        ):
            try:
                await self.dispatch(task.type, request)
            except ClaudeHooksError as exc:
                log.warning("steering message %d of task %s waits: %s", steer.id, task.id, exc)
                continue
            await self.store.steering.followed_up(steer.id, self.clock())

    def stop_running(self, task_id: str) -> bool:
        """Stop the task if one of this node's workers runs it; False if none does."""
        for worker in self.workers.values():
            if worker.current is not None and worker.current.id == task_id:
                return worker.cancel_current()
        return False

    async def publish_finished(self, task_id: str) -> None:
        task = await self.store.get_task(task_id)
        if task is not None:
            egress = await self.store.egress.get_egress(task_id)
            self.bus.publish(Event("task.finished", task, {"egress_blocked": egress.blocked}))
