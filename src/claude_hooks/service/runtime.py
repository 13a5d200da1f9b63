"""The running service: store, pool and the watcher that applies changes made by the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from claude_hooks.agents import cages, sandbox
from claude_hooks.agents.runners.base import AgentRunner
from claude_hooks.agents.runners.command import CommandRunner
from claude_hooks.agents.runners.merge import MergeRunner
from claude_hooks.agents.sandbox import Sandbox, SandboxError
from claude_hooks.config import Config
from claude_hooks.errors import ClaudeHooksError
from claude_hooks.forge.gateway import Forge
from claude_hooks.service import control
from claude_hooks.service.ci_watch import CiWatcher
from claude_hooks.service.control import SIGNAL_AGENTS
from claude_hooks.service.events import TASK_CHANGED, Event, EventBus
from claude_hooks.service.intake import Intake
from claude_hooks.service.limits import SIGNAL_BUDGET
from claude_hooks.service.listener import Listener, listen_url
from claude_hooks.service.lockfile import ServiceLock
from claude_hooks.service.node import Node
from claude_hooks.service.notifier import Notifier
from claude_hooks.service.outbox import Drainer
from claude_hooks.service.pending import PendingRetrier
from claude_hooks.service.pod_cost import PodCost, in_cluster
from claude_hooks.service.policies import Policies
from claude_hooks.service.pool import Pool
from claude_hooks.service.private_files import prepare_data_dir, private_dir
from claude_hooks.service.readiness import Readiness
from claude_hooks.service.retention import Retention
from claude_hooks.service.storage_faults import StorageFaults
from claude_hooks.store import wakeups
from claude_hooks.store.base import Store
from claude_hooks.store.decisions import SIGNAL_CANCEL
from claude_hooks.store.faults import fault_reason, is_storage_fault
from claude_hooks.store.sql import SqlStore, Timeouts
from claude_hooks.store.wakeups import Wake

log = logging.getLogger(__name__)


def hidden_paths(config: Config) -> list[Path]:
    """What a sandboxed agent must not see of the service: its data dir, the configuration's
    folder (unless that is a top-level system folder such as /etc), the database's folder."""
    hidden = [config.data_dir.resolve()]
    if config.source is not None and len(config.source.parent.parts) > 2:
        hidden.append(config.source.parent)
    url = config.database_url
    if url.startswith("sqlite:///"):
        hidden.append(Path(url.removeprefix("sqlite:///")).resolve().parent)
    return hidden


