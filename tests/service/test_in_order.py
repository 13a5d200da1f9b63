"""Deliveries about one issue take turns in arrival order; other issues do not wait."""

from __future__ import annotations

import asyncio

from claude_hooks.service.in_order import InOrder


async def test_turns_of_one_key_run_in_arrival_order_and_other_keys_do_not_wait() -> None:
    order = InOrder()
    seen: list[str] = []
    release = asyncio.Event()

    async def delivery(name: str, key: tuple[str, int] | None) -> None:
        async with order.turn(key):
            seen.append(f"{name} in")
            if name == "first":
                await release.wait()
            seen.append(f"{name} out")

    first = asyncio.create_task(delivery("first", ("acme/widget", 1)))
    await asyncio.sleep(0)
    later = [
        asyncio.create_task(delivery(name, ("acme/widget", 1))) for name in ("second", "third")
    ]
    other = asyncio.create_task(delivery("other", ("acme/widget", 2)))
    unkeyed = asyncio.create_task(delivery("unkeyed", None))
    await asyncio.gather(other, unkeyed)
    assert seen == ["first in", "other in", "other out", "unkeyed in", "unkeyed out"]
    release.set()
    await asyncio.gather(first, *later)
    assert seen[5:] == ["first out", "second in", "second out", "third in", "third out"]
    assert order._turns == {}


async def test_a_turn_cancelled_while_waiting_leaves_the_others_theirs() -> None:
    order = InOrder()
    key = ("acme/widget", 7)
    release = asyncio.Event()
    seen: list[str] = []

    async def delivery(name: str) -> None:
        async with order.turn(key):
            seen.append(name)
            if name == "first":
                await release.wait()

    first = asyncio.create_task(delivery("first"))
    await asyncio.sleep(0)
    gone = asyncio.create_task(delivery("gone"))
    last = asyncio.create_task(delivery("last"))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    await asyncio.gather(first, last)
    assert gone.cancelled()
    assert seen == ["first", "last"]
    assert order._turns == {}


async def test_a_turn_whose_work_fails_still_lets_the_next_one_in() -> None:
    order = InOrder()
    key = ("acme/widget", 9)

    async def failing() -> None:
        async with order.turn(key):
            raise ValueError("the decision failed")

    results = await asyncio.gather(failing(), failing(), return_exceptions=True)
    assert [type(r) for r in results] == [ValueError, ValueError]
    assert order._turns == {}
