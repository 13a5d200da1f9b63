"""The dashboard in a real browser (Playwright driving Debian's Chromium) against a real server.

Nothing here reloads a page after it is opened: every change must arrive over the live stream.
The last test builds a realistic load and saves the screenshot the README shows.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_hooks.agents.runners.base import RunContext, RunResult
from claude_hooks.config import Config
from claude_hooks.service.runtime import Service
from claude_hooks.store.intake import DeliveryRecord
from claude_hooks.store.sql import SqlStore
from tests.browser_fixtures import (  # noqa: F401 (fixtures)
    SESSION_LOOP,
    base_url_in_session,
    client_in_session,
    service_in_session,
    start_service_in_session,
)
from tests.dashboard_fixtures import AUTH, CHROMIUM, LoggingGate, serve
from tests.support import GateRunner, fixture, make_config, wait_until

if not CHROMIUM.exists():
    pytest.skip(
        "browser tests need Debian's chromium: apt-get install chromium", allow_module_level=True
    )
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="browser tests need playwright: pip install -e '.[dev]'"
)
expect = playwright_api.expect
pytestmark = SESSION_LOOP

# The README's picture is refreshed on demand (UPDATE_SCREENSHOT=1 make test), so a test run
# leaves the working tree as it found it.
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


async def log_in(browser: Any, base_url: str, path: str = "/") -> Any:
    """A fresh browser context, logged in through the form; its page is on `path`."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.goto(base_url + path)
    await expect(page).to_have_url(f"{base_url}/login?next={path.replace('/', '%2F')}")
    await page.fill("#token", "test-token")
    await page.click("button[type=submit]")
    await expect(page).to_have_url(base_url + path)
    await expect(page.locator("#live-state")).to_have_text("live")
    # A reload would lose this: the tests check it is still there at the end.
    await page.evaluate("window.notReloaded = true")
    return page


async def still_the_same_page(page: Any) -> None:
    assert await page.evaluate("window.notReloaded === true")


async def queue(api: httpx.AsyncClient, agent_type: str, number: int) -> str:
    answer = await api.post(
        "/api/tasks",
        json={"type": agent_type, "kind": "work_issue", "repo": "acme/gadget", "number": number},
    )
    assert answer.status_code == 202, answer.text
    task_id: str = answer.json()["id"]
    return task_id


async def test_login_shows_instances_of_every_type(browser: Any, base_url: str) -> None:
    page = await log_in(browser, base_url)
    for agent_type, names in [("dev", ["dev-alpha", "dev-bravo"]), ("reviewer", ["reviewer-1"])]:
        group = page.locator(f"#type-{agent_type}")
        await expect(group.locator("h2")).to_have_text(agent_type)
        for name in names:
            await expect(group.locator(f"[data-agent={name}] .badge").first).to_have_text("idle")
    await expect(page.locator("#type-boss")).to_contain_text("No instance of boss")
    await page.context.close()


async def test_a_delivery_becomes_a_task_that_moves_without_reloading(
    browser: Any, base_url: str, api: httpx.AsyncClient, runner: LoggingGate
) -> None:
    page = await log_in(browser, base_url)
    blockers = [await queue(api, "dev", 1), await queue(api, "dev", 2)]
    await wait_until(lambda: len(runner.started) == 2)
    body, headers = fixture("issues_assigned_dev")
    answer = (await api.post("/webhook", content=body, headers=headers)).json()
    task_id = answer["tasks"][0]["id"]
    short = task_id[-7:]

    waiting = page.locator(".queue li", has_text=short)
    await expect(waiting).to_contain_text("acme/widget#17")
    await expect(waiting.locator(".pos")).to_have_text("1")

    agent = answer["tasks"][0]["agent"]
    runner.release(await current_task(page, agent))
    card = page.locator(f"[data-agent={agent}]")
    await expect(card.locator(".current .what")).to_contain_text("acme/widget#17")
    await expect(card.locator(".badge").first).to_have_text("busy")
    await expect(card.locator(".tail")).to_contain_text("checking out")
    await expect(waiting).to_have_count(0)

    runner.release(task_id)
    row = page.locator(f"#finished tr[data-task='{task_id}']")
    await expect(row.locator(".badge")).to_have_text("succeeded")
    await expect(card.locator(".badge").first).to_have_text("idle")
    runner.release_all()
    await expect(page.locator("#stats")).to_contain_text("succeeded today")
    await expect(page.locator(".stat.ok .v")).to_have_text("3")
    assert set(blockers) <= set(runner.started)
    await still_the_same_page(page)
    await page.context.close()


