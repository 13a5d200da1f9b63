"""Two nodes taking deliveries of one issue at once both make its loop-guard row: the second
waits for the first's insert and yields to it instead of failing on the primary key (a node
answered 500 to such a delivery)."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
from sqlalchemy.engine import make_url

from claude_hooks.store.intake import DeliveryRecord
from claude_hooks.store.sql import SqlStore


def test_a_guard_row_inserted_at_once_by_another_node_is_waited_for(pg_url: str) -> None:
    store = asyncio.run(SqlStore.open(pg_url))
    errors: list[BaseException] = []

    def reset() -> None:
        try:
            # A human's delivery resets the guard, recorded with it.
            record = DeliveryRecord("d-1", "forgejo", "issues", "issue_assign", 5.0, "{}")
            asyncio.run(store.intake.add_delivery(record, None, [("acme/widget", 17, 5.0)]))
        except BaseException as exc:
            errors.append(exc)

    libpq = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(libpq) as other:
            other.execute(
                "INSERT INTO issue_guards (repo, number, since) VALUES ('acme/widget', 17, 1.0)"
            )
            thread = threading.Thread(target=reset)
            thread.start()
            time.sleep(0.3)
            assert thread.is_alive()  # waiting on the other node's uncommitted row
            other.commit()
            thread.join(10)
        assert not thread.is_alive()
        assert errors == []
        guard = asyncio.run(store.intake.guard("acme/widget", 17))
        assert guard is not None and guard.since == 5.0
    finally:
        asyncio.run(store.close())
