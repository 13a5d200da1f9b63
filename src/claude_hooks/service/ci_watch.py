"""Polling CI for Forgejo, which sends no webhook for external commit statuses.

After an agent PR's head changes, its combined status is polled until it settles; a failure
goes through the same `dispatch_fix_ci` flow a Gitea `status` event takes. Watches are
stored, so a restart resumes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from claude_hooks.config import Config
from claude_hooks.core.decision import CiWatch, Decision
from claude_hooks.errors import ClaudeHooksError
from claude_hooks.forge.gateway import Forge
from claude_hooks.service import flows, outcomes
from claude_hooks.service.intake import Applied, Intake
from claude_hooks.service.loop import Loop

log = logging.getLogger(__name__)


class CiWatcher(Loop):
    def __init__(
        self, config: Config, intake: Intake, forge: Forge, clock: Callable[[], float]
    ) -> None:
        super().__init__("ci-watcher", config.flows.ci_poll_interval)
        self.config = config
        self.intake = intake
        self.forge = forge
        self.clock = clock

    def start(self) -> None:
        if self.forge.enabled and self.config.flows.poll_ci:
            super().start()

    async def run_once(self) -> None:
        for watch in await self.intake.store.ci_watches():
            try:
                await self.check(watch)
            except ClaudeHooksError as exc:
                log.warning("CI poll of %s#%d failed: %s", watch.repo, watch.pr_number, exc)
            except Exception:
                log.exception("CI poll of %s#%d failed", watch.repo, watch.pr_number)

    async def check(self, watch: CiWatch) -> str:
        """Look once at a watched head; returns the combined state it saw."""
        store = self.intake.store
        owner, _, name = watch.repo.partition("/")
        status = await self.forge.client(None).combined_status(owner, name, watch.head_sha)
        # No status yet means CI has not reported: keep waiting, up to the timeout.
        if status.state == "pending" or status.total_count == 0:
            if self.clock() - watch.created_at > self.config.flows.ci_poll_timeout:
                await store.drop_ci_watch(watch.repo, watch.pr_number)
                return "timeout"
            return "pending"
        await store.drop_ci_watch(watch.repo, watch.pr_number)
        link = await store.pull_link(watch.repo, watch.pr_number)
        if link is None:
            return status.state
        # The verdict is an outcome (the first-pass rate) whether or not a fix follows.
        verdict = outcomes.ci_verdict(link, watch.head_sha, status.state == "success", self.clock())
        failing = status.state in ("failure", "error")
        if not failing or not link.open or link.head_sha != watch.head_sha:
            await self.intake.apply(Decision(outcomes=verdict), Applied(), "a CI poll")
            return status.state
        failed = [s for s in status.statuses if s.state in ("failure", "error")]
        context = {
            "state": status.state,
            "context": ", ".join(s.context for s in failed) or "combined status",
            "description": "; ".join(s.description for s in failed if s.description),
            "target_url": next((s.target_url for s in failed if s.target_url), None),
        }
        decision = await flows.dispatch_fix_ci(self.intake.context(None), link, context)
        decision.outcomes += verdict
        await self.intake.apply(decision, Applied(), "a CI poll of claude-hooks")
        log.info("CI of %s#%d: %s", watch.repo, watch.pr_number, decision.reason)
        return status.state
