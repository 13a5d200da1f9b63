"""The *Outcomes* page in a real browser (Playwright driving Debian's Chromium).

Twelve weeks of recorded outcomes: the charts, the funnel, the review-rounds histogram and
the table by type are drawn by the server; a new outcome arrives over the live stream. With
UPDATE_SCREENSHOT=1 the page's picture is saved as docs/outcomes.png.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from claude_hooks.core.decision import Decision
from claude_hooks.core.outcomes import Intervention, OutcomeFact, PullFact, SessionSeen
from claude_hooks.service.events import Event
from claude_hooks.service.runtime import Service
from claude_hooks.store.decisions import Cause
from claude_hooks.store.schema import tasks
from tests.browser_fixtures import (  # noqa: F401 (fixtures)
    SESSION_LOOP,
    base_url_in_session,
    service_in_session,
    start_service_in_session,
)
from tests.dashboard_fixtures import CHROMIUM

if not CHROMIUM.exists():
    pytest.skip(
        "browser tests need Debian's chromium: apt-get install chromium", allow_module_level=True
    )
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="browser tests need playwright: pip install -e '.[dev]'"
)
expect = playwright_api.expect
pytestmark = SESSION_LOOP

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "outcomes.png"
WEEK = 7 * 86400.0


def history(now: float) -> tuple[list[OutcomeFact], list[dict[str, Any]]]:
    """40 dev sessions over twelve weeks, getting better as the weeks pass: 30 PRs opened,
    24 approved, 18 merged, 3 closed; and their runs' costs."""
    rng = random.Random(7)
    facts: list[OutcomeFact] = []
    rows: list[dict[str, Any]] = []
    for n in range(40):
        began = now - (11.5 - n * 11 / 39) * WEEK
        key = f"dev:acme/widget:{n + 1}"
        facts.append(SessionSeen(key, "dev", "acme/widget", n + 1, began, True, None, "sonnet"))
        for i in range(rng.randint(1, 4)):
            rows.append(
                {
                    "id": f"outcome{n:04d}{i}",
                    "type": "dev",
                    "agent": "dev-alpha",
                    "kind": ("work_issue", "address_review", "fix_ci", "answer_mention")[i],
                    "session_key": key,
                    "repo": "acme/widget",
                    "number": n + 1,
                    "payload": {},
                    "state": "succeeded",
                    "seq": 10_000 + n * 4 + i,
                    "enqueued_at": began + i * 3600,
                    "started_at": began + i * 3600,
                    "finished_at": began + i * 3600 + 900,
                    "cost_usd": round(rng.uniform(0.4, 2.5) * (1.6 - n / 40), 2),
                }
            )
        if n % 4 == 3:
            continue  # no PR (yet)
        pr = 1000 + n
        facts.append(PullFact("opened", "acme/widget", pr, began + 3600, key, "dev", f"{n:040x}"))
        facts.append(
            PullFact("ci", "acme/widget", pr, began + 4000, head_sha=f"{n:040x}",
                     passed=rng.random() < 0.3 + n / 60)
        )  # fmt: skip
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3)) if n < 36 else 0):
            facts.append(PullFact("changes_requested", "acme/widget", pr, began + 5000))
        if n < 36 and n % 6 != 5:
            facts.append(PullFact("approved", "acme/widget", pr, began + 7200))
            if n % 6 != 4:
                facts.append(PullFact("merged", "acme/widget", pr, began + 9000))
        elif n < 36:
            facts.append(PullFact("closed", "acme/widget", pr, began + 9000))
        if n % 9 == 0:
            facts.append(Intervention("commands", "acme/widget", n + 1, key))
    return facts, rows


async def record(service: Service, facts: list[OutcomeFact]) -> None:
    cause = Cause("a test", None, service.clock())
    dispatched = await service.store.dispatch_all([], None, Decision(outcomes=facts), cause)
    assert dispatched.recorded


async def test_the_outcomes_page_draws_the_recorded_weeks(
    browser: Any, base_url: str, service: Service, tmp_path: Path
) -> None:
    facts, rows = history(service.clock())
    engine: sa.Engine = service.store.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(tasks.insert(), rows)
    await record(service, facts)

    context = await browser.new_context(viewport={"width": 1280, "height": 1000})
    page = await context.new_page()
    await page.goto(base_url + "/outcomes")
    await page.fill("#token", "test-token")
    await page.click("button[type=submit]")
    await expect(page).to_have_url(base_url + "/outcomes")
    await expect(page.locator("#live-state")).to_have_text("live")
    legend = page.locator(".funnel-legend li")
    await expect(legend).to_have_text(
        ["assigned: 40", "PR opened: 30", "approved: 24", "merged: 18"]
    )
    await expect(page.locator("#merge-rate-chart rect")).to_have_count(12)
    await expect(page.locator("#cost-chart rect")).to_have_count(12)
    assert await page.locator("#rounds-chart rect").count() >= 2
    dev = page.locator("tr[data-type=dev] td")
    await expect(dev.nth(3)).to_have_text("30")  # PRs
    await expect(dev.nth(4)).to_have_text("18")  # merged
    await expect(dev.nth(5)).to_have_text("3")  # closed unmerged

    # A merge recorded now reaches the open page over the live stream.
    key = "dev:acme/widget:39"
    await record(service, [PullFact("merged", "acme/widget", 1038, service.clock())])
    service.pool.bus.publish(Event("delivery", data={"id": key}))
    await expect(dev.nth(4)).to_have_text("19")
    await expect(legend.nth(3)).to_have_text("merged: 19")

    update = os.environ.get("UPDATE_SCREENSHOT") == "1"
    await page.screenshot(
        path=str(SCREENSHOT if update else tmp_path / "outcomes.png"), full_page=True
    )
    await context.close()
