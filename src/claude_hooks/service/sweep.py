"""Removing the workdirs of closed issues and pull requests.

A close event schedules its keys at once (after their cancelled tasks have stopped); a
periodic sweep, and `claude-hooks workdirs sweep`, ask the forge about every workdir left, so
a missed event leaves nothing behind for long.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from claude_hooks.agents.workspace import Workspaces, split_key
from claude_hooks.config import Config
from claude_hooks.errors import ClaudeHooksError
from claude_hooks.forge.gateway import Forge
from claude_hooks.service.loop import Every
from claude_hooks.store.intake import IntakeStore

log = logging.getLogger(__name__)

SETTLE_SECONDS = 0.5
IDLE_SECONDS = 60.0  # a close event wakes the loop; this only bounds a missed wake-up


class Sweeper:
    """Two loops: `closed` removes the workdirs a close event scheduled, once their tasks
    stopped; `periodic` asks the forge about every workdir left (with the forge only)."""

    def __init__(
        self, config: Config, workspaces: Workspaces, intake: IntakeStore, forge: Forge
    ) -> None:
        self.config = config
        self.workspaces = workspaces
        self.intake = intake
        self.forge = forge
        # Cancelled tasks take up to cancel_grace to stop: each key is tried this many times.
        self._tries = int(config.server.cancel_grace / SETTLE_SECONDS) + 20
        self._scheduled: dict[str, int] = {}  # key -> tries left
        self.removed: list[str] = []
        self.closed = Every("sweep-closed", IDLE_SECONDS, self._clean_scheduled)
        self.periodic = Every("sweep-periodic", config.flows.sweep_interval, self._sweep_pass)

    def start(self) -> None:
        self.closed.start()
        if self.forge.enabled and self.config.flows.sweep_interval > 0:
            self.periodic.start()

    async def stop(self) -> None:
        await self.closed.stop()
        await self.periodic.stop()

    def schedule(self, keys: Iterable[str]) -> None:
        for key in keys:
            if self.workspaces.workdir(key).exists():
                self._scheduled.setdefault(key, self._tries)
                self.closed.wake()

    async def clean(self, key: str) -> bool:
        """Remove a key's workdir once no task of the key is queued or running."""
        if await self.intake.active_tasks([key]):
            return False
        removed = await self.workspaces.cleanup(key)
        if removed:
            self.removed.append(key)
            log.info("removed the workdir of %s", key)
        return removed

    async def _clean_scheduled(self) -> float | None:
        """Try each scheduled key once; soon again while some wait for their tasks."""
        for key in list(self._scheduled):
            self._scheduled[key] -= 1
            try:
                done = await self.clean(key) or not self.workspaces.workdir(key).exists()
            except ClaudeHooksError as exc:
                log.warning("could not remove the workdir of %s: %s", key, exc)
                done = True
            except Exception:
                log.exception("could not remove the workdir of %s", key)
                done = True
            if done or self._scheduled[key] <= 0:
                del self._scheduled[key]
        return SETTLE_SECONDS if self._scheduled else None

    async def _sweep_pass(self) -> None:
        await self.sweep()

    async def sweep(self) -> list[str]:
        """Ask the forge about each workdir's issue; remove those whose issue is closed."""
        removed = []
        closed: dict[tuple[str, int], bool] = {}
        for key in self.workspaces.session_keys():
            _, repo, number = split_key(key)
            if (repo, number) not in closed:
                owner, _, name = repo.partition("/")
                issue = await self.forge.client(None).get_issue(owner, name, number)
                closed[(repo, number)] = issue.state == "closed"
            if closed[(repo, number)] and await self.clean(key):
                removed.append(key)
        return removed