class Service:
    """Everything `claude-hooks serve` runs besides HTTP; tests start it in process."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Callable[[], float] = time.time,
        runner_for: Callable[[str], AgentRunner] | None = None,
        insecure_no_signature: bool = False,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.started_at = clock()
        self.insecure_no_signature = insecure_no_signature and config.server.webhook_secret is None
        self._runners: dict[str, AgentRunner] = {}
        self._claude: AgentRunner | None = None
        self.bus = EventBus()
        self.forge = Forge(config)
        self.pool = Pool(
            config,
            store,
            runner_for or self.runner_for,
            clock,
            self.bus,
            self.forge,
            Policies(config, self.forge, self.store.spend, self.clock),
        )
        # Comments are posted by one node: the leader (see `node`).
        self.outbox = Drainer(self.forge, store.outbox, clock, config.server.comment_edit_interval)
        self.faults = StorageFaults(clock)
        self.intake = Intake(
            config,
            self.pool,
            store.intake,
            self.forge,
            clock,
            self.outbox.wake,
            self.insecure_no_signature,
            self.faults,
        )
        self.readiness = Readiness(
            store, self._replay_spool, config.server.database_connect_timeout
        )
        self.notifier = Notifier(
            config, self.forge, self.bus, store.outbox, clock, self.outbox.wake
        )
        self.ci = CiWatcher(config, self.intake, self.forge, clock)
        self.pending = PendingRetrier(config, store.pending, clock, self.intake.retry_pending)
        self.retention = Retention(config, store, self.pool.log_path, clock)
        # CI polling, pending deliveries and posting comments run on the node that leads.
        self.node = Node(
            config,
            store,
            self.pool,
            [self.ci, self.pending, self.outbox],
            clock,
            lambda: len(self.intake.spool.waiting),
        )
        # In a Kubernetes pod, its deletion cost follows this node's work (deploy/kubernetes/).
        cluster = in_cluster(os.environ)
        self.pod_cost = (
            None
            if cluster is None
            else PodCost(cluster, config.server.node, lambda: store.nodes.load(config.server.node))
        )
        self._watcher: asyncio.Task[None] | None = None
        self._last_signal = 0
        self._poke = asyncio.Event()  # a signal was written: look at the signals table now
        url = listen_url(config.database_url)
        self.listener = None if url is None else Listener(url, self._heard, self._reconnected)
        self._lock = ServiceLock(config.data_dir)

    @classmethod
    async def open(
        cls,
        config: Config,
        runner_for: Callable[[str], AgentRunner] | None = None,
        insecure_no_signature: bool = False,
    ) -> Service:
        prepare_data_dir(config.data_dir, config.database_url)
        store = await SqlStore.open(config.database_url, Timeouts.of(config.server))
        return cls(
            config, store, runner_for=runner_for, insecure_no_signature=insecure_no_signature
        )

    def runner_for(self, agent_type: str) -> AgentRunner:
        runner = self._runners.get(agent_type)
        if runner is None:
            runner = self._runners[agent_type] = self._make_runner(agent_type)
        return runner

    def _make_runner(self, agent_type: str) -> AgentRunner:
        type_config = self.config.types[agent_type]
        if type_config.runner == "command":
            return CommandRunner(type_config.command)
        if type_config.runner == "merge":
            return MergeRunner(self.forge, self.config.flows)
        if self._claude is None:
            # Imported only when a type uses it: the SDK takes about a second to import.
            from claude_hooks.agents.runners.claude import ClaudeRunner

            self._claude = ClaudeRunner(self.store, self.config.data_dir)
        return self._claude

    async def set_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable an instance now (the API's way; the CLI's goes through signals)."""
        await control.set_enabled(self.store, name, enabled)
        await self.node.rebalance()
        await self.pool.sync_agents()

    async def start(self, url: str = "") -> None:
        """Take the data dir (one service each), recover, and start the workers."""
        private_dir(self.config.data_dir)
        sandbox = self._sandbox()
        confinement = cages.detect()
        log.info("agents' limits: %s", confinement.describe())
        self._lock.acquire(url)
        try:
            seeds = [(seed.name, seed.type) for seed in self.config.agents]
            added = await self.store.seed_agents(seeds, self.clock())
            if added:
                log.info("registered agents from the configuration: %s", ", ".join(added))
            self._last_signal = await self.store.last_signal_id()
            for agent_type in self.config.types:
                self.pool.runner_for(agent_type)  # at start, not in the first task's time
            await self.node.join()
            await self.pool.start(sandbox, confinement)
            self.intake.spool.open()
        except BaseException:
            self._lock.release()
            raise
        # What an earlier run spooled goes first, before any new delivery is taken.
        await self._replay_spool()
        self.readiness.start()
        self.forge.prepare()
        self.notifier.start()
        await self.node.start()
        self.intake.sweeper.start()
        self.retention.start()
        if self.pod_cost is not None:
            self.pod_cost.start()
        if self.listener is not None:
            self.listener.start()
        self._watcher = asyncio.create_task(self._watch(), name="watch-signals")

    @property
    def unconfined_types(self) -> list[str]:
        """Agent types that run without a sandbox (`sandbox = false`): shown as a warning."""
        return sorted(
            n for n, t in self.config.types.items() if t.runner != "merge" and not t.sandbox
        )

    def _sandbox(self) -> Sandbox | None:
        """Build and probe the agents' sandbox; refuse to start a sandboxed type without one."""
        agent_types = {n: t for n, t in self.config.types.items() if t.runner != "merge"}
        for name in self.unconfined_types:
            log.warning(
                "type %r runs its agents WITHOUT a sandbox (sandbox = false): they can read "
                "the service's secrets and data, and act as its user",
                name,
            )
        confined = sorted(n for n, t in agent_types.items() if t.sandbox)
        if not confined:
            return None
        try:
            return sandbox.build(
                sandbox.find_bwrap(), self.config.server.sandbox_user, hidden_paths(self.config)
            )
        except SandboxError as exc:
            names = ", ".join(confined)
            raise SandboxError(
                f"cannot sandbox the agents of {names}: {exc}; or set sandbox = false "
                "in their [types.<type>] table to run them unconfined"
            ) from None

    async def _replay_spool(self) -> None:
        """Replay the spool's deliveries while the database takes them."""
        if not self.intake.spool.waiting:
            return
        try:
            taken = await self.intake.replay_spool()
        except Exception as exc:
            if not is_storage_fault(exc):
                raise
            self.faults.note(fault_reason(exc))
            return
        log.info("replayed %d spooled deliveries into the database", taken)

    async def stop(self) -> None:
        await self.readiness.stop()
        if self.pod_cost is not None:
            await self.pod_cost.stop()
        if self.listener is not None:
            await self.listener.stop()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.node.stop()
        await self.retention.stop()
        await self.intake.sweeper.stop()
        await self.intake.stop()
        await self.pool.stop()
        await self.node.leave()
        await self.notifier.stop()
        await self.outbox.stop()
        await self.forge.aclose()
        await self.store.close()
        self._lock.release()

    @property
    def listening(self) -> bool:
        """Whether NOTIFY reaches this service now; while not, it polls the signals."""
        return self.listener is not None and self.listener.connected.is_set()

    def _heard(self, wake: Wake) -> None:
        if wake.kind == wakeups.SIGNAL:
            self._poke.set()
        elif wake.kind == wakeups.OUTBOX:
            self.outbox.wake()
        else:
            self.pool.heard(wake)
            if wake.kind in (wakeups.TASK, wakeups.FREED):
                self.bus.publish(Event(TASK_CHANGED))

    def _reconnected(self) -> None:
        """Listening (again): one look at the signals and the queues, nothing missed."""
        self._poke.set()
        self.pool.wake_all()

    async def _watch(self) -> None:
        """Apply the CLI's and other nodes' changes: when a NOTIFY says a signal was
        written, or every poll_interval while not listening (SQLite, or the connection down)."""
        interval = self.config.server.poll_interval
        due = False  # kept when applying fails, so the signals are read again next time
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), interval)
            due = due or self._poke.is_set() or not self.listening
            self._poke.clear()
            try:
                await self.pool.retry_stranded()
                if due:
                    await self.apply_signals()
                    due = False
            except ClaudeHooksError as exc:
                log.warning("could not apply a change made from the CLI: %s", exc)
            except Exception:
                log.exception("watching for changes failed; trying again")

    async def apply_signals(self) -> None:
        found = await self.store.signals_after(self._last_signal)
        if not found:
            return
        if any(signal.kind == SIGNAL_AGENTS for signal in found):
            await self.node.rebalance()
            await self.pool.sync_agents()
        if any(signal.kind == SIGNAL_BUDGET for signal in found):
            await self.pool.limits.reload()
        for signal in found:
            if signal.kind == SIGNAL_CANCEL:
                self.pool.stop_running(signal.target)
        # Only now: signals whose handling failed are read again at the next look.
        self._last_signal = found[-1].id
