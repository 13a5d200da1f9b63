"""The living status comment: one comment per task on the fake Forgejo, created when queued,
edited in place (counted as POSTs and PATCHes), throttled, and kept across a restart."""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path
from typing import Any

from claude_hooks.agents.runners.base import RunProgress
from claude_hooks.core.domain import TaskState
from claude_hooks.service.events import Event
from claude_hooks.service.runtime import Service
from tests.conftest import ServiceFactory
from tests.fake_forgejo import FakeForgejo
from tests.support import GateRunner, fixture, forgejo_headers, make_config, wait_until

POSTS = "/repos/acme/widget/issues/17/comments"


def living_config(tmp_path: Path, forge: FakeForgejo, interval: float) -> Any:
    forge.add_token("tok-admin", "admin-bot", site_admin=True)
    forge.add_token("tok-dev", "dev-bot")
    forge.add_repo("acme", "widget", collaborators={"alice": "write", "dev-bot": "write"})
    forge.add_issue("acme", "widget", number=17, title="Retry failed deliveries")
    dev = {"login": "dev-bot", "token": "tok-dev", "runner": "command", "command": ["true"]}
    return make_config(
        tmp_path,
        server={"comment_edit_interval": interval, "public_url": "https://hooks.example.com"},
        forgejo={"url": forge.base_url, "token": "tok-admin", "retries": 1},
        types={"dev": {**dev, "workdir": "none"}},
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )


async def assign(service: Service) -> str:
    body = fixture("issues_assigned_dev")[0]
    answer = await service.intake.receive(forgejo_headers("issue_assign", body, "a-1"), body)
    assert answer.status == 202, answer.body
    return str(answer.body["tasks"][0]["id"])


def patches(forge: FakeForgejo) -> int:
    return sum(1 for r in forge.requests if r.method == "PATCH" and "/comments/" in r.path)


def body_has(forge: FakeForgejo, text: str) -> bool:
    return len(forge.comments) == 1 and text in forge.comments[0].body


async def test_one_comment_per_task_is_edited_from_queued_to_finished(
    start_service: ServiceFactory, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    service = await start_service(living_config(tmp_path, fake_forgejo, 0.2), runner=gate)
    task_id = await assign(service)
    await wait_until(lambda: task_id in gate.started)
    await wait_until(lambda: body_has(fake_forgejo, "**running** on `dev-alpha`"))
    service.bus.publish(
        Event(
            "task.progress",
            await service.store.get_task(task_id),
            {
                "progress": RunProgress(
                    todos=(("completed", "Read the issue"), ("in_progress", "Write the fix")),
                    files=("src/retry.py",),
                    cost_usd=0.42,
                )
            },
        )
    )
    await wait_until(lambda: body_has(fake_forgejo, "- [ ] Write the fix *(in progress)*"))
    text = fake_forgejo.comments[0].body
    assert "- [x] Read the issue" in text and "Files touched: `src/retry.py`" in text
    assert "Cost so far: $0.42" in text
    assert f"[Live log](https://hooks.example.com/tasks/{task_id})" in text
    calls = [
        {"tool": "open_pull_request", "done": "opened pull request #18 from dev/17 into main: U"},
        {"tool": "merge_pull_request", "refused": "only a merge_pr task merges"},
    ]
    service.bus.publish(
        Event("task.report", await service.store.get_task(task_id), {"calls": calls})
    )
    gate.release(task_id)
    await wait_until(lambda: body_has(fake_forgejo, "**succeeded** on `dev-alpha`"))
    final = fake_forgejo.comments[0].body
    assert "done by dev-alpha" in final
    assert "Pull request: opened pull request #18 from dev/17 into main: U" in final
    assert "- `merge_pull_request`: only a merge_pr task merges" in final
    assert len(fake_forgejo.requests_to(POSTS, "POST")) == 1
    assert patches(fake_forgejo) >= 2
    assert fake_forgejo.comments[0].user == "dev-bot"


async def test_edits_are_throttled_and_the_last_state_wins(
    start_service: ServiceFactory, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    service = await start_service(living_config(tmp_path, fake_forgejo, 1.5), runner=gate)
    task_id = await assign(service)
    await wait_until(lambda: body_has(fake_forgejo, "**running**"), timeout=10)
    before = patches(fake_forgejo)
    task = await service.store.get_task(task_id)
    for step in range(5):
        todos = (("in_progress", f"step {step}"),)
        service.bus.publish(Event("task.progress", task, {"progress": RunProgress(todos=todos)}))
        await asyncio.sleep(0.05)
    await wait_until(lambda: body_has(fake_forgejo, "step 4"), timeout=10)
    assert patches(fake_forgejo) == before + 1  # five updates, one edit
    writes = [
        r.at
        for r in fake_forgejo.requests
        if (r.method, r.path) == ("POST", POSTS) or (r.method == "PATCH" and "/comments/" in r.path)
    ]
    # Never two writes of the comment within the interval (1.5 s).
    assert all(later - earlier >= 1.45 for earlier, later in itertools.pairwise(writes))
    gate.release(task_id)


async def test_the_comment_is_edited_after_a_restart_not_posted_again(
    start_service: ServiceFactory, fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    config = living_config(tmp_path, fake_forgejo, 0.1)
    first_gate = GateRunner()
    first = await start_service(config, runner=first_gate)
    task_id = await assign(first)
    await wait_until(lambda: body_has(fake_forgejo, "**running**"))
    await first.stop()  # the running task goes back to its queue
    second_gate = GateRunner()
    second = await start_service(config, runner=second_gate)
    await wait_until(lambda: task_id in second_gate.started)
    second_gate.release(task_id)
    await wait_until(lambda: body_has(fake_forgejo, "**succeeded**"))
    found = await second.store.get_task(task_id)
    assert found is not None and found.state is TaskState.SUCCEEDED
    assert len(fake_forgejo.requests_to(POSTS, "POST")) == 1


async def test_the_finished_comment_says_what_the_agent_was_refused(
    start_service: ServiceFactory, fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    agent = tmp_path / "asks.py"
    agent.write_text(
        "import json, os, sys\nsys.stdin.read()\n"
        "requests = [{'tool': 'merge_pull_request'}]\n"
        "open(os.environ['CLAUDE_HOOKS_RESULT'], 'w').write(json.dumps({'forge': requests}))\n"
    )
    config = living_config(tmp_path, fake_forgejo, 0.1)
    config.types["dev"].command = [sys.executable, str(agent)]
    service = await start_service(config)
    await assign(service)
    await wait_until(lambda: body_has(fake_forgejo, "**succeeded**"), timeout=10)
    final = fake_forgejo.comments[0].body
    assert "Not done:\n- `merge_pull_request`: only a merge_pr task merges" in final
