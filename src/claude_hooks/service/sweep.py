"""Removing the workdirs of closed issues and pull requests.

A close event schedules its keys at once (after their cancelled tasks have stopped); a
periodic sweep, and `claude-hooks workdirs sweep`, ask the forge about every workdir left, so
a missed event leaves nothing behind for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from claude_hooks.agents.workspace import Workspaces, split_key
from claude_hooks.config import Config
from claude_hooks.errors import ClaudeHooksError
from claude_hooks.forge.gateway import Forge
from claude_hooks.store.intake import IntakeStore

log = logging.getLogger(__name__)

SETTLE_SECONDS = 0.5


class Sweeper:
    def __init__(
        self, config: Config, workspaces: Workspaces, intake: IntakeStore, forge: Forge
    ) -> None:
        self.config = config
        self.workspaces = workspaces
        self.intake = intake
        self.forge = forge
        self._pending: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.removed: list[str] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._clean_scheduled(), name="sweep-closed"))
        if self.forge.enabled and self.config.flows.sweep_interval > 0:
            self._tasks.append(asyncio.create_task(self._periodic(), name="sweep-periodic"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def schedule(self, keys: Iterable[str]) -> None:
        for key in keys:
            if self.workspaces.workdir(key).exists():
                self._pending.put_nowait(key)

    async def clean(self, key: str) -> bool:
        """Remove a key's workdir once no task of the key is queued or running."""
        if await self.intake.active_tasks([key]):
            return False
        removed = await self.workspaces.cleanup(key)
        if removed:
            self.removed.append(key)
            log.info("removed the workdir of %s", key)
        return removed

    async def _clean_scheduled(self) -> None:
        while True:
            key = await self._pending.get()
            # Cancelled tasks take up to cancel_grace to stop; wait for them, not forever.
            for _ in range(int(self.config.server.cancel_grace / SETTLE_SECONDS) + 20):
                try:
                    if await self.clean(key) or not self.workspaces.workdir(key).exists():
                        break
                except ClaudeHooksError as exc:
                    log.warning("could not remove the workdir of %s: %s", key, exc)
                    break
                except Exception:
                    log.exception("could not remove the workdir of %s", key)
                    break
                await asyncio.sleep(SETTLE_SECONDS)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.config.flows.sweep_interval)
            try:
                await self.sweep()
            except ClaudeHooksError as exc:
                log.warning("workdir sweep failed: %s", exc)
            except Exception:
                log.exception("workdir sweep failed")

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
