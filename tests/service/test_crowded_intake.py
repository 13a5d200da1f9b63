"""A node deciding `server.max_deciding` deliveries already defers the next ones: each is
recorded as pending and answered 202 at once, and the pending retrier decides them right
after, in arrival order, each once, also across a restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from claude_hooks.service.intake import DEFERRED
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.store.intake import DeliveryRecord
from claude_hooks.store.sql import SqlStore
from tests.fake_forgejo import FakeForgejo
from tests.service import test_decide_phase as decide_phase
from tests.support import fixture, forgejo_headers, wait_until

PERMISSION = "/repos/acme/widget/collaborators/alice/permission"


@asynccontextmanager
async def node(
    tmp_path: Path, forge: FakeForgejo, database_url: str, max_deciding: int
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    settings = {"max_deciding": max_deciding, "pending_retry_min": 0.2, "pending_retry_max": 0.5}
    async with decide_phase.node(tmp_path, forge, database_url, **settings) as started:
        yield started


def delivery(name: str, number: int, delivery_id: str) -> tuple[bytes, dict[str, str]]:
    """The fixture `name`, about issue `number`, signed, with its own delivery id."""
    body, headers = fixture(name)
    data = json.loads(body)
    data["issue"]["number"] = number
    payload = json.dumps(data).encode()
    event_type = headers.get("X-Forgejo-Event-Type") or headers["X-Gitea-Event-Type"]
    return payload, forgejo_headers(event_type, payload, delivery_id)


async def post(client: httpx.AsyncClient, name: str, number: int, delivery_id: str) -> Any:
    body, headers = delivery(name, number, delivery_id)
    answer = await client.post("/webhook", content=body, headers=headers)
    assert answer.status_code in (200, 202), answer.text
    return answer.json()


async def settled(service: Service, *ids: str) -> bool:
    for delivery_id in ids:
        record = await service.store.intake.get_delivery(delivery_id)
        if record is None or record.outcome == "pending":
            return False
    return True


async def test_deferred_deliveries_are_answered_at_once_and_decided_in_arrival_order(
    tmp_path: Path, database_url: str, fake_forgejo: FakeForgejo
) -> None:
    async with node(tmp_path, fake_forgejo, database_url, max_deciding=0) as (service, client):
        answers = [
            await post(client, "issues_assigned_dev", 17, "assign-17"),
            await post(client, "issues_unassigned", 17, "unassign-17"),
            await post(client, "issues_assigned_dev", 21, "assign-21"),
        ]
        assert [a["status"] for a in answers] == ["pending"] * 3, answers
        assert {a["reason"] for a in answers} == {DEFERRED}
        await wait_until(lambda: settled(service, "assign-17", "unassign-17", "assign-21"), 15)

        assigned = await service.store.intake.get_delivery("assign-17")
        unassigned = await service.store.intake.get_delivery("unassign-17")
        other = await service.store.intake.get_delivery("assign-21")
        assert assigned is not None and unassigned is not None and other is not None
        assert assigned.outcome == "queued" and len(assigned.task_ids) == 1
        # Decided after the assignment, the unassignment cancelled the work it queued.
        assert unassigned.outcome == "cancelled", unassigned.reason
        assert unassigned.task_ids == assigned.task_ids
        task = await service.store.get_task(assigned.task_ids[0])
        assert task is not None
        assert task.state.value == "cancelled" or task.cancel_requested, task.state
        assert other.outcome == "queued" and (other.repo, other.number) == ("acme/widget", 21)
        assert await service.store.pending.count_pending() == 0
        # Forgejo sending one again is a duplicate, not a second task.
        again = await post(client, "issues_assigned_dev", 21, "assign-21")
        assert again["status"] == "duplicate", again
        assert await service.store.count_tasks(TaskFilter(delivery_id="assign-21")) == 1


async def test_one_delivery_id_deferred_twice_at_once_is_one_delivery(
    tmp_path: Path, pg_url: str, fake_forgejo: FakeForgejo
) -> None:
    """Forgejo's redelivery racing the first: both are taken while neither is recorded."""
    async with node(tmp_path, fake_forgejo, pg_url, max_deciding=0) as (service, client):
        answers = await asyncio.gather(
            *(post(client, "issues_assigned_dev", 31, "twice-31") for _ in range(4))
        )
        assert sorted(a["status"] for a in answers) == ["duplicate"] * 3 + ["pending"], answers
        await wait_until(lambda: settled(service, "twice-31"), 15)
        assert await service.store.count_tasks(TaskFilter(delivery_id="twice-31")) == 1


