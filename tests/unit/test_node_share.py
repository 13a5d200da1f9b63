"""The share rule that spreads instances over nodes (`node_share.moves`)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from claude_hooks.core.node_share import Lease, Member, Moves, moves


def lease(name: str, holder: str | None = None, **kwargs: object) -> Lease:
    values: dict[str, object] = {"enabled": True, "pinned": None, "running": False, **kwargs}
    return Lease(name, holder=holder, **values)  # type: ignore[arg-type]


def settle(members: list[Member], leases: list[Lease], rounds: int = 6) -> list[Lease]:
    """Run every member's moves in turn, as their beats would, until nothing moves."""
    current = list(leases)
    for _ in range(rounds):
        changed = False
        for member in members:
            wanted = moves(member, members, current)
            if wanted.take or wanted.release:
                changed = True
            current = [
                replace(x, holder=None)
                if x.name in wanted.release and x.holder == member.name
                else replace(x, holder=member.name)
                if x.name in wanted.take and x.holder is None
                else x
                for x in current
            ]
        if not changed:
            break
    return current


def test_a_lone_node_takes_every_enabled_instance() -> None:
    leases = [lease("dev-a"), lease("dev-b"), lease("dev-c", enabled=False)]
    assert moves(Member("one", 0), [Member("one", 0)], leases).take == ("dev-a", "dev-b")


def test_a_joining_node_gets_its_share_as_the_other_lets_idle_instances_go() -> None:
    one, two = Member("one", 0), Member("two", 0)
    leases = [lease(n, "one") for n in ("dev-a", "dev-b", "dev-c", "dev-d")]
    assert moves(two, [one, two], leases).take == ()  # nothing unheld yet
    first = moves(one, [one, two], leases)
    assert first.release == ("dev-d", "dev-c") and first.take == ()
    settled = settle([one, two], leases)
    assert sorted(x.name for x in settled if x.holder == "two") == ["dev-c", "dev-d"]


def test_a_running_instance_never_moves() -> None:
    one, two = Member("one", 0), Member("two", 0)
    leases = [lease("dev-a", "one", running=True), lease("dev-b", "one", running=True)]
    assert moves(one, [one, two], leases).release == ()


def test_capacity_caps_a_node_and_the_rest_wait() -> None:
    one, two = Member("one", 1), Member("two", 1)
    settled = settle([one, two], [lease(n) for n in ("dev-a", "dev-b", "dev-c")])
    held = [x.holder for x in settled]
    assert held.count("one") == 1 and held.count("two") == 1 and held.count(None) == 1


def test_a_full_peer_lets_a_node_take_beyond_its_share() -> None:
    one, two = Member("one", 0), Member("two", 1)
    settled = settle([one, two], [lease(n) for n in ("dev-a", "dev-b", "dev-c", "dev-d")])
    held = [x.holder for x in settled]
    assert held.count("two") == 1 and held.count("one") == 3


def test_a_joining_node_gets_its_part_of_what_two_nodes_hold() -> None:
    one, two, three = Member("one", 0), Member("two", 0), Member("three", 0)
    leases = [lease("dev-a", "one"), lease("dev-b", "one"), lease("dev-c", "two")]
    leases.append(lease("dev-d", "two"))
    settled = settle([one, two, three], leases)
    held = sorted(sum(1 for x in settled if x.holder == m.name) for m in (one, two, three))
    assert held == [1, 1, 2]


def test_a_pinned_instance_goes_only_to_its_node() -> None:
    one, two = Member("one", 0), Member("two", 0)
    leases = [lease("dev-a", "one", pinned="two"), lease("dev-b")]
    assert moves(one, [one, two], leases).release == ("dev-a",)
    settled = settle([one, two], leases)
    assert {x.name: x.holder for x in settled}["dev-a"] == "two"


def test_an_instance_with_work_is_taken_before_idle_ones() -> None:
    one = Member("one", 1)
    leases = [lease("dev-a"), lease("dev-b", queued=True)]
    assert moves(one, [one], leases).take == ("dev-b",)


def test_full_nodes_swap_an_idle_instance_for_one_whose_work_waits() -> None:
    one, two = Member("one", 1), Member("two", 1)
    leases = [
        lease("dev-a", "one"),  # idle, empty queue
        lease("dev-b", "two", running=True),
        lease("dev-c", queued=True),  # its tasks wait: no node has room
    ]
    assert moves(two, [one, two], leases) == moves(two, [one, two], leases[:2])  # busy: stays
    assert moves(one, [one, two], leases) == Moves(take=("dev-c",), release=("dev-a",))
    settled = {x.name: x.holder for x in settle([one, two], leases)}
    assert settled == {"dev-a": None, "dev-b": "two", "dev-c": "one"}
    # Without waiting work nothing moves; a node with room takes the work instead.
    assert moves(one, [one, two], leases[:2]) == Moves((), ())
    roomy = Member("two", 2)
    assert moves(one, [one, roomy], leases).release == ()
    assert moves(roomy, [one, roomy], leases).take == ("dev-c",)


names = st.lists(st.sampled_from([f"dev-{c}" for c in "abcdefgh"]), unique=True, max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    instances=names,
    capacities=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    disabled=st.sets(st.sampled_from([f"dev-{c}" for c in "abcdefgh"])),
    busy=st.sets(st.sampled_from([f"dev-{c}" for c in "abcdefgh"])),
)
def test_settled_leases_are_single_capped_and_leave_no_room_unused(
    instances: list[str], capacities: list[int], disabled: set[str], busy: set[str]
) -> None:
    members = [Member(f"n{i}", cap) for i, cap in enumerate(capacities)]
    leases = [lease(n, enabled=n not in disabled, queued=n in busy) for n in instances]
    settled = settle(members, leases, rounds=12)
    held: dict[str, int] = {}
    for x in settled:
        if x.holder is not None:
            assert x.enabled  # a disabled instance is never taken
            held[x.holder] = held.get(x.holder, 0) + 1
    for member in members:
        assert member.capacity == 0 or held.get(member.name, 0) <= member.capacity
    waiting = [x for x in settled if x.holder is None and x.enabled]
    if waiting:  # an instance waits only when every node is full
        assert all(m.capacity and held.get(m.name, 0) >= m.capacity for m in members)
    if any(x.queued for x in waiting):  # and work waits only when no node holds an idle one
        assert all(x.queued for x in settled if x.holder is not None)
    if all(m.capacity == 0 for m in members):  # without limits the nodes share evenly
        counts = [held.get(m.name, 0) for m in members]
        assert not waiting and max(counts) - min(counts) <= 1
