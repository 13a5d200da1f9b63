"""Elastic instances (`[types.<t>] instances = "min..max"`): how many instances a type should
have now, decided from what its instances are doing. Pure: the leading node's store reads the
type's state under its cursor lock, asks `decide`, and applies the verdict in the same
transaction (`store/elastic.py`); `simulate --elastic` asks the same function in simulated time.

The rule, for the enabled instances of a type (declared ones, in `[[agents]]` or by `agents
add`, count toward the range and are never retired; added ones are named `<type>-auto-N`):
- below the minimum: add up to it;
- a task has waited `scale_up_wait` while every instance runs a task: add one instance per
  task that has waited that long, up to the maximum (none when the declared
  instances alone reach it: the verdict says so);
- above the minimum, an added instance idle with an empty queue for `scale_down_idle`: retire
  it, the longest idle first, down to the minimum; above the maximum (the range was lowered),
  an idle added instance is retired at once.
An added instance that is disabled no longer counts and is retired once idle as long.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class Act(enum.StrEnum):
    ADD = "add"
    RETIRE = "retire"
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class Seat:
    """One instance of the type as the rule sees it."""

    name: str
    auto: bool  # added by this rule (may be retired), not declared
    enabled: bool
    running: bool  # it runs a task now
    queued: int  # tasks waiting in its queue
    idle_since: float  # when it last had nothing to do (its last task's end, or its creation)

    @property
    def idle(self) -> bool:
        return not self.running and self.queued == 0


@dataclass(frozen=True, slots=True)
class Scaling:
    """A type's elastic settings (`[types.<t>] instances`, `scale_up_wait`, `scale_down_idle`)."""

    low: int
    high: int
    scale_up_wait: float
    scale_down_idle: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do now: add instances (`names`, new), retire some (`names`), or nothing; why,
    and the wait (seconds) that caused it. `note` is what the dashboard should tell although
    nothing is done (the declared instances exceed the maximum)."""

    act: Act
    reason: str
    names: tuple[str, ...] = ()
    wait: float = 0.0
    note: str = ""


def auto_name(agent_type: str, number: int) -> str:
    return f"{agent_type}-auto-{number}"


def auto_number(agent_type: str, name: str) -> int | None:
    """N of `<type>-auto-N`, or None for any other name."""
    found = re.fullmatch(re.escape(agent_type) + r"-auto-([1-9]\d*)", name)
    return int(found[1]) if found else None


def new_names(agent_type: str, taken: Iterable[str], count: int) -> tuple[str, ...]:
    """The `count` lowest free `<type>-auto-N` names: a retired name is used again, so names
    stay short however long the service runs."""
    used = {n for n in (auto_number(agent_type, name) for name in taken) if n is not None}
    names: list[str] = []
    number = 0
    while len(names) < count:
        number += 1
        if number not in used:
            names.append(auto_name(agent_type, number))
    return tuple(names)


def waits_wanted(scaling: Scaling, seats: Sequence[Seat]) -> int:
    """How many of the longest waits `decide` can use: none unless every enabled instance runs
    a task and the type has room; then at most one per instance it could add. The store reads
    no more than that, so a pass over a long queue costs no more than a short one's."""
    serving = [seat for seat in seats if seat.enabled]
    if len(serving) < scaling.low or not all(seat.running for seat in serving):
        return 0
    return max(0, scaling.high - len(serving))


def decide(
    agent_type: str,
    scaling: Scaling,
    seats: Sequence[Seat],
    waits: Sequence[float],
    now: float,
    taken: Iterable[str] = (),
) -> Verdict:
    """The verdict for one type. `waits`: how long (seconds) its queued tasks that another
    instance could start now have waited (the longest `waits_wanted` of them are enough);
    `taken`: every instance name in use (of any type), so an added name is new."""
    serving = [seat for seat in seats if seat.enabled]
    declared = sum(1 for seat in serving if not seat.auto)
    count = len(serving)
    names = [seat.name for seat in seats]
    if count < scaling.low:
        added = new_names(agent_type, [*names, *taken], scaling.low - count)
        why = f"{count} instance(s), below the minimum {scaling.low}"
        return Verdict(Act.ADD, why, added)
    longest = max(waits, default=0.0)
    overdue = sum(1 for wait in waits if wait >= scaling.scale_up_wait)
    note = _over_maximum(scaling, declared)
    if overdue and all(seat.running for seat in serving):
        room = scaling.high - count
        if room > 0:
            added = new_names(agent_type, [*names, *taken], min(overdue, room))
            why = (
                f"{overdue} task(s) waited {scaling.scale_up_wait:g} s or more "
                f"(longest {longest:.0f} s) while all {count} instance(s) were busy"
            )
            return Verdict(Act.ADD, why, added, wait=longest)
        note = note or f"work waits but the type has its maximum of {scaling.high} instances"
    retired = _retire(scaling, seats, count, now)
    if retired:
        return retired
    return Verdict(Act.NOTHING, note or "nothing to change", note=note)


def _over_maximum(scaling: Scaling, declared: int) -> str:
    if declared <= scaling.high:
        return ""
    return f"the {declared} declared instances exceed the maximum {scaling.high}: none are added"


def remarks(scaling: Scaling, declared: int, unheld: Sequence[str]) -> list[str]:
    """What the dashboard and `agents list` tell of an elastic type beside its instances:
    declared instances over the maximum, and enabled instances no node has room for."""
    said = [_over_maximum(scaling, declared)] if declared > scaling.high else []
    if unheld:
        said.append(
            f"{', '.join(unheld)}: waiting for a node with room (every live node is at its "
            "capacity); its work waits meanwhile"
        )
    return said


def _retire(scaling: Scaling, seats: Sequence[Seat], count: int, now: float) -> Verdict | None:
    idle = sorted(
        (seat for seat in seats if seat.auto and seat.idle),
        key=lambda seat: (seat.idle_since, seat.name),
    )
    gone = [s for s in idle if not s.enabled and now - s.idle_since >= scaling.scale_down_idle]
    spare = count - scaling.low
    over = count - scaling.high
    for seat in idle:
        if not seat.enabled or spare <= 0:
            continue
        if over > 0 or now - seat.idle_since >= scaling.scale_down_idle:
            gone.append(seat)
            spare -= 1
            over -= 1
    if not gone:
        return None
    longest = max(now - seat.idle_since for seat in gone)
    if count > scaling.high:
        why = f"{count} instances, above the maximum {scaling.high}"
    else:
        why = (
            f"idle with an empty queue for {longest:.0f} s (scale_down_idle "
            f"{scaling.scale_down_idle:g} s), above the minimum {scaling.low}"
        )
    return Verdict(Act.RETIRE, why, tuple(seat.name for seat in gone), wait=longest)
