"""Defect 3: every delivery is answered within server.answer_deadline, even when the forge the
sender's permission check needs does not answer; such a delivery waits as `pending` and is
processed by itself once the forge answers again, also across a restart."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_hooks.config import Config
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory
from tests.fake_forgejo import FakeForgejo
from tests.support import fixture, run_cli, wait_until
from tests.web.test_forge_flows import forge_config

PERMISSION = "/repos/acme/widget/collaborators/alice/permission"
DEADLINE = 1.5


def pending_config(tmp_path: Path, forge: FakeForgejo) -> Config:
    config: Config = forge_config(tmp_path, forge)
    config.server.answer_deadline = DEADLINE
    config.forgejo.retries = 0
    config.server.pending_retry_min = 0.1
    config.server.pending_retry_max = 0.4
    return config


@pytest.fixture
async def client_for(start_service: ServiceFactory) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    async def make(config: Config, runner: Any) -> tuple[Service, httpx.AsyncClient]:
        service: Service = await start_service(config, runner=runner)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(service)), base_url="http://test"
        )
        clients.append(client)
        return service, client

    yield make
    for client in clients:
        await client.aclose()


async def timed_post(client: httpx.AsyncClient) -> tuple[httpx.Response, float]:
    body, headers = fixture("issues_assigned_dev")
    started = time.monotonic()
    answer = await client.post("/webhook", content=body, headers=headers)
    return answer, time.monotonic() - started


DELIVERY = fixture("issues_assigned_dev")[1]["X-Forgejo-Delivery"]


async def test_a_forge_that_never_answers_does_not_hold_the_answer_up(
    fake_forgejo: FakeForgejo, client_for: Any, tmp_path: Path
) -> None:
    fake_forgejo.hang_next(PERMISSION, 1000, seconds=60)
    config = pending_config(tmp_path, fake_forgejo)
    assert config.forgejo.timeout > DEADLINE  # the client alone would wait far longer
    service, client = await client_for(config, None)
    answer, elapsed = await timed_post(client)
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "pending"
    assert "retried automatically" in answer.json()["reason"]
    assert elapsed < DEADLINE
    record = await service.store.intake.get_delivery(DELIVERY)
    assert record is not None and record.outcome == "pending" and record.task_ids == []
    assert await service.store.count_tasks(TaskFilter()) == 0
    auth = {"Authorization": "Bearer test-token"}
    page = await client.get(f"/deliveries/{DELIVERY}", headers=auth)
    assert "retried automatically with backoff" in page.text
    listed = await client.get("/deliveries", params={"outcome": "pending"}, headers=auth)
    assert f'data-delivery="{DELIVERY}"' in listed.text and "s-pending" in listed.text

    fake_forgejo.heal()
    await wait_until(lambda: service.intake.counts.get("queued", 0) == 1, timeout=10)
    record = await service.store.intake.get_delivery(DELIVERY)
    assert record is not None and record.outcome == "queued" and len(record.task_ids) == 1
    assert await service.store.intake.assigned_types("acme/widget", 17) == {"dev"}
    assert await service.store.pending.count_pending() == 0
    # Forgejo sending it again is a duplicate, not a second task.
    again, _ = await timed_post(client)
    assert again.json()["status"] == "duplicate"


async def test_a_failing_forge_makes_the_delivery_pending_then_it_is_processed(
    fake_forgejo: FakeForgejo, client_for: Any, tmp_path: Path
) -> None:
    fake_forgejo.fail_next(PERMISSION, 5)
    service, client = await client_for(pending_config(tmp_path, fake_forgejo), None)
    answer, elapsed = await timed_post(client)
    assert answer.status_code == 202 and answer.json()["status"] == "pending", answer.text
    assert elapsed < DEADLINE
    # The five failures run out by themselves: each retry asks again, with backoff.
    await wait_until(lambda: service.intake.counts.get("queued", 0) == 1, timeout=10)
    assert len(fake_forgejo.requests_to(PERMISSION)) == 6
    tasks = await service.store.list_tasks(TaskFilter(delivery_id=DELIVERY), 10, 0)
    assert [task.type for task in tasks] == ["dev"]


async def test_a_pending_delivery_survives_a_restart(
    fake_forgejo: FakeForgejo, start_service: ServiceFactory, tmp_path: Path
) -> None:
    fake_forgejo.hang_next(PERMISSION, 1000, seconds=60)
    config = pending_config(tmp_path, fake_forgejo)
    first: Service = await start_service(config, runner=None)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(first)), base_url="http://test"
    ) as client:
        answer, _ = await timed_post(client)
    assert answer.json()["status"] == "pending"
    await first.stop()

    listed = run_cli("deliveries", "list", "--outcome", "pending", "--json", config=config)
    assert [(row["id"], row["outcome"]) for row in json.loads(listed.stdout)] == [
        (DELIVERY, "pending")
    ]

    fake_forgejo.heal()
    second: Service = await start_service(pending_config(tmp_path, fake_forgejo), runner=None)
    await wait_until(lambda: second.intake.counts.get("queued", 0) == 1, timeout=10)
    record = await second.store.intake.get_delivery(DELIVERY)
    assert record is not None and record.outcome == "queued"
    assert await second.store.pending.count_pending() == 0