async def current_task(page: Any, agent: str) -> str:
    """The id of the task an instance's card shows as running."""
    link = page.locator(f"[data-agent={agent}] .current .meta a.mono")
    await expect(link).to_have_count(1)
    title: str = await link.get_attribute("title")
    return title.removeprefix("task ")


async def test_cancel_a_running_task_from_the_page(
    browser: Any, base_url: str, api: httpx.AsyncClient, runner: LoggingGate
) -> None:
    task_id = await queue(api, "reviewer", 9)
    await wait_until(lambda: task_id in runner.started)
    page = await log_in(browser, base_url)
    card = page.locator("[data-agent=reviewer-1]")
    await expect(card.locator(".badge").first).to_have_text("busy")
    questions: list[str] = []

    async def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)
    await card.locator("button", has_text="Cancel").click()
    await expect(page.locator(".toast")).to_contain_text(f"Cancel requested for {task_id}")
    assert questions and task_id in questions[0] and "acme/gadget#9" in questions[0]
    await expect(card.locator(".badge").first).to_have_text("idle")
    await expect(page.locator(f"#finished tr[data-task='{task_id}'] .badge")).to_have_text(
        "cancelled"
    )
    assert runner.cancelled == [task_id]

    await page.locator("[data-agent=dev-bravo] button", has_text="Disable").click()
    await expect(page.locator(".toast").last).to_contain_text("dev-bravo disabled")
    await expect(page.locator("[data-agent=dev-bravo] .badge").first).to_have_text("disabled")
    await still_the_same_page(page)
    await page.context.close()


async def test_declining_the_confirmation_changes_nothing(
    browser: Any, base_url: str, service: Service
) -> None:
    page = await log_in(browser, base_url)
    page.on("dialog", lambda dialog: dialog.dismiss())
    await page.locator("[data-agent=dev-alpha] button", has_text="Disable").click()
    await expect(page.locator("[data-agent=dev-alpha] .badge").first).to_have_text("idle")
    assert service.pool.workers["dev-alpha"].enabled
    await page.context.close()


async def test_an_ignored_delivery_shows_its_reason(
    browser: Any, base_url: str, api: httpx.AsyncClient
) -> None:
    page = await log_in(browser, base_url, "/deliveries")
    body, headers = fixture("push")
    await api.post("/webhook", content=body, headers=headers)
    row = page.locator("#deliveries tr", has_text="push")
    await expect(row.locator(".badge")).to_have_text("ignored")
    await expect(row.locator(".why")).to_contain_text("push events need no agent work")
    page.on("dialog", lambda dialog: dialog.accept())
    await row.locator("button", has_text="Replay").click()
    await expect(page.locator(".toast")).to_contain_text("Replayed: ignored")
    await expect(page.locator("#deliveries tr .tag", has_text="replay")).to_have_count(1)
    await still_the_same_page(page)
    await page.context.close()


async def test_a_hostile_delivery_id_cannot_steer_the_replay_button(
    browser: Any, base_url: str, service: Service
) -> None:
    """A delivery id recorded before ids were checked: its Replay button posts to its own
    (encoded) URL, never to /api/agents/dev-alpha/disable. The page runs under the CSP with
    no violation."""
    hostile = "../agents/dev-alpha/disable?x="
    await service.store.intake.add_delivery(
        DeliveryRecord(
            id=hostile,
            flavor="forgejo",
            event="issues",
            event_type="issues",
            received_at=time.time(),
            body="{}",
            outcome="ignored",
        ),
        None,
    )
    context = await browser.new_context()
    page = await context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    posted: list[str] = []
    page.on(
        "request", lambda request: posted.append(request.url) if request.method == "POST" else None
    )
    await page.goto(base_url + "/deliveries")
    await page.fill("#token", "test-token")
    await page.click("button[type=submit]")
    await expect(page.locator("#live-state")).to_have_text("live")
    page.on("dialog", lambda dialog: dialog.accept())
    await page.locator(f"tr[data-delivery='{hostile}'] button", has_text="Replay").click()
    await expect(page.locator(".toast")).to_contain_text("Not Found")
    replays = [url for url in posted if "/replay" in url]
    assert replays == [base_url + "/api/deliveries/..%2Fagents%2Fdev-alpha%2Fdisable%3Fx%3D/replay"]
    assert not any("/api/agents/" in url for url in posted), posted
    assert service.pool.workers["dev-alpha"].enabled
    assert violations == []
    await context.close()


