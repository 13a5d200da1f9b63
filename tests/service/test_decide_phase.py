"""The decide phase writes nothing: a delivery's whole decision (tasks, pull links, fix
attempts, review rounds, trips, CI watches, comments) is applied in the transaction that
records it. So one delivery id taken by two nodes at once counts once, and a delivery whose
applying fails leaves nothing but its record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import sqlalchemy as sa

from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.web.app import create_app
from tests.fake_forgejo import FakeForgejo
from tests.support import GateRunner, fixture, forgejo_headers, wait_until
from tests.web.test_forge_flows import HEAD_C, forge_config


@asynccontextmanager
async def node(
    tmp_path: Path, forge: FakeForgejo, database_url: str, name: str = "one", **server: object
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """A started service on `database_url` whose tasks stay where they were placed; `server`:
    more `[server]` settings."""
    config = forge_config(
        tmp_path / name, forge, server={"database_url": database_url, "node": name, **server}
    )
    gate = GateRunner()  # the tasks stay where they were placed
    service = await Service.open(config, lambda _type: gate)
    await service.start()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)), base_url="http://test"
    )
    try:
        yield service, client
    finally:
        await client.aclose()
        gate.release_all()
        await service.stop()


async def post(client: httpx.AsyncClient, name: str, delivery: str) -> httpx.Response:
    body, headers = fixture(name)
    event_type = headers.get("X-Forgejo-Event-Type") or headers["X-Gitea-Event-Type"]
    return await client.post(
        "/webhook", content=body, headers=forgejo_headers(event_type, body, delivery)
    )


async def test_one_delivery_id_at_two_nodes_at_once_bumps_each_counter_once(
    tmp_path: Path, pg_url: str, fake_forgejo: FakeForgejo
) -> None:
    async with (
        node(tmp_path, fake_forgejo, pg_url, "one") as (one, client_one),
        node(tmp_path, fake_forgejo, pg_url, "two") as (_two, client_two),
    ):
        # CI failed on the head of dev's PR #18, which no node knows yet: each asks the forge
        # for it and decides a fix attempt. Then bob (a human, whose permission each node
        # asks the forge) requests changes on it: each decides a review round on issue #17.
        for name, delivery in (
            ("status_failure", "ci-1"),
            ("pull_request_review_rejected", "review-1"),
        ):
            answers = await asyncio.gather(
                post(client_one, name, delivery), post(client_two, name, delivery)
            )
            assert sorted(a.json()["status"] for a in answers) == ["duplicate", "queued"], [
                a.text for a in answers
            ]
        # Both nodes decided both deliveries (neither saw the other's record in time) ...
        assert len(fake_forgejo.requests_to("/repos/acme/widget/pulls/18", "GET")) == 2
        permission = "/repos/acme/widget/collaborators/bob/permission"
        assert len(fake_forgejo.requests_to(permission, "GET")) == 2
        # ... and each counter moved once: the duplicate's writes went with its transaction.
        view = one.store.intake
        assert await view.fix_attempts("acme/widget", 18, HEAD_C) == 1
        guard = await view.guard("acme/widget", 17)
        assert guard is not None and guard.review_rounds == 1
        link = await view.pull_link("acme/widget", 18)
        assert link is not None and (link.author_type, link.issue_number) == ("dev", 17)
        assert await one.store.count_tasks(TaskFilter()) == 2


def _refuse_tasks(conn: sa.Connection) -> None:
    """A real database fault on inserting a task (not a duplicate key: any other error)."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text(
                "CREATE FUNCTION refuse_tasks() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'the test refuses tasks'; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER refuse_tasks BEFORE INSERT ON tasks "
                "FOR EACH ROW EXECUTE FUNCTION refuse_tasks()"
            )
        )
    else:  # SQLite resolves a trigger's tables when it runs: this one fails then
        conn.execute(
            sa.text(
                "CREATE TRIGGER refuse_tasks BEFORE INSERT ON tasks "
                "BEGIN INSERT INTO no_such_table VALUES (1); END"
            )
        )


