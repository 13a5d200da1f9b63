"""This process as a node of the cluster: it joins, heartbeats its lease, holds instances,
and leads the duties that must run once across all nodes.

Each beat (a third of the lease, at most 5 s) renews the lease, renews or takes the lead,
rescues the work of dead nodes when leading, and takes or lets go of instances by the share
rule (`node_share`). A failed beat is tried again within half a second. A node that finds
itself declared dead, or cannot renew its lease before it runs out (a second before, a
sixth of the lease at most), stops its agents at once: its tasks are, or will be, run
elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from claude_hooks.config import Config
from claude_hooks.service.loop import Every, Loop
from claude_hooks.store.base import Store
from claude_hooks.store.faults import is_disconnect
from claude_hooks.store.nodes import NodeInfo

log = logging.getLogger(__name__)

LEAD_DUTY = "cluster"
MAX_BEAT_SECONDS = 5.0
RENEW_TRIES = 5
# After a failed beat the next try comes this soon; a node stops its agents this long (at
# most a sixth of the lease) before its lease would run out.
RETRY_BEAT = 0.5
FENCE_MARGIN = 1.0


class Holder(Protocol):
    """What the node tells of the instances it holds: the pool."""

    async def sync_agents(self) -> None: ...
    async def drop_all(self) -> None: ...


def beat_seconds(lease_seconds: float) -> float:
    return min(lease_seconds / 3, MAX_BEAT_SECONDS)


class Node:
    """`duties`: the loops that run on the leader only, started and stopped with the lead;
    `heartbeat`: the loop that beats (`_beat_in_time`)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        holder: Holder,
        duties: Sequence[Loop],
        clock: Callable[[], float],
        spooled: Callable[[], int],
    ) -> None:
        server = config.server
        self.spooled = spooled  # deliveries in this node's spool, told with each heartbeat
        self.config = config
        self.store = store
        self.holder = holder
        self.duties = list(duties)
        self.clock = clock
        self.info = NodeInfo(
            name=server.node,
            incarnation=uuid.uuid4().hex,
            host=socket.gethostname(),
            pid=os.getpid(),
            url=server.node_url,
            capacity=server.capacity,
            lease_seconds=server.lease_seconds,
            types=frozenset(config.types),
        )
        self.leading = False
        self._renewed = 0.0  # monotonic time of the last renewed lease
        self._offset = 0.0  # the database's clock minus this node's (see `now`)
        interval = beat_seconds(self.info.lease_seconds)
        self.heartbeat = Every("node-heartbeat", interval, self._beat_in_time)
        self._fenced = False  # agents were stopped: rebuild the workers at the next beat

    @property
    def name(self) -> str:
        return self.info.name

    def now(self) -> float:
        """The database's time as this node estimates it: leases, heartbeats and expiries are
        all counted on that one clock, so nodes whose own clocks drift still agree."""
        return self.clock() + self._offset

    async def _sync_clock(self) -> None:
        """Measure the offset of the database's clock from this node's (PostgreSQL; SQLite
        serves one node, whose clock is the only one)."""
        if not self.store.shared:
            return
        before = self.clock()
        database = await self.store.database_time()
        self._offset = database - (before + self.clock()) / 2

    async def join(self) -> None:
        """Register (refused if a live namesake exists), then take this node's instances."""
        await self._sync_clock()
        await self.store.nodes.join(self.info, self.now())
        self._renewed = time.monotonic()
        await self.store.nodes.rebalance(self.info, self.now())

    async def start(self) -> None:
        """Take the lead if it is free (starting the duties), then beat."""
        await self._lead()
        self.heartbeat.start()

    async def stop(self) -> None:
        await self.heartbeat.stop()
        await self._step_down()

    async def leave(self) -> None:
        """After the workers stopped: let go of the instances and the lead."""
        released = await self.store.nodes.leave(self.info, self.now())
        if released:
            log.info("node %s stops and lets go of %s", self.name, ", ".join(released))

    async def _beat_in_time(self) -> float:
        """One pass of the heartbeat: beat, or fence when the lease runs out first; the
        seconds until the next pass (sooner after a failed beat)."""
        lease = self.info.lease_seconds
        interval = beat_seconds(lease)
        margin = min(FENCE_MARGIN, lease / 6)
        left = self._renewed + lease - margin - time.monotonic()
        if left <= 0:
            await self._fence("its lease could not be renewed")
        try:
            # A beat that hangs (a lock held elsewhere, a partition) is given up: the store
            # call waits on its own thread (see `store.offload`), not on this loop.
            async with asyncio.timeout(min(interval, left) if left > 0 else interval):
                await self.beat()
        except Exception as exc:
            why = "no answer" if isinstance(exc, TimeoutError) else repr(exc)
            log.warning("node %s: heartbeat failed (%s); trying again", self.name, why)
            left = self._renewed + lease - margin - time.monotonic()
            if left <= 0:
                # Stopped before the lease runs out and other nodes may take the work.
                await self._fence("its lease could not be renewed")
            else:
                return min(RETRY_BEAT, left)
        return interval

    async def beat(self) -> None:
        sent = time.monotonic()
        await self._sync_clock()
        if not await self._renew():
            await self._fence("the other nodes declared it dead")
            self.info = replace(self.info, incarnation=uuid.uuid4().hex)
            await self.store.nodes.join(self.info, self.now())
        self._renewed = sent
        await self._lead()
        rescued = []
        if self.leading:
            rescued = await self.store.nodes.rescue(self.config.server.max_attempts, self.now())
            for task in rescued:
                log.warning(
                    "task %s on %s was running on a dead node: now %s",
                    task.id,
                    task.agent,
                    task.state.value,
                )
        if self._fenced:
            # The agents it stopped left their tasks running in the database (when no other
            # node declared this one dead and rescued them): back to the head of their queues.
            why = "its node lost its lease"
            for task in await self.store.recover(self.config.server.max_attempts, self.now(), why):
                log.warning("task %s, stopped by the fence, is now %s", task.id, task.state.value)
        if await self.rebalance() or rescued or self._fenced:
            self._fenced = False
            await self.holder.sync_agents()

    async def _renew(self) -> bool:
        """The heartbeat, tried again at once on a connection the database dropped (after it
        restarted, each pooled connection fails once): such a failure must not cost a beat."""
        for _ in range(RENEW_TRIES - 1):
            try:
                return await self.store.nodes.heartbeat(self.info, self.now(), self.spooled())
            except Exception as exc:
                if not is_disconnect(exc):
                    raise
        return await self.store.nodes.heartbeat(self.info, self.now(), self.spooled())

    async def rebalance(self) -> bool:
        """Take and let go of instances by the share rule; True if any moved."""
        moved = await self.store.nodes.rebalance(self.info, self.now())
        for name in moved.take:
            log.info("node %s holds %s", self.name, name)
        for name in moved.release:
            log.info("node %s lets %s go", self.name, name)
        return bool(moved.take or moved.release)

    async def _lead(self) -> None:
        leading = await self.store.nodes.lead(LEAD_DUTY, self.info, self.now())
        if leading and not self.leading:
            # One SQLite host is no cluster: it always leads, and saying so misleads.
            if not self.config.database_url.startswith("sqlite"):
                log.info("node %s leads the cluster's duties", self.name)
            for duty in self.duties:
                duty.start()
        elif self.leading and not leading:
            log.warning("node %s no longer leads the cluster's duties", self.name)
            await self._stop_duties()
        self.leading = leading

    async def _step_down(self) -> None:
        if self.leading:
            await self._stop_duties()
            self.leading = False
            with contextlib.suppress(Exception):
                async with asyncio.timeout(beat_seconds(self.info.lease_seconds)):
                    await self.store.nodes.resign(LEAD_DUTY, self.info)

    async def _stop_duties(self) -> None:
        for duty in self.duties:
            await duty.stop()

    async def _fence(self, why: str) -> None:
        """Stop every agent of this node now: its work is, or may be, running elsewhere."""
        if self._fenced:
            return  # stopped already; the workers come back at the next renewed lease
        log.error("node %s stops its agents: %s", self.name, why)
        await self._step_down()
        await self.holder.drop_all()
        self._fenced = True