async def test_task_page_follows_the_log_live(
    browser: Any, base_url: str, api: httpx.AsyncClient, runner: LoggingGate, service: Service
) -> None:
    task_id = await queue(api, "dev", 4)
    await wait_until(lambda: task_id in runner.started)
    page = await log_in(browser, base_url, f"/tasks/{task_id}")
    await expect(page.locator("#log")).to_have_text("checking out\nworking\n")
    with service.pool.log_path(task_id).open("a") as log:
        log.write("tests pass\n")
    await expect(page.locator("#log")).to_contain_text("tests pass")
    await expect(page.locator("#task .timeline")).to_contain_text("started")
    runner.release(task_id)
    await expect(page.locator("#task h1 .badge")).to_have_text("succeeded")
    await expect(page.locator("#task")).to_contain_text("done by dev-")
    await expect(page.locator("#log-state")).to_contain_text("end of log")
    await still_the_same_page(page)
    await page.context.close()


async def test_phone_layout_has_no_sideways_scroll(browser: Any, base_url: str) -> None:
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = await context.new_page()
    await page.goto(base_url + "/login")
    await page.fill("#token", "test-token")
    await page.click("button[type=submit]")
    await expect(page.locator("#type-dev")).to_be_visible()
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    await context.close()


async def test_a_busy_day_fits_its_cards_dates_are_iso_and_metrics_keep_the_dashboard(
    browser: Any, base_url: str, service: Service, tmp_path: Path
) -> None:
    """At 1280 px a day of many deliveries of every outcome stays inside its card; times read
    2026-12-07 14:05:09 UTC on pages as in banners, whatever the browser's locale; the
    Prometheus text opens beside the dashboard, not instead of it."""
    counts = {"queued": 1234, "ignored": 567, "cancelled": 89, "pending": 12, "error": 345}
    now = time.time()
    for outcome, count in counts.items():
        for index in range(count):
            record = DeliveryRecord(
                id=f"{outcome}-{index}",
                flavor="forgejo",
                event="issues",
                event_type="issues",
                received_at=now,
                body="{}",
                outcome=outcome,
            )
            await service.store.intake.add_delivery(record, None)
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = await context.new_page()
    await page.goto(base_url + "/login")
    await page.fill("#token", "test-token")
    await page.click("button[type=submit]")
    card = page.locator(".stat", has_text="deliveries today")
    await expect(card).to_contain_text("89 cancelled")
    overflowing = await page.evaluate(
        "[...document.querySelectorAll('.stat, .stat .v')]"
        ".filter((el) => el.scrollWidth > el.clientWidth).length"
    )
    assert overflowing == 0
    await page.screenshot(path=str(tmp_path / "stats-1280.png"))

    await page.goto(base_url + "/deliveries")
    shown = await page.locator("time[data-ts]").first.text_content()
    assert shown is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+", shown), shown

    metrics = page.locator("header nav a[href='/metrics']")
    assert await metrics.get_attribute("target") == "_blank"
    async with context.expect_page() as opened:
        await metrics.click()
    beside = await opened.value
    await expect(beside.locator("body")).to_contain_text("claude_hooks_deliveries_total")
    assert page.url == base_url + "/deliveries"  # the dashboard is still there
    await context.close()


# the screenshot: several types, busy instances, queues and a day of history


class Clock:
    """The service's clock, running `behind` seconds late: history is made in the past."""

    def __init__(self) -> None:
        self.behind = 0.0

    def __call__(self) -> float:
        return time.time() - self.behind