def _allow_tasks(conn: sa.Connection) -> None:
    conn.execute(
        sa.text("DROP TRIGGER refuse_tasks" + " ON tasks" * (conn.dialect.name != "sqlite"))
    )
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("DROP FUNCTION refuse_tasks()"))


async def test_a_delivery_whose_apply_fails_leaves_nothing_but_its_record(
    tmp_path: Path, database_url: str, fake_forgejo: FakeForgejo
) -> None:
    async with node(tmp_path, fake_forgejo, database_url) as (service, client):
        store = service.store
        engine: sa.Engine = store.engine  # the SQL store's own, behind any offloading
        with engine.begin() as conn:
            _refuse_tasks(conn)
        try:
            # The decision: record dev's PR #18 (learnt from the forge), count a fix attempt
            # on its head, queue a fix_ci task; placing the task fails in the database.
            answer = await post(client, "status_failure", "ci-1")
            if engine.dialect.name == "sqlite":
                # The trigger's error is an OperationalError, a storage fault: spooled.
                assert answer.status_code == 202, answer.text
                assert answer.json()["status"] == "spooled"
                assert await store.intake.get_delivery("ci-1") is None
            else:
                # RAISE EXCEPTION is a ProgrammingError, a fault of ours: the delivery is
                # recorded alone, with the error.
                assert answer.status_code == 500, answer.text
                assert answer.json()["reason"].startswith("internal error")
                record = await store.intake.get_delivery("ci-1")
                assert record is not None and record.outcome == "error"
                assert record.task_ids == []
            # Either way the rolled-back decision left nothing behind.
            assert await store.intake.pull_link("acme/widget", 18) is None
            assert await store.intake.fix_attempts("acme/widget", 18, HEAD_C) == 0
            assert await store.count_tasks(TaskFilter()) == 0
        finally:
            with engine.begin() as conn:
                _allow_tasks(conn)

        # Once the fault is gone, the same event does all of it, once: replayed from the
        # spool by the node, or by hand.
        if engine.dialect.name != "sqlite":
            again = await client.post(
                "/api/deliveries/ci-1/replay", headers={"Authorization": "Bearer test-token"}
            )
            assert again.status_code == 202, again.text

        async def replayed() -> bool:
            return await store.count_tasks(TaskFilter()) == 1

        await wait_until(replayed, timeout=15)
        assert await store.intake.fix_attempts("acme/widget", 18, HEAD_C) == 1
        assert await store.intake.pull_link("acme/widget", 18) is not None


async def test_deliveries_for_one_issue_are_decided_in_arrival_order(
    tmp_path: Path, database_url: str, fake_forgejo: FakeForgejo
) -> None:
    """An unassignment that arrives while its issue's assignment waits for the forge waits
    its turn, and then cancels the work the assignment queued."""
    permission = "/repos/acme/widget/collaborators/alice/permission"
    fake_forgejo.hang_next(permission, seconds=1.0)
    async with node(tmp_path, fake_forgejo, database_url) as (service, client):
        assigning = asyncio.ensure_future(post(client, "issues_assigned_dev", "assign-17"))
        await wait_until(lambda: len(fake_forgejo.requests_to(permission, "GET")) == 1)
        body, headers = fixture("issues_unassigned")
        data = json.loads(body)
        data["issue"]["number"] = 17
        payload = json.dumps(data).encode()
        event_type = headers.get("X-Forgejo-Event-Type") or headers["X-Gitea-Event-Type"]
        unassigned = await client.post(
            "/webhook",
            content=payload,
            headers=forgejo_headers(event_type, payload, "unassign-17"),
        )
        assigned = await assigning
        assert assigned.status_code == 202, assigned.text
        work = assigned.json()["tasks"][0]["id"]
        assert unassigned.json()["status"] == "cancelled", unassigned.text
        assert unassigned.json()["cancelled"] == [work]
        task = await service.store.get_task(work)
        assert task is not None
        # Cancelled while queued, or being stopped if it had started.
        assert task.state.value == "cancelled" or task.cancel_requested, task.state
