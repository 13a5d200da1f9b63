"""Which instances a node takes and which it lets go: the pure rule behind instance leases.

Each live node aims at its share: the instances pinned to it, plus an equal part of the
floating ones, never more than its capacity. A node over its share lets idle instances go
when another node is short and no unheld instance is left for it; a node takes beyond its
share only when every other node is full, so no instance waits while some node has room.
An instance that is running a task never moves: it is let go only once that task ends.
Instances with queued work come first: a node takes them before idle ones, and when every
node is full while one of them waits unheld, a node lets an idle instance with an empty queue
go to take it (so the nodes the work needs, `store/scaler.py`, run that work).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Lease:
    """An instance as the share rule sees it."""

    name: str
    enabled: bool
    holder: str | None
    pinned: str | None
    running: bool
    queued: bool = False  # tasks wait in its queue


@dataclass(frozen=True, slots=True)
class Member:
    """A live node: its name and capacity (0: no limit)."""

    name: str
    capacity: int


@dataclass(frozen=True, slots=True)
class Moves:
    take: tuple[str, ...]
    release: tuple[str, ...]


def _eligible(lease: Lease, node: str) -> bool:
    return lease.enabled and (lease.pinned is None or lease.pinned == node)


def _limits(
    members: Sequence[Member], leases: Sequence[Lease], held: dict[str, int]
) -> dict[str, int]:
    """Each member's share, cut to its capacity.

    The floating instances split into equal parts; the remainder (one each) goes to the
    nodes that already hold the most, so the shares add up to the instances there are. A
    share rounded up for every node would let two nodes of three keep two instances each of
    four and leave the third with none.
    """
    names = {m.name for m in members}
    floating = sum(
        1
        for lease in leases
        if lease.enabled and (lease.pinned is None or lease.pinned not in names)
    )
    base, extra = divmod(floating, len(members)) if members else (0, 0)
    by_holding = sorted(members, key=lambda m: (-held.get(m.name, 0), m.name))
    rounded_up = {m.name for m in by_holding[:extra]}
    limits: dict[str, int] = {}
    for member in members:
        pinned = sum(1 for lease in leases if lease.enabled and lease.pinned == member.name)
        share = pinned + base + (member.name in rounded_up)
        limits[member.name] = min(share, member.capacity) if member.capacity else share
    return limits


def moves(me: Member, members: Sequence[Member], leases: Sequence[Lease]) -> Moves:
    """What `me` should take and let go now, given the live `members` (`me` among them)."""
    held = {m.name: 0 for m in members}
    for lease in leases:
        if lease.holder in held:
            held[lease.holder] += 1
    limits = _limits(members, leases, held)
    mine = sorted((lease for lease in leases if lease.holder == me.name), key=lambda x: x.name)
    release = [x.name for x in mine if not x.running and not _eligible(x, me.name)]
    keep = [x for x in mine if x.name not in release]
    unheld = sorted(
        (x for x in leases if x.holder is None and _eligible(x, me.name)),
        key=lambda x: (x.pinned != me.name, not x.queued, x.name),
    )
    others = [m for m in members if m.name != me.name]
    short = sum(max(0, limits[m.name] - held[m.name]) for m in others)
    others_full = short == 0
    surplus = len(keep) - limits[me.name]
    if surplus > 0 and not others_full:
        free_for_them = sum(1 for x in leases if x.holder is None and x.enabled)
        count = min(surplus, max(0, short - free_for_them))
        idle = [x for x in reversed(keep) if not x.running and x.pinned != me.name]
        release += [x.name for x in idle[:count]]
        keep = [x for x in keep if x.name not in release]
    room = (me.capacity or len(leases)) - len(keep)
    everyone_full = all(
        m.capacity and held[m.name] >= m.capacity for m in members if m.name != me.name
    )
    if room <= 0 and everyone_full:
        # Work waits on an instance no node has room for: swap an idle one for it.
        waiting = sum(1 for x in unheld if x.queued)
        idle = [x for x in reversed(keep) if not (x.running or x.queued or x.pinned == me.name)]
        swapped = [x.name for x in idle[:waiting]]
        release += swapped
        keep = [x for x in keep if x.name not in swapped]
        room += len(swapped)
    want = room if others_full else min(room, limits[me.name] - len(keep))
    take = [x.name for x in unheld[: max(0, want)]]
    return Moves(tuple(take), tuple(release))