class Scripted(GateRunner):
    """Tasks write a Claude-like log and end as the test says: success with a cost, or failure."""

    def __init__(self) -> None:
        super().__init__()
        self.endings: dict[str, RunResult] = {}

    async def run(self, ctx: RunContext) -> RunResult:
        ctx.log_path.parent.mkdir(parents=True, exist_ok=True)
        with ctx.log_path.open("a", encoding="utf-8") as log:
            log.writelines(json.dumps(record) + "\n" for record in claude_log(ctx))
        await super().run(ctx)
        return self.endings.get(ctx.task.id, RunResult(succeeded=True, exit_code=0))


def text(words: str) -> dict[str, Any]:
    return {"type": "assistant", "content": [{"type": "text", "text": words}]}


def tool(name: str, **given: str) -> dict[str, Any]:
    return {"type": "assistant", "content": [{"type": "tool_use", "name": name, "input": given}]}


def output(words: str) -> dict[str, Any]:
    return {"type": "user", "content": [{"type": "tool_result", "content": words}]}


STEPS: dict[str, list[dict[str, Any]]] = {
    "work_issue": [
        tool("Bash", command="git switch -c dev/44-rate-limit-retries"),
        tool("Read", file_path="src/api/client.py"),
        tool("Edit", file_path="src/api/client.py"),
        tool("Bash", command="pytest -q tests/test_client.py"),
        output("23 passed in 1.92s"),
        text("Retries honour Retry-After now; opening the pull request."),
    ],
    "fix_ci": [
        text("CI failed in test_ranges: an off-by-one at the upper bound."),
        tool("Bash", command="pytest -x -q tests/test_ranges.py"),
        output("1 failed, 13 passed"),
        tool("Edit", file_path="src/widget/ranges.py"),
        tool("Bash", command="pytest -q"),
        output("212 passed in 4.87s"),
    ],
    "review_pr": [
        tool("Bash", command="git diff origin/main...HEAD --stat"),
        output(" 4 files changed, 120 insertions(+), 18 deletions(-)"),
        tool("Read", file_path="src/api/pagination.py"),
        tool("Grep", pattern="next_cursor"),
        text("parse_cursor() never checks for None; asking for a test."),
    ],
}


def claude_log(ctx: RunContext) -> list[dict[str, Any]]:
    start = {"type": "system", "subtype": "init", "data": {"session_id": "4f1c", "model": "sonnet"}}
    issue = text(f"Reading {ctx.task.repo}#{ctx.task.number}.")
    return [start, issue, *STEPS.get(ctx.task.kind.value, STEPS["work_issue"])]


def screenshot_config(tmp_path: Path) -> Config:
    quiet = {"workdir": "none", "comments": False}
    return make_config(
        tmp_path,
        agents=[
            {"name": name, "type": agent_type}
            for agent_type, names in [
                ("dev", ["dev-alpha", "dev-bravo", "dev-charlie"]),
                ("reviewer", ["reviewer-1", "reviewer-2"]),
                ("boss", ["boss-1"]),
            ]
            for name in names
        ],
        types={
            "dev": {"runner": "claude", "login": "dev-bot", **quiet},
            "reviewer": {"runner": "claude", **quiet},
            "boss": {"runner": "merge", **quiet},
        },
        security={"allowed_senders": ["alice", "bob"]},
        forgejo={"url": "https://forge.example.com"},
        server={"cancel_grace": 0.5},
    )


HISTORY = [  # type, kind, repo, number, minutes it ran, cost, error
    ("dev", "work_issue", "acme/widget", 11, 14.2, 1.84, None),
    ("reviewer", "review_pr", "acme/widget", 12, 3.1, 0.41, None),
    ("dev", "address_review", "acme/widget", 11, 6.5, 0.77, None),
    ("boss", "merge_pr", "acme/widget", 12, 0.1, None, None),
    ("dev", "work_issue", "acme/api", 40, 21.0, 2.93, "exit code 1: 3 tests failed"),
    ("dev", "fix_ci", "acme/api", 41, 4.4, 0.52, None),
    ("reviewer", "review_pr", "acme/api", 41, 2.2, 0.33, None),
    ("dev", "answer_mention", "acme/docs", 7, 1.2, 0.09, None),
    ("reviewer", "review_pr", "acme/docs", 8, 1.9, 0.21, None),
    ("boss", "merge_pr", "acme/api", 41, 0.1, None, "merge refused: head changed since approval"),
]  # fmt: skip


