"""The running service and its composition root: every object is built here, complete, from
the configuration and the store; `start` and `stop` run the node and its loops in order."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from claude_hooks.agents import cages, sandbox
from claude_hooks.agents.disk_room import DiskRoom
from claude_hooks.agents.runners.base import AgentRunner
from claude_hooks.agents.runners.command import CommandRunner
from claude_hooks.agents.runners.merge import MergeRunner
from claude_hooks.agents.sandbox import Sandbox, SandboxError
from claude_hooks.agents.workspace import Workspaces
from claude_hooks.config import Config, size_bytes
from claude_hooks.core.loop_guard import LoopGuard
from claude_hooks.errors import ConfigError
from claude_hooks.forge.gateway import Forge
from claude_hooks.service.ci_watch import CiWatcher
from claude_hooks.service.commands import Commands
from claude_hooks.service.elastic import Scaler
from claude_hooks.service.events import TASK_CHANGED, Event, EventBus
from claude_hooks.service.forge_commands import ForgeCommands
from claude_hooks.service.intake import Intake
from claude_hooks.service.limits import SIGNAL_BUDGET, BudgetWatch, Limits
from claude_hooks.service.listener import Listener, listen_url
from claude_hooks.service.lockfile import ServiceLock
from claude_hooks.service.loop import Every, Loop
from claude_hooks.service.node import Node
from claude_hooks.service.notifier import Notifier
from claude_hooks.service.outbox import Drainer
from claude_hooks.service.pending import PendingRetrier
from claude_hooks.service.pod_cost import PodCost, in_cluster
from claude_hooks.service.policies import Policies
from claude_hooks.service.pool import Pool
from claude_hooks.service.private_files import prepare_data_dir, private_dir
from claude_hooks.service.readiness import Readiness
from claude_hooks.service.rejections import RejectionLog
from claude_hooks.service.retention import Retention
from claude_hooks.service.spool import Spool
from claude_hooks.service.storage_faults import StorageFaults
from claude_hooks.service.summary import WeeklySummary
from claude_hooks.service.sweep import Sweeper
from claude_hooks.store import wakeups
from claude_hooks.store.base import Store
from claude_hooks.store.decisions import SIGNAL_CANCEL
from claude_hooks.store.elastic import SIGNAL_AGENTS
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
        if store.node != config.server.node:
            raise ConfigError(
                f"the store was opened for node {store.node!r}, not {config.server.node!r}: "
                "open it with SqlStore.open(..., node=config.server.node)"
            )
        self.config = config
        self.store = store
        self.clock = clock
        self.started_at = clock()
        self.insecure_no_signature = insecure_no_signature and config.server.webhook_secret is None
        self._runners: dict[str, AgentRunner] = {}
        self._claude: AgentRunner | None = None
        self.bus = EventBus()
        self.forge = Forge(config)
        sandbox = self._sandbox()  # refused first: a missing sandbox changes nothing
        confinement = cages.detect()
        log.info("agents' limits: %s", confinement.describe())
        self.limits = Limits(config, store, clock, self.bus)
        disk_room = DiskRoom(config.data_dir, size_bytes(config.server.min_free_disk))
        workspaces = Workspaces(
            config.data_dir,
            forgejo_url=config.forgejo.clone_url or config.forgejo.url,
            # Only nodes sharing a database resume each other's sessions.
            states=store.worktree_states if store.shared else None,
            max_state_bytes=config.server.max_worktree_state_bytes,
            node=config.server.node,
            room=disk_room.ok,
        )
        self.pool = Pool(
            config,
            store,
            runner_for or self.runner_for,
            clock,
            self.bus,
            self.limits,
            self.forge,
            Policies(config, self.forge, self.store.spend, self.clock),
            sandbox,
            confinement,
            workspaces,
            disk_room,
        )
        self.commands = Commands(config, store, clock, self.pool, self.agents_changed)
        # The hard budget stops runs through the one cancel (`commands`).
        self.budget_watch = BudgetWatch(
            self.limits, self.bus, self.pool.running_tasks, self.commands.cancel
        )
        # Comments are posted by one node: the leader (see `node`).
        self.outbox = Drainer(self.forge, store.outbox, clock, config.server.comment_edit_interval)
        self.faults = StorageFaults(clock)
        self.sweeper = Sweeper(config, workspaces, store.intake, self.forge)
        spool = Spool(config.spool_dir, config.server.spool_max_bytes)
        self.intake = Intake(
            config,
            self.pool,
            store.intake,
            self.forge,
            clock,
            self.outbox.wake,
            lambda: self.pending.wake(),  # the retrier is made below, with the intake's retry
            ForgeCommands(config, self.commands, self.pool, self.forge, clock),
            self.sweeper,
            spool,
            LoopGuard(config, clock),
            RejectionLog(store.rejections, config.server.max_rejections_per_hour, clock),
            self.faults,
            self.insecure_no_signature,
        )
        self.readiness = Readiness(
            store, self._replay_spool, config.server.database_connect_timeout
        )
        self.notifier = Notifier(
            config, self.forge, self.bus, store.outbox, clock, self.outbox.wake
        )
        self.ci = CiWatcher(config, self.intake, self.forge, clock)
        self.pending = PendingRetrier(
            config,
            store.pending,
            clock,
            self.intake.retry_pending,
            self.intake.crowded,
            self.intake.horizon,
        )
        self.retention = Retention(config, store, self.pool.log_path, clock)
        self.summary = WeeklySummary(config, store.outcomes, clock, self.outbox.wake)
        self.scaler = Scaler(config, store, self.agents_changed, clock)
        # CI polling, pending deliveries, posting comments, the weekly summary and elastic
        # instances run on the node that leads.
        self.node = Node(
            config,
            store,
            self.pool,
            [self.ci, self.pending, self.outbox, self.summary, self.scaler],
            clock,
            lambda: len(spool.waiting),
        )
        # In a Kubernetes pod, its deletion cost follows this node's work (deploy/kubernetes/).
        cluster = in_cluster(os.environ)
        self.pod_cost = (
            None
            if cluster is None
            else PodCost(cluster, config.server.node, lambda: store.nodes.load(config.server.node))
        )
        self._last_signal = 0
        self._signalled = False  # a signal was written: look at the signals table now
        # Applies the CLI's and other nodes' changes (see `_look`).
        self.watcher = Every("watch-signals", config.server.poll_interval, self._look)
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
        timeouts = Timeouts.of(config.server)
        store = await SqlStore.open(config.database_url, timeouts, node=config.server.node)
        try:
            return cls(
                config, store, runner_for=runner_for, insecure_no_signature=insecure_no_signature
            )
        except BaseException:
            await store.close()  # e.g. no sandbox for a sandboxed type
            raise

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

    async def agents_changed(self) -> None:
        """The instances changed (here or from another process): take or let go of them by
        the share rule, and bring the workers in line."""
        await self.node.rebalance()
        await self.pool.sync_agents()

    async def start(self, url: str = "") -> None:
        """Take the data dir (one service each), recover, and start the workers."""
        private_dir(self.config.data_dir)
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
            await self.pool.start()
            self.budget_watch.start()
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
        self.sweeper.start()
        self.retention.start()
        if self.pod_cost is not None:
            self.pod_cost.start()
        if self.listener is not None:
            self.listener.start()
        self.watcher.start()

    @property
    def loops(self) -> list[Loop]:
        """Every background loop of this node, running or not (the leader's duties too)."""
        found: list[Loop] = [
            self.readiness,
            self.notifier,
            self.node.heartbeat,
            self.watcher,
            self.budget_watch.loop,
            self.sweeper.closed,
            self.sweeper.periodic,
            self.retention,
            self.ci,
            self.pending,
            self.outbox,
            self.scaler,
        ]
        optional = [loop for loop in (self.listener, self.pod_cost) if loop is not None]
        return [*found, *optional]

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
        await self.watcher.stop()
        await self.node.stop()
        await self.retention.stop()
        await self.sweeper.stop()
        await self.intake.stop()
        await self.pool.stop()
        await self.budget_watch.stop()
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
            self._signal()
        elif wake.kind == wakeups.OUTBOX:
            self.outbox.wake()
        else:
            self.pool.heard(wake)
            if wake.kind in (wakeups.TASK, wakeups.FREED):
                self.bus.publish(Event(TASK_CHANGED))

    def _reconnected(self) -> None:
        """Listening (again): one look at the signals and the queues, nothing missed."""
        self._signal()
        self.pool.wake_all()

    def _signal(self) -> None:
        self._signalled = True
        self.watcher.wake()

    async def _look(self) -> None:
        """Apply the CLI's and other nodes' changes: when a NOTIFY says a signal was
        written, or every poll_interval while not listening (SQLite, or the connection down)."""
        due = self._signalled or not self.listening
        self._signalled = False
        try:
            await self.pool.retry_stranded()
            if due:
                await self.apply_signals()
        except BaseException:
            self._signalled |= due  # read the signals again at the next pass
            raise

    async def apply_signals(self) -> None:
        found = await self.store.signals_after(self._last_signal)
        if not found:
            return
        if any(signal.kind == SIGNAL_AGENTS for signal in found):
            await self.agents_changed()
        if any(signal.kind == SIGNAL_BUDGET for signal in found):
            await self.limits.reload()
            await self.budget_watch.enforce()
        for signal in found:
            if signal.kind == SIGNAL_CANCEL:
                self.pool.stop_running(signal.target)
        # Only now: signals whose handling failed are read again at the next look.
        self._last_signal = found[-1].id
