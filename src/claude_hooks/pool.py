"""Workers and the registry: one worker per enabled instance, dispatch by type.

The pool keeps each worker's FIFO queue in memory (ids only; payloads stay in the database)
and writes every change to the store before it is visible in memory, so a crash loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from claude_hooks import processes, resources
from claude_hooks.agent_env import agent_environment
from claude_hooks.config import Config
from claude_hooks.domain import DispatchRequest, Task, TaskState, new_task_id
from claude_hooks.errors import ConflictError, NoInstanceError, UnknownAgentError, UnknownTaskError
from claude_hooks.events import Event, EventBus
from claude_hooks.forge import Forge
from claude_hooks.forge_tools import ForgeTools
from claude_hooks.limits import Limits
from claude_hooks.private_files import private_dir, private_file
from claude_hooks.runners.base import AgentRunner, RunContext, RunResult
from claude_hooks.sandbox import Sandbox
from claude_hooks.scheduler import Candidate, choose
from claude_hooks.store.base import Outcome, QueueEntry, Store
from claude_hooks.workspace import WorkspaceError, Workspaces

log = logging.getLogger(__name__)

RunnerFactory = Callable[[str], AgentRunner]
RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class CancelResult:
    task_id: str
    state: TaskState  # the state the task was in when the cancel arrived
    agent: str


class Worker:
    """One instance: a FIFO queue and at most one running task."""

    def __init__(self, pool: Pool, name: str, agent_type: str, enabled: bool) -> None:
        self.pool = pool
        self.name = name
        self.type = agent_type
        self.enabled = enabled
        self.retiring = False
        self.queue: deque[QueueEntry] = deque()
        self.current: QueueEntry | None = None
        self.current_task: Task | None = None
        self._cancel_current = False
        self._run: asyncio.Task[RunResult] | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._unfinished: tuple[Task, Outcome] | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.name} type={self.type} queued={len(self.queue)}>"

    @property
    def idle(self) -> bool:
        return self.current is None and not self.queue

    @property
    def state(self) -> str:
        if self.current is not None:
            return "busy"
        return "idle" if self.enabled else "disabled"

    def enqueue(self, entry: QueueEntry) -> None:
        self.queue.append(entry)
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
        self._cancel_current = True
        if self._run is not None:
            self._run.cancel()
        return True

    def drop(self, task_id: str) -> QueueEntry | None:
        for entry in self.queue:
            if entry.id == task_id:
                self.queue.remove(entry)
                return entry
        return None

    async def _serve(self) -> None:
        while True:
            try:
                if self._unfinished is not None:
                    await self._record(*self._unfinished)
                if not self.queue:
                    if self.retiring:
                        self.pool._retired(self)
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                head = self.queue[0]
                if await self.pool.limits.wait_until_open(self.type, head.id):
                    continue
                await self._take(head)
            except Exception:
                # A store or runner fault must not end the worker: its queue would wait forever.
                log.exception(
                    "worker %s hit an error; it goes on in %g s", self.name, RETRY_SECONDS
                )
                await asyncio.sleep(RETRY_SECONDS)

    async def _take(self, entry: QueueEntry) -> None:
        """Start the entry at the head of the queue, run it, record how it ended."""
        self.current = entry
        self._cancel_current = False
        try:
            await self.pool._claim_key(entry.session_key, self)
            if entry not in self.queue:
                return  # cancelled or moved to another instance while this one waited
            # The store runs inline on this thread: nothing moves the entry before it starts.
            task = await self.pool.store.start_task(entry.id, self.name, self.pool.clock())
            self.queue.remove(entry)
            if task is None:
                self.pool._release(entry)
                return
            self.current_task = task
            self.pool.bus.publish(Event("task.started", task))
            outcome = await self._execute(task)
            if outcome is None:
                await self._requeue_exhausted(task, entry)
                return
            if await self.pool.limits.after_run(task, outcome):
                await self.pool.store.requeue_interrupted(task.id, self.pool.clock())
                self.queue.appendleft(entry)
                return
            self._unfinished = (task, outcome)
            await self._record(task, outcome)
        finally:
            self.pool._free_key(entry.session_key, self)
            self.current = None
            self.current_task = None
            self._run = None

    async def _record(self, task: Task, outcome: Outcome) -> None:
        """Save how a run ended; kept for another try if the store fails, so it is never lost."""
        await self.pool.store.finish_task(task.id, outcome, self.pool.clock())
        self._unfinished = None
        self.pool._release_id(task.session_key, self)
        log.info("task %s on %s: %s", task.id, self.name, outcome.state.value)
        try:
            await self.pool.publish_finished(task.id)
        except Exception:
            log.exception("could not announce the end of task %s", task.id)

    async def _requeue_exhausted(self, task: Task, entry: QueueEntry) -> None:
        """Back to the head of the queue: the run could not start for want of descriptors or
        processes, which passes; it starts again after a pause, its attempt not counted."""
        await self.pool.store.requeue_interrupted(task.id, self.pool.clock())
        self.queue.insert(0, entry)
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
        self._run = asyncio.create_task(pool._prepare_and_run(task), name=f"run-{task.id}")
        try:
            done, _ = await asyncio.wait({self._run}, timeout=type_config.timeout)
        except asyncio.CancelledError:
            # The service is stopping: stop the agent, hand the task back to its queue.
            self._run.cancel()
            await asyncio.gather(self._run, return_exceptions=True)
            await pool.store.requeue_interrupted(task.id, pool.clock())
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


class Pool:
    """The registry of workers and `dispatch_by_type`."""

    def __init__(
        self,
        config: Config,
        store: Store,
        runner_for: RunnerFactory,
        clock: Callable[[], float] = time.time,
        bus: EventBus | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.runner_for = runner_for
        self.clock = clock
        self.bus = bus or EventBus()
        self.workspaces = Workspaces(
            config.data_dir, forgejo_url=config.forgejo.clone_url or config.forgejo.url
        )
        self.workers: dict[str, Worker] = {}
        self.cursors: dict[str, int] = {}
        # session key -> {worker name: how many of its tasks that worker holds}
        self._holders: dict[str, dict[str, int]] = {}
        self._running_keys: dict[str, Worker] = {}
        self._key_freed = asyncio.Condition()
        self._locks: dict[str, asyncio.Lock] = {}
        self._stranded: list[QueueEntry] = []
        self._unknown_types_warned: set[str] = set()
        self.limits = Limits(config, store, clock, self.bus, self)
        # Set by the service once bubblewrap is probed; types with `sandbox = true` use it.
        self.sandbox: Sandbox | None = None
        # Set by the service: the forge the agents' forge tools act on.
        self.forge: Forge | None = None

    # registry

    def get_worker(self, name: str) -> Worker:
        try:
            return self.workers[name]
        except KeyError:
            raise UnknownAgentError(name) from None

    def get_workers_by_type(self, agent_type: str) -> list[Worker]:
        """Enabled workers of a type, sorted by name: the candidates of a dispatch."""
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
        """Recover from a crash, build one worker per instance, load the queues, start."""
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
        self.cursors = await self.store.load_cursors()
        await self.limits.reload()
        for agent in await self.store.list_agents():
            self._add_worker(agent.name, agent.type, agent.enabled)
        orphans: list[QueueEntry] = []
        for entry in await self.store.queue_entries():
            worker = self.workers.get(entry.agent)
            if worker is None or not worker.enabled:
                orphans.append(entry)
            else:
                worker.queue.append(entry)
                self._hold(entry.session_key, worker.name)
        for worker in self.workers.values():
            worker.start()
        self.limits.start()
        await self._redispatch(orphans)

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in list(self.workers.values())))
        await self.limits.stop()

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

    def _retired(self, worker: Worker) -> None:
        if self.workers.get(worker.name) is worker:
            del self.workers[worker.name]

    async def sync_agents(self) -> None:
        """Bring the workers in line with the `agents` table (changed by the CLI)."""
        rows = {agent.name: agent for agent in await self.store.list_agents()}
        orphans: list[QueueEntry] = []
        for name, agent in rows.items():
            worker = self.workers.get(name)
            if worker is None:
                worker = self._add_worker(name, agent.type, agent.enabled)
                if worker is not None:
                    worker.start()
                    log.info("agent %s (%s) added", name, agent.type)
                continue
            worker.retiring = False
            if worker.enabled and not agent.enabled:
                worker.enabled = False
                orphans.extend(self._take_queue(worker))
                log.info("agent %s disabled", name)
            elif agent.enabled and not worker.enabled:
                worker.enabled = True
                log.info("agent %s enabled", name)
        for name, worker in list(self.workers.items()):
            if name not in rows and not worker.retiring:
                worker.retiring = True
                worker.enabled = False
                orphans.extend(self._take_queue(worker))
                worker._wake.set()
                log.info("agent %s removed", name)
        await self._redispatch(orphans)

    def _take_queue(self, worker: Worker) -> list[QueueEntry]:
        entries = list(worker.queue)
        worker.queue.clear()
        for entry in entries:
            self._release(entry)
        return entries

    # dispatch

    def _lock(self, agent_type: str) -> asyncio.Lock:
        lock = self._locks.get(agent_type)
        if lock is None:
            lock = self._locks[agent_type] = asyncio.Lock()
        return lock

    def _place(self, agent_type: str, session_key: str) -> tuple[Worker, int]:
        candidates = self.get_workers_by_type(agent_type)
        if not candidates:
            raise NoInstanceError(agent_type)
        holders = self._holders.get(session_key)
        holder = next((w.name for w in candidates if holders and w.name in holders), None)
        snapshot = [Candidate(w.name, w.current is not None, len(w.queue)) for w in candidates]
        choice = choose(snapshot, self.cursors.get(agent_type, 0), holder)
        return candidates[choice.index], choice.cursor

    async def dispatch_by_type(self, agent_type: str, request: DispatchRequest) -> str:
        """Queue the request on one instance of the type; the task is committed on return."""
        return (await self.dispatch(agent_type, request)).id

    async def dispatch(self, agent_type: str, request: DispatchRequest) -> Task:
        """`dispatch_by_type`, returning the queued task itself."""
        async with self._lock(agent_type):
            worker, cursor = self._place(agent_type, request.session_key)
            now = self.clock()
            task = Task(
                id=new_task_id(now),
                type=agent_type,
                agent=worker.name,
                kind=request.kind,
                session_key=request.session_key,
                repo=request.repo,
                number=request.number,
                state=TaskState.QUEUED,
                seq=0,
                enqueued_at=now,
                payload=request.payload,
                delivery_id=request.delivery_id,
            )
            seq = await self.store.insert_task(task, (agent_type, cursor))
            self.cursors[agent_type] = cursor
            worker.enqueue(
                QueueEntry(task.id, worker.name, agent_type, task.session_key, task.kind.value, seq)
            )
            self._hold(task.session_key, worker.name)
            task.seq = seq
            self.bus.publish(
                Event("task.queued", task, {"position": len(worker.queue), "busy": not worker.idle})
            )
            return task

    async def _redispatch(self, entries: Iterable[QueueEntry]) -> None:
        for entry in entries:
            try:
                await self._redispatch_one(entry)
            except Exception:
                # Off its disabled instance and in no queue: keep it, and try again.
                log.exception("could not move task %s; trying again shortly", entry.id)
                self._stranded.append(entry)

    async def retry_stranded(self) -> None:
        """Try again to move the tasks a store fault left between two instances."""
        if self._stranded:
            stranded, self._stranded = self._stranded, []
            await self._redispatch(stranded)

    async def _redispatch_one(self, entry: QueueEntry) -> None:
        async with self._lock(entry.type):
            try:
                worker, cursor = self._place(entry.type, entry.session_key)
            except NoInstanceError:
                await self.store.fail_queued(
                    entry.id,
                    f"instance {entry.agent!r} was disabled or removed and no enabled "
                    f"instance of type {entry.type!r} is left to take the task",
                    self.clock(),
                )
                return
            seq = await self.store.reassign_task(entry.id, worker.name, (entry.type, cursor))
            if seq is None:
                return
            self.cursors[entry.type] = cursor
            moved = QueueEntry(
                entry.id, worker.name, entry.type, entry.session_key, entry.kind, seq
            )
            worker.enqueue(moved)
            self._hold(entry.session_key, worker.name)
            log.info("task %s moved from %s to %s", entry.id, entry.agent, worker.name)

    # session keys: where they are held, and that one runs at a time

    def _hold(self, session_key: str, worker_name: str) -> None:
        holders = self._holders.get(session_key)
        if holders is None:
            self._holders[session_key] = {worker_name: 1}
        else:
            holders[worker_name] = holders.get(worker_name, 0) + 1

    def _release(self, entry: QueueEntry) -> None:
        self._release_name(entry.session_key, entry.agent)

    def _release_id(self, session_key: str, worker: Worker) -> None:
        self._release_name(session_key, worker.name)

    def _release_name(self, session_key: str, worker_name: str) -> None:
        holders = self._holders.get(session_key)
        if holders is None:
            return
        remaining = holders.get(worker_name, 0) - 1
        if remaining > 0:
            holders[worker_name] = remaining
        else:
            holders.pop(worker_name, None)
        if not holders:
            del self._holders[session_key]

    async def _claim_key(self, session_key: str, worker: Worker) -> None:
        """Wait until no other worker runs this session key (e.g. a disabled one finishing)."""
        async with self._key_freed:
            await self._key_freed.wait_for(
                lambda: self._running_keys.get(session_key, worker) is worker
            )
            self._running_keys[session_key] = worker

    def _free_key(self, session_key: str, worker: Worker) -> None:
        if self._running_keys.get(session_key) is worker:
            del self._running_keys[session_key]
            asyncio.get_running_loop().create_task(self._notify_key_freed())

    async def _notify_key_freed(self) -> None:
        async with self._key_freed:
            self._key_freed.notify_all()

    # running

    async def _prepare_and_run(self, task: Task) -> RunResult:
        """Set up the workdir, then run: one coroutine, so cancel and timeout cover both."""
        type_config = self.config.types[task.type]
        sandbox = self.sandbox_of(task.type)
        try:
            workdir = await self.workspaces.prepare(task, type_config, sandbox)
        except WorkspaceError as exc:
            return RunResult(succeeded=False, error=f"cannot prepare the workdir: {exc}")
        result = await self.runner_for(task.type).run(self._context(task, workdir))
        return await self.workspaces.deliver(task, type_config, sandbox, result)

    def sandbox_of(self, agent_type: str) -> Sandbox | None:
        return self.sandbox if self.config.types[agent_type].sandbox else None

    def _context(self, task: Task, workdir: Path) -> RunContext:
        type_config = self.config.types[task.type]

        async def on_process(pid: int, pid_start: int | None) -> None:
            await self.store.set_process(task.id, pid, pid_start)

        return RunContext(
            task=task,
            type_config=type_config,
            workdir=workdir,
            log_path=self._private_log(task.id),
            env=agent_environment(task, type_config, self.config.forgejo.url),
            cancel_grace=self.config.server.cancel_grace,
            on_process=on_process,
            sandbox=self.sandbox_of(task.type),
            max_log_bytes=self.config.server.max_log_bytes,
            forge_tools=None
            if self.forge is None
            else ForgeTools(
                task, type_config, self.forge, self.workspaces, self.sandbox_of(task.type)
            ),
        )

    def log_path(self, task_id: str) -> Path:
        return self.config.data_dir / "logs" / f"{task_id}.log"

    def _private_log(self, task_id: str) -> Path:
        """The task's log, created 0600 before the runner appends to it."""
        return private_file(private_dir(self.config.data_dir / "logs") / f"{task_id}.log")

    # cancel

    async def cancel_task(self, task_id: str) -> CancelResult:
        """Cancel a queued or running task; ConflictError if it has already finished."""
        task = await self.store.get_task(task_id)
        if task is None:
            raise UnknownTaskError(task_id)
        if task.state is TaskState.QUEUED:
            if await self.store.cancel_queued(task_id, "cancelled while queued", self.clock()):
                self._forget(task.agent, task_id)
                await self.publish_finished(task_id)
                return CancelResult(task_id, TaskState.QUEUED, task.agent)
            task = await self.store.get_task(task_id)
            assert task is not None
        if task.state is TaskState.RUNNING:
            await self.store.request_cancel(task_id)
            worker = self.workers.get(task.agent)
            if worker is not None and worker.current is not None and worker.current.id == task_id:
                worker.cancel_current()
            return CancelResult(task_id, TaskState.RUNNING, task.agent)
        self._forget(task.agent, task_id)
        raise ConflictError(f"task {task_id} has already finished ({task.state.value})")

    async def publish_finished(self, task_id: str) -> None:
        task = await self.store.get_task(task_id)
        if task is not None:
            self.bus.publish(Event("task.finished", task))

    def _forget(self, agent: str, task_id: str) -> None:
        """Drop a task that left the queue in the database (cancelled by the CLI) from memory."""
        worker = self.workers.get(agent)
        if worker is not None:
            entry = worker.drop(task_id)
            if entry is not None:
                self._release(entry)

    async def cancel_agent(self, name: str) -> str:
        worker = self.get_worker(name)
        current = worker.current
        if current is None:
            raise ConflictError(f"agent {name!r} is idle: it has no task to cancel")
        await self.cancel_task(current.id)
        return current.id