async def test_screenshot_of_a_busy_dashboard(browser: Any, tmp_path: Path) -> None:
    update = os.environ.get("UPDATE_SCREENSHOT") == "1"
    screenshot = README_SCREENSHOT if update else tmp_path / "dashboard.png"
    clock = Clock()
    runner = Scripted()
    config = screenshot_config(tmp_path)
    store = await SqlStore.open(config.database_url, node=config.server.node)
    service = Service(config, store, clock=clock, runner_for=lambda _type: runner)
    await service.start()
    try:
        async with serve(service) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as api:
            await make_history(service, api, runner, clock)
            context = await browser.new_context(viewport={"width": 1440, "height": 900})
            page = await context.new_page()
            await page.goto(url + "/login")
            await page.fill("#token", "test-token")
            await page.click("button[type=submit]")
            await expect(page.locator("#live-state")).to_have_text("live")
            await expect(page.locator("#type-dev .instance.st-busy")).to_have_count(3)
            await expect(page.locator(".tail").first).to_contain_text("pull request")
            await page.screenshot(path=str(screenshot), full_page=True)
            await context.close()
            runner.release_all()
    finally:
        runner.release_all()
        await service.stop()
    assert screenshot.stat().st_size > 50_000


async def make_history(
    service: Service, api: httpx.AsyncClient, runner: Scripted, clock: Clock
) -> None:
    """A few hours of finished work, then busy instances, queues and recent deliveries."""
    clock.behind = 4 * 3600
    for agent_type, kind, repo, number, minutes, cost, error in HISTORY:
        task_id = (
            await api.post(
                "/api/tasks",
                json={"type": agent_type, "kind": kind, "repo": repo, "number": number},
            )
        ).json()["id"]
        await wait_until(lambda task_id=task_id: task_id in runner.started)
        runner.endings[task_id] = RunResult(
            succeeded=error is None,
            exit_code=0 if error is None else 1,
            result=None if error else f"Done: {kind.replace('_', ' ')} on {repo}#{number}.",
            error=error,
            cost_usd=cost,
        )
        clock.behind -= minutes * 60
        runner.release(task_id)
        await wait_until(lambda: not any(w.current for w in service.pool.workers.values()))
        clock.behind -= 7 * 60
    clock.behind = 25 * 60
    for name in ["push", "issues_opened", "pull_request_synchronized", "issues_assigned_dev"]:
        body, headers = fixture(name)
        await api.post("/webhook", content=body, headers=headers)
        clock.behind = max(0.0, clock.behind - 90)
    clock.behind = 17 * 60
    for agent_type, kind, repo, number in [
        ("dev", "work_issue", "acme/api", 44),
        ("dev", "fix_ci", "acme/widget", 19),
        ("reviewer", "review_pr", "acme/api", 45),
    ]:
        await api.post(
            "/api/tasks", json={"type": agent_type, "kind": kind, "repo": repo, "number": number}
        )
        clock.behind -= 5 * 60
    await wait_until(lambda: len([w for w in service.pool.workers.values() if w.current]) == 4)
    for agent_type, kind, repo, number in [
        ("dev", "work_issue", "acme/docs", 9),
        ("dev", "address_review", "acme/api", 40),
        ("reviewer", "review_pr", "acme/widget", 20),
        ("reviewer", "review_pr", "acme/docs", 10),
        ("dev", "work_issue", "acme/widget", 23),
        ("reviewer", "review_pr", "acme/api", 46),
    ]:
        await api.post(
            "/api/tasks", json={"type": agent_type, "kind": kind, "repo": repo, "number": number}
        )
        clock.behind = max(0.0, clock.behind - 40)
    clock.behind = 0.0
    await api.post("/api/agents/reviewer-2/disable")
