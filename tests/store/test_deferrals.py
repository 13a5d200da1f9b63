"""PostgreSQL: the deferrals waiting at once are written together from the event loop, each
answered once its row is committed; a database that cannot be reached is a storage fault,
answered within the bound, and the writer connects again for the next ones."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa
from bench.tcp_proxy import proxy
from sqlalchemy.engine import make_url

from claude_hooks.service.intake import DEFERRED
from claude_hooks.store.deferrals import LoopDeferrals
from claude_hooks.store.faults import is_storage_fault
from claude_hooks.store.sql import SqlStore, Timeouts, postgresql_connect_args
from tests.service.test_crowded_intake import deferred_record


async def test_deferrals_arriving_together_are_written_together_each_once(pg_url: str) -> None:
    store = await SqlStore.open(pg_url)
    try:
        assert await store.pending.defer(deferred_record("seen", 1.0))
        records = [deferred_record(f"d-{n}", 10.0 + n) for n in range(40)]
        records += [deferred_record("seen", 60.0), deferred_record("d-3", 61.0)]
        answers = await asyncio.gather(*(store.pending.defer(r) for r in records))
        assert answers == [True] * 40 + [False, False]
        due = await store.pending.due(100.0, 100)
        assert [e.id for e in due] == ["seen", *(f"d-{n}" for n in range(40))]
        assert {(e.repo, e.number, e.last_error) for e in due} == {("acme/widget", 7, DEFERRED)}
        kept = await store.intake.get_delivery("d-3")
        assert kept is not None and kept.received_at == 13.0 and kept.outcome == "pending"
        assert kept.body == deferred_record("d-3", 0).body  # the body as it came, exact
    finally:
        await store.close()


async def test_a_dropped_database_is_a_storage_fault_and_the_writer_connects_again(
    pg_url: str,
) -> None:
    url = make_url(pg_url).set(drivername="postgresql")
    args = postgresql_connect_args(Timeouts(connect=2.0))
    with proxy(url.host or "127.0.0.1", url.port or 5432) as gate:
        through = url.set(host="127.0.0.1", port=gate.port).render_as_string(False)
        deferrals = LoopDeferrals(through, args, 5.0)
        try:
            assert await deferrals.defer(deferred_record("before", 1.0))
            gate.cut()  # a restart: its connection dropped, new ones refused
            await asyncio.sleep(0.1)  # the proxy acts on its own thread
            started = time.monotonic()
            with pytest.raises(sa.exc.DBAPIError) as failed:
                await deferrals.defer(deferred_record("during", 2.0))
            assert is_storage_fault(failed.value), failed.value
            assert time.monotonic() - started < 5.0
            gate.resume()
            await asyncio.sleep(0.1)
            assert await deferrals.defer(deferred_record("after", 3.0))
            assert not await deferrals.defer(deferred_record("before", 4.0))
        finally:
            await deferrals.close()
    store = await SqlStore.open(pg_url)
    try:
        due = await store.pending.due(100.0, 10)
        assert [e.id for e in due] == ["before", "after"]
    finally:
        await store.close()
