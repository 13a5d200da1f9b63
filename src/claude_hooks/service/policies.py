"""Repositories' policies as the pool meets them: before a queued task starts, its repository's
policy (service, organisation and repository files) says whether it may start at all, and the
concurrency group it must fit in.

The check sits at the start rather than at intake so a delivery's answer never waits for the
forge: the files are read (and cached by commit) when the work is about to run, from the
default branch for issue work and from a pull request's base branch for PR work. A file that
cannot be used fails the task closed with the file, line and key. A forge that does not answer
leaves the last file seen of that branch in force, or, with none seen, the service's own
settings (ceilings included) until it answers again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from claude_hooks.config import Config, zone_of
from claude_hooks.core.budget import Period, period_bounds
from claude_hooks.core.domain import Task, TaskKind
from claude_hooks.core.policy import Policy, PolicyError, PolicyFile, effective
from claude_hooks.forge.client import ForgejoError
from claude_hooks.forge.gateway import Forge
from claude_hooks.forge.policy_files import PolicyFiles
from claude_hooks.store.base import RunningLimit
from claude_hooks.store.spend import SpendStore

log = logging.getLogger(__name__)
UNREACHABLE_SECONDS = 60.0
CACHED_POLICIES = 256


@dataclass(frozen=True, slots=True)
class Gate:
    """What a repository's policy says of a queued task: refused (why, and whether it is a
    cancel rather than a failure), or allowed within a concurrency group (if any)."""

    refusal: str | None = None
    cancel: bool = False
    group: RunningLimit | None = None
    # Not now (a budget of the repository is spent): look again later.
    not_now: str | None = None


@dataclass(frozen=True, slots=True)
class RunPolicy:
    """What a run takes from its repository's policy."""

    context: dict[str, Any] = field(default_factory=dict)
    egress: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()


class Policies:
    """The effective policy of each repository, read through the forge's files."""

    def __init__(
        self,
        config: Config,
        forge: Forge,
        spend: SpendStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.spend = spend
        self.clock = clock
        self.files = PolicyFiles(forge.reader) if forge.enabled else None
        self._unreachable: dict[str, float] = {}  # repository -> until when it is not asked
        # The merge of each set of files (by version) seen lately: `effective` is pure, and
        # deliveries and starts ask for the same few again and again.
        self._merged: OrderedDict[tuple[tuple[str, str], ...], Policy | PolicyError] = OrderedDict()
        ceilings = config.policy
        self.active = self.files is not None or bool(
            ceilings.max_running
            or ceilings.allowed_types is not None
            or ceilings.daily_budget_usd is not None
            or ceilings.monthly_budget_usd is not None
        )

    @property
    def reads_forge(self) -> bool:
        """Whether `of` may wait for the forge (without a forge: the service's settings)."""
        return self.files is not None

    async def of(self, repo: str, branch: str | None = None) -> Policy:
        """The repository's effective policy; PolicyError when one of its files is broken.

        A forge that does not answer (and no file of that branch was seen before) leaves the
        service's own settings, ceilings included, for `UNREACHABLE_SECONDS`: an outage of
        the forge must not stop work the service can do without it."""
        if self.files is None or self._unreachable.get(repo, 0.0) > self.clock():
            return self._effective([])
        try:
            files = await self.files.for_repository(repo, branch)
        except ForgejoError as exc:
            self._unreachable[repo] = self.clock() + UNREACHABLE_SECONDS
            log.warning(
                "the policy files of %s cannot be read (%s): the service's settings apply for %g s",
                repo,
                exc,
                UNREACHABLE_SECONDS,
            )
            return self._effective([])
        self._unreachable.pop(repo, None)
        return self._effective(files)

    def _effective(self, files: list[PolicyFile]) -> Policy:
        key = tuple((f.where, f.sha) for f in files)
        merged = self._merged.get(key)
        if merged is None:
            try:
                merged = effective(self.config, files)
            except PolicyError as exc:
                merged = exc
            self._merged[key] = merged
            while len(self._merged) > CACHED_POLICIES:
                self._merged.popitem(last=False)
        else:
            self._merged.move_to_end(key)
        if isinstance(merged, PolicyError):
            raise merged
        return merged

    def pushed(self, repo: str, branch: str) -> None:
        """A push moved `branch` of `repo`: its policy is read again next time."""
        if self.files is not None:
            self.files.forget_branch(repo, branch)

    async def for_run(self, task: Task) -> RunPolicy:
        """What the run takes from the repository's policy: `RunContext` fields (the
        instructions for the task's type, the test command, the merge style), the hosts its
        type's egress gains, the setup commands. Nothing when the policy cannot be read now:
        the gate let the task start moments ago."""
        try:
            policy = await self.of(task.repo, _base(task))
        except PolicyError as exc:
            log.warning("task %s runs without its repository's settings: %s", task.id, exc)
            return RunPolicy()
        context: dict[str, Any] = {
            "instructions": policy.instructions_for(task.type),
            "test_command": policy.value("test"),
        }
        if policy.settings["merge_style"].layer != "service":
            context["merge_style"] = policy.value("merge_style")
        egress = policy.value(f"types.{task.type}.egress") or ()
        return RunPolicy(context, tuple(egress), tuple(policy.value("setup") or ()))

    async def gate(self, task: Task) -> Gate:
        """Whether `task` may start, and in which concurrency group."""
        try:
            policy = await self.of(task.repo, _base(task))
        except PolicyError as exc:
            return Gate(refusal=f"the policy of {task.repo} cannot be used: {exc}")
        if not policy.type_allowed(task.type):
            allowed = ", ".join(policy.allowed_types) or "none"
            return Gate(
                refusal=f"the policy of {task.repo} does not let type {task.type!r} work there "
                f"(allowed_types: {allowed})",
                cancel=True,
            )
        if task.kind is TaskKind.MERGE_PR and not policy.auto_merge:
            return Gate(
                refusal=f"the policy of {task.repo} says auto_merge = false: a person merges",
                cancel=True,
            )
        reached = await self._budget_reached(task.repo, policy)
        if reached is not None:
            return Gate(not_now=reached)
        limits = policy.max_running()
        if "all" not in limits and task.type not in limits:
            return Gate()
        return Gate(
            group=RunningLimit(
                repo=task.repo,
                agent_type=task.type,
                of_type=limits.get(task.type),
                of_all=limits.get("all"),
            )
        )

    async def _budget_reached(self, repo: str, policy: Policy) -> str | None:
        """Why no new task of `repo` starts now: a budget of the repository is spent."""
        zone = zone_of(self.config.server.timezone)
        for period, name in ((Period.DAY, "daily"), (Period.MONTH, "monthly")):
            limit = policy.value(f"{name}_budget_usd")
            if limit is None:
                continue
            start, end = period_bounds(period, self.clock(), zone)
            spent = await self.spend.spent(None, start, end, repo=repo)
            if spent >= limit:
                return (
                    f"waiting: the {name} budget of {repo} (${limit:.2f}) is spent "
                    f"(${spent:.2f}); it resets at "
                    f"{datetime.fromtimestamp(end, zone).isoformat(timespec='minutes')}"
                )
        return None


def _base(task: Task) -> str | None:
    """The branch a task's policy is read from: a PR's base branch, else the default one."""
    base = task.payload.get("base_ref")
    return base if isinstance(base, str) and base else None