async def test_a_burst_past_max_deciding_gets_each_delivery_decided_once(
    tmp_path: Path, pg_url: str, fake_forgejo: FakeForgejo
) -> None:
    """On PostgreSQL, where deliveries are decided concurrently and deferrals committed together."""
    numbers = range(100, 160)
    async with node(tmp_path, fake_forgejo, pg_url, max_deciding=2) as (service, client):
        answers = await asyncio.gather(
            *(post(client, "issues_assigned_dev", n, f"burst-{n}") for n in numbers)
        )
        statuses = [a["status"] for a in answers]
        assert set(statuses) == {"queued", "pending"}, statuses
        assert statuses.count("queued") >= 2
        ids = [f"burst-{n}" for n in numbers]
        await wait_until(lambda: settled(service, *ids), 30)
        for n in numbers:
            record = await service.store.intake.get_delivery(f"burst-{n}")
            assert record is not None and record.outcome == "queued", record
            assert len(record.task_ids) == 1 and record.number == n
        assert await service.store.count_tasks(TaskFilter()) == len(numbers)
        # The same burst again: every delivery a duplicate, nothing placed twice.
        again = await asyncio.gather(
            *(post(client, "issues_assigned_dev", n, f"burst-{n}") for n in numbers)
        )
        assert {a["status"] for a in again} == {"duplicate"}
        assert await service.store.count_tasks(TaskFilter()) == len(numbers)


async def test_deferred_deliveries_survive_a_restart(
    tmp_path: Path, database_url: str, fake_forgejo: FakeForgejo
) -> None:
    # The retrier's decision waits for the forge's permission check, which hangs: the node
    # stops with the delivery still deferred.
    fake_forgejo.hang_next(PERMISSION, 1000, seconds=60)
    async with node(tmp_path, fake_forgejo, database_url, max_deciding=0) as (service, client):
        answer = await post(client, "issues_assigned_dev", 17, "assign-17")
        assert answer["status"] == "pending"
        await wait_until(lambda: len(fake_forgejo.requests_to(PERMISSION, "GET")) >= 1)
    fake_forgejo.heal()
    async with node(tmp_path, fake_forgejo, database_url, max_deciding=16) as (service, _):
        await wait_until(lambda: settled(service, "assign-17"), 15)
        record = await service.store.intake.get_delivery("assign-17")
        assert record is not None and record.outcome == "queued", record
        assert await service.store.count_tasks(TaskFilter(delivery_id="assign-17")) == 1


def deferred_record(delivery_id: str, received_at: float) -> DeliveryRecord:
    """A delivery as a crowded node defers it (its body with an integer past 64 bits)."""
    return DeliveryRecord(
        id=delivery_id,
        flavor="forgejo",
        event="issues",
        event_type="issues",
        received_at=received_at,
        body='{"big": 123456789012345678901234567890}',
        outcome="pending",
        reason=DEFERRED,
        repo="acme/widget",
        number=7,
    )


async def test_deferring_a_batch_skips_ids_seen_before_and_keeps_arrival_order(
    database_url: str,
) -> None:
    store = await SqlStore.open(database_url)
    try:
        assert await store.pending.defer(deferred_record("seen", 1.0))
        deferred = store.pending.defer_batch(
            [
                deferred_record("b", 3.0),
                deferred_record("seen", 4.0),
                deferred_record("a", 2.0),
                deferred_record("b", 5.0),
            ]
        )
        assert deferred == [True, False, True, False]
        due = await store.pending.due(10.0, 10)
        assert [(e.id, e.next_attempt_at, e.last_error) for e in due] == [
            ("seen", 1.0, DEFERRED),
            ("a", 2.0, DEFERRED),
            ("b", 3.0, DEFERRED),
        ]
        assert await store.pending.count_pending(DEFERRED) == 3
        assert await store.pending.count_pending("another reason") == 0
    finally:
        await store.close()
