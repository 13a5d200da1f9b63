"""Retention: finished tasks' logs and old deliveries' bodies go after `server.retention_days`.

Rows stay, marked pruned, so the history (who did what, when, at what cost) is kept while the
bulk — logs can reach megabytes per task — does not grow without bound. Rejections older than
that are dropped entirely: they are refused input, not history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from claude_hooks.config import Config
from claude_hooks.service.loop import Loop
from claude_hooks.store.base import Store

log = logging.getLogger(__name__)

DAY = 86400.0
BATCH = 500  # task logs removed per transaction
FIRST_SWEEP = 5.0  # seconds after start-up, so start-up itself stays quick


@dataclass(frozen=True, slots=True)
class Pruned:
    logs: int
    deliveries: int
    rejections: int


class Retention(Loop):
    """Prunes on a schedule; `prune` runs one sweep (tests and the CLI call it directly)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        log_path: Callable[[str], Path],
        clock: Callable[[], float],
    ) -> None:
        interval = config.server.retention_interval
        super().__init__("retention", interval, first=min(FIRST_SWEEP, interval))
        self.config = config
        self.store = store
        self.log_path = log_path
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.config.server.retention_days > 0

    def start(self) -> None:
        if self.enabled:
            super().start()

    async def run_once(self) -> None:
        pruned = await self.prune()
        if pruned.logs or pruned.deliveries or pruned.rejections:
            log.info(
                "retention: pruned %d task logs, %d delivery bodies, %d rejections",
                pruned.logs,
                pruned.deliveries,
                pruned.rejections,
            )

    async def prune(self) -> Pruned:
        now = self.clock()
        before = now - self.config.server.retention_days * DAY
        store = self.store.retention
        logs = 0
        while True:
            # Each node prunes the logs on its own disk (its tasks' logs stay on it).
            ids = await store.unpruned_logs(before, BATCH, self.store.node)
            for task_id in ids:
                # Gone first, marked after: a crash in between only repeats an unlink.
                self.log_path(task_id).unlink(missing_ok=True)
            await store.mark_logs_pruned(ids, now)
            logs += len(ids)
            if len(ids) < BATCH:
                break
        deliveries = await store.prune_deliveries(before, now)
        rejections = await store.drop_rejections(before)
        await store.drop_comment_state(before)
        return Pruned(logs, deliveries, rejections)
