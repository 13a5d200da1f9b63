"""The dashboard's operating views in a real browser: retry from a task's page, rejected
deliveries with their hint, long results a click away, dates with zones, the per-type table
on a phone. Skipped where Debian's chromium is not installed."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import httpx
import pytest

from claude_hooks.agents.runners.base import RunContext, RunResult
from tests.browser_fixtures import (  # noqa: F401 (fixtures)
    SESSION_LOOP,
    base_url_in_session,
    client_in_session,
    service_in_session,
    start_service_in_session,
)
from tests.dashboard_fixtures import LoggingGate
from tests.support import forgejo_headers, sign, wait_until

pytest.importorskip("tests.web.test_dashboard_browser")  # skips this module with that one
from tests.web.test_dashboard_browser import expect, log_in, queue

pytestmark = SESSION_LOOP

LONG = "The change touches the scheduler. " * 12 + "Last words of the long result."


class LongResults(LoggingGate):
    async def run(self, ctx: RunContext) -> RunResult:
        result = await super().run(ctx)
        return dataclasses.replace(result, result=LONG)


@pytest.fixture
def runner() -> LongResults:
    return LongResults()


async def test_retry_a_cancelled_task_from_its_page(
    browser: Any, base_url: str, api: httpx.AsyncClient, runner: LongResults
) -> None:
    task_id = await queue(api, "reviewer", 3)
    await wait_until(lambda: task_id in runner.started)
    assert (await api.post(f"/api/tasks/{task_id}/cancel")).status_code == 200
    await wait_until(lambda: task_id in runner.cancelled)
    page = await log_in(browser, base_url, f"/tasks/{task_id}")
    await expect(page.locator("#task h1 .badge")).to_have_text("cancelled")
    await expect(page.locator("#task .cancelled-by")).to_have_text("a user, through the API")
    page.on("dialog", lambda dialog: dialog.accept())
    await page.locator("#task button", has_text="Retry").click()
    await expect(page.locator(".toast")).to_contain_text("Retry queued")
    # The link to the new task arrives over the live stream, without a reload.
    await expect(page.locator("#task .retries a")).to_have_count(1)
    retries = (await api.get(f"/api/tasks/{task_id}")).json()["retries"]
    assert len(retries) == 1
    await page.locator("#task .retries a").click()
    await expect(page).to_have_url(f"{base_url}/tasks/{retries[0]}")
    await expect(page.locator("#task")).to_contain_text("retry of")
    await page.context.close()


async def test_a_wrong_secret_shows_on_the_deliveries_page_with_its_hint(
    browser: Any, base_url: str, api: httpx.AsyncClient
) -> None:
    page = await log_in(browser, base_url, "/deliveries")
    body = json.dumps({"action": "assigned"}).encode()
    headers = forgejo_headers("issue_assign", body, "d-wrong-secret")
    headers["X-Forgejo-Signature"] = sign(body, "another-secret")
    assert (await api.post("/webhook", content=body, headers=headers)).status_code == 401
    await expect(page.locator(".banner.warn")).to_contain_text("1 request rejected")
    await page.locator(".quick a", has_text="rejected").click()
    row = page.locator("tr.row-rejected")
    await expect(row).to_have_count(1)
    await expect(row.locator(".hint")).to_have_text(
        "signature does not match: check that the webhook's secret equals server.webhook_secret"
    )
    await expect(row).to_contain_text("d-wrong-secret")
    await page.context.close()


async def test_long_results_are_cut_at_a_word_and_times_carry_date_and_zone(
    browser: Any, base_url: str, api: httpx.AsyncClient, runner: LongResults
) -> None:
    task_id = await queue(api, "dev", 8)
    await wait_until(lambda: task_id in runner.started)
    runner.release(task_id)
    page = await log_in(browser, base_url, "/tasks")
    cell = page.locator(f"tr[data-task='{task_id}'] td.why")
    summary = cell.locator("summary")
    await expect(summary).to_be_visible()
    shown = await summary.inner_text()
    assert shown.endswith("…") and "Last words" not in shown
    kept = shown.removesuffix("…").rstrip()
    assert LONG.startswith(kept) and LONG[len(kept)] == " "  # cut between two words
    await summary.click()
    await expect(cell.locator(".full")).to_contain_text("Last words of the long result.")
    stamp = await page.locator(f"tr[data-task='{task_id}'] time").first.inner_text()
    assert re.search(r"\d{4}", stamp) and re.search(r"\d{2}:\d{2}:\d{2}", stamp)
    assert re.search(r"(UTC|GMT|[A-Z]{3,4}|[+-]\d)", stamp.split()[-1]), stamp
    await page.context.close()


async def test_the_per_type_table_fits_a_phone(browser: Any, base_url: str) -> None:
    context = await browser.new_context(viewport={"width": 360, "height": 780}, is_mobile=True)
    page = await context.new_page()
    await page.goto(base_url + "/login")
    await page.fill("#token", "test-token")
    await page.click("button[type=submit]")
    table = page.locator("table.per-type")
    await expect(table).to_be_visible()
    sideways = await table.evaluate("t => t.scrollWidth - t.parentElement.clientWidth")
    assert sideways <= 0
    await context.close()
