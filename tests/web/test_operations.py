"""Operating it: rejected deliveries are recorded and shown with a hint (defect 4), a failed
or cancelled task can be retried, and the dashboard says who cancelled a task and which
delivery did. Over a real uvicorn server, as Forgejo and a browser reach it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from claude_hooks.service.runtime import Service
from claude_hooks.web.dashboard import _clock
from tests.conftest import ServiceFactory
from tests.support import fixture, forgejo_headers, run_cli, sign, wait_until
from tests.web.test_dashboard_api import AUTH, CSRF, LoggingGate, dashboard_config, queue, serve

SECRET_BODY = "the-body-is-never-stored"


@pytest.fixture
def runner() -> LoggingGate:
    return LoggingGate()


@pytest.fixture
async def service(start_service: ServiceFactory, runner: LoggingGate, tmp_path: Path) -> Service:
    config = dashboard_config(
        tmp_path, server={"max_body_bytes": 40_000, "max_rejections_per_hour": 4}
    )
    started: Service = await start_service(config, runner=runner)
    return started


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(service) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        yield client


def _signed(body: bytes, delivery: str) -> dict[str, str]:
    return forgejo_headers("issue_assign", body, delivery)


async def test_rejections_are_recorded_with_a_hint_and_capped_per_hour(
    client: httpx.AsyncClient, service: Service
) -> None:
    body = json.dumps({"note": SECRET_BODY}).encode()
    wrong = {**_signed(body, "d-wrong"), "X-Forgejo-Signature": sign(body, "not-the-secret")}
    wrong["User-Agent"] = "Go-http-client/1.1"
    assert (await client.post("/webhook", content=body, headers=wrong)).status_code == 401
    malformed = b"{not json " + SECRET_BODY.encode()
    answer = await client.post("/webhook", content=malformed, headers=_signed(malformed, "d-bad"))
    assert answer.status_code == 400
    large = b"x" * 50_000
    answer = await client.post("/webhook", content=large, headers=_signed(large, "d-large"))
    assert answer.status_code == 413

    listing = (await client.get("/api/deliveries", params={"outcome": "rejected"})).json()
    assert listing["total"] == 3
    by_status = {row["status"]: row for row in listing["deliveries"]}
    assert sorted(by_status) == [400, 401, 413]
    wrong_row = by_status[401]
    assert wrong_row["hint"] == (
        "signature does not match: check that the webhook's secret equals server.webhook_secret"
    )
    assert wrong_row["remote"] == "127.0.0.1"
    assert wrong_row["delivery_id"] == "d-wrong"
    assert wrong_row["event_type"] == "issue_assign"
    assert wrong_row["user_agent"] == "Go-http-client/1.1"
    assert wrong_row["content_type"] == "application/json"
    assert wrong_row["size"] == len(body)
    assert by_status[413]["size"] > 40_000 and "max_body_bytes" in by_status[413]["hint"]
    assert "JSON" in by_status[400]["reason"]
    # Rejections are not deliveries: the delivery list stays as it was.
    assert (await client.get("/api/deliveries")).json()["total"] == 0

    # Nothing of a refused body reaches the database.
    database = sqlite3.connect(service.config.data_dir / "claude-hooks.db")
    try:
        rows = database.execute("SELECT * FROM rejections").fetchall()
    finally:
        database.close()
    assert SECRET_BODY not in repr(rows)

    # At most max_rejections_per_hour (4) are kept; the rest are only counted.
    for number in range(3):
        headers = {**_signed(body, f"d-flood-{number}"), "X-Forgejo-Signature": "0" * 64}
        assert (await client.post("/webhook", content=body, headers=headers)).status_code == 401
    assert (await client.get("/api/deliveries", params={"outcome": "rejected"})).json()[
        "total"
    ] == 4
    assert service.intake.rejections.dropped == 2

    page = await client.get("/deliveries", params={"outcome": "rejected"})
    assert "check that the webhook&#39;s secret equals server.webhook_secret" in page.text
    assert "d-wrong" in page.text
    overview = await client.get("/deliveries")
    assert "rejected in the last 24 h" in overview.text

    listed = run_cli("deliveries", "list", "--outcome", "rejected", config=service.config)
    assert listed.returncode == 0, listed.stderr
    assert "server.webhook_secret" in " ".join(listed.stdout.split())

    bogus = await client.get("/api/deliveries", params={"outcome": "bogus"})
    assert bogus.status_code == 400 and "rejected" in bogus.json()["error"]


async def test_retry_a_cancelled_task_links_both_and_refuses_active_ones(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    running = await queue(client, "reviewer", 5)
    waiting = await queue(client, "reviewer", 6)
    await wait_until(lambda: running in runner.started)

    refused = await client.post(f"/api/tasks/{waiting}/retry")
    assert refused.status_code == 409
    assert "only a failed or cancelled task can be retried" in refused.json()["error"]
    assert (await client.post(f"/api/tasks/{running}/retry")).status_code == 409

    assert (await client.post(f"/api/tasks/{waiting}/cancel")).status_code == 200
    old = (await client.get(f"/api/tasks/{waiting}")).json()
    assert old["state"] == "cancelled" and old["cancelled_by"] == "a user, through the API"

    answer = await client.post(f"/api/tasks/{waiting}/retry")
    assert answer.status_code == 202, answer.text
    new = answer.json()
    assert new["id"] != waiting and new["state"] == "queued" and new["retry_of"] == waiting
    assert (new["session_key"], new["kind"], new["number"]) == (
        old["session_key"],
        old["kind"],
        old["number"],
    )
    assert (await client.get(f"/api/tasks/{waiting}")).json()["retries"] == [new["id"]]
    assert (await client.get(f"/api/tasks/{new['id']}")).json()["retry_of"] == waiting
    stored = await service.store.get_task(new["id"])
    original = await service.store.get_task(waiting)
    assert stored is not None and original is not None and stored.payload == original.payload
    assert (await client.post(f"/api/tasks/{new['id']}/retry")).status_code == 409

    runner.release_all()
    await wait_until(lambda: new["id"] in runner.started)
    old_page = await client.get(f"/tasks/{waiting}")
    assert f'href="/tasks/{new["id"]}"' in old_page.text and "retried as" in old_page.text
    assert "a user, through the API" in old_page.text
    new_page = await client.get(f"/tasks/{new['id']}")
    assert f'href="/tasks/{waiting}"' in new_page.text and "retry of" in new_page.text
    # A failed or cancelled task's page offers the button; a finished good one does not.
    assert f'data-action="/api/tasks/{waiting}/retry"' in old_page.text
    assert "/retry" not in new_page.text


async def test_a_dashboard_cancel_and_an_unassign_say_who_cancelled(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    by_hand = await queue(client, "reviewer", 9)
    async with httpx.AsyncClient(
        base_url=str(client.base_url), cookies=client.cookies, headers=CSRF
    ) as browser:
        login = await browser.post("/login", content="token=test-token", follow_redirects=False)
        assert login.status_code == 303
        assert (await browser.post(f"/api/tasks/{by_hand}/cancel")).status_code == 200
    task = (await client.get(f"/api/tasks/{by_hand}")).json()
    assert task["cancelled_by"] == "a user, on the dashboard"

    body, headers = fixture("issues_assigned_dev")
    work = (await client.post("/webhook", content=body, headers=headers)).json()["tasks"][0]["id"]
    await wait_until(lambda: work in runner.started)
    unassign_body, unassign_headers = fixture("issues_unassigned")
    data = json.loads(unassign_body)
    data["issue"]["number"] = 17
    payload = json.dumps(data).encode()
    headers = forgejo_headers(unassign_headers["X-Gitea-Event-Type"], payload, "unassign-17")
    answer = await client.post("/webhook", content=payload, headers=headers)
    assert answer.json()["cancelled"] == [work]
    await wait_until(lambda: work in runner.cancelled)
    await wait_until(lambda: service.pool.workers["dev-alpha"].current is None)

    cancelled = (await client.get(f"/api/tasks/{work}")).json()
    assert cancelled["state"] == "cancelled"
    assert cancelled["cancelled_by"].startswith("forge event issue_assign unassigned by ")
    assert "(delivery unassign-17)" in cancelled["cancelled_by"]
    page = await client.get("/deliveries/unassign-17")
    assert "Tasks it cancelled" in page.text and f'href="/tasks/{work}"' in page.text
    task_page = await client.get(f"/tasks/{work}")
    assert "cancelled by" in task_page.text and "issue_assign unassigned" in task_page.text


def test_times_carry_date_and_zone() -> None:
    shown = _clock(1_700_000_000.0)
    assert shown.startswith("2023-11-1") and len(shown.split()) == 3
