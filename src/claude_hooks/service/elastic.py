"""Elastic instances as a leader's duty: every few seconds, for each type with `[types.<t>]
instances`, one pass of the rule (`core/elastic.py`), decided and applied by the store in one
transaction (`store/elastic.py`); after a change, this node takes and lets go of instances at
once (the other nodes do on the signal the change wrote)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from claude_hooks.config import Config, TypeConfig
from claude_hooks.core.elastic import Act, Scaling, remarks
from claude_hooks.service.loop import Loop
from claude_hooks.store.base import InstanceView, Store
from claude_hooks.store.elastic import InstanceChange

log = logging.getLogger(__name__)

# A pass comes at least this often, and at most this often: a quarter of the shortest
# `scale_up_wait` or `scale_down_idle`, so a change comes at most a quarter late.
FASTEST = 0.25
SLOWEST = 15.0


def scaling_of(type_config: TypeConfig) -> Scaling | None:
    span = type_config.instances
    if span is None:
        return None
    return Scaling(span.low, span.high, type_config.scale_up_wait, type_config.scale_down_idle)


def pass_interval(config: Config) -> float:
    timings = [
        min(t.scale_up_wait, t.scale_down_idle) / 4
        for t in config.types.values()
        if t.instances is not None
    ]
    return max(FASTEST, min([SLOWEST, *timings]))


class Scaler(Loop):
    """Runs on the leading node only (one of `Node`'s duties)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        changed: Callable[[], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        super().__init__("elastic-instances", pass_interval(config), first=0.0)
        self.scalings = {
            name: scaling
            for name, type_config in config.types.items()
            if (scaling := scaling_of(type_config)) is not None
        }
        self.store = store
        self.changed = changed
        self.clock = clock
        self._noted: dict[str, str] = {}  # what the rule last said it could not do, per type

    def start(self) -> None:
        if self.scalings:
            super().start()

    async def run_once(self) -> float | None:
        changed = False
        for agent_type, scaling in self.scalings.items():
            scaled = await self.store.elastic.scale(
                agent_type, scaling, self.clock(), self.store.node
            )
            verdict = scaled.verdict
            if verdict.note != self._noted.get(agent_type, ""):
                self._noted[agent_type] = verdict.note
                if verdict.note:
                    log.info("%s: %s", agent_type, verdict.note)
            if verdict.act is Act.NOTHING:
                continue
            changed = True
            moved = "; ".join(
                f"{name} takes {', '.join(ids)}" for name, ids in scaled.moved.items() if ids
            )
            log.info(
                "%s: %s %s (%s)%s",
                agent_type,
                "added" if verdict.act is Act.ADD else "retired",
                ", ".join(verdict.names),
                verdict.reason,
                f"; {moved}" if moved else "",
            )
        if changed:
            await self.changed()
        return None


@dataclass(frozen=True, slots=True)
class ElasticView:
    """An elastic type as the dashboard and `agents list` show it."""

    type: str
    range: str  # "min..max"
    count: int  # enabled instances now
    remarks: list[str]
    changes: list[InstanceChange]  # the newest first


def elastic_views(
    config: Config,
    instances: Sequence[InstanceView],
    changes: Sequence[InstanceChange],
    shown: int = 5,
) -> dict[str, ElasticView]:
    """Per elastic type: its range, count, what to tell, and its latest `shown` changes."""
    views = {}
    for name, type_config in config.types.items():
        scaling = scaling_of(type_config)
        if scaling is None:
            continue
        mine = [i for i in instances if i.type == name and i.enabled]
        declared = sum(1 for i in mine if not i.auto)
        unheld = [i.name for i in mine if i.node is None]
        views[name] = ElasticView(
            name,
            f"{scaling.low}..{scaling.high}",
            len(mine),
            remarks(scaling, declared, unheld),
            [c for c in changes if c.type == name][:shown],
        )
    return views
