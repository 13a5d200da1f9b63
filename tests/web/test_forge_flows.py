"""Flows that talk to the forge, against a fake Forgejo API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_hooks.core.decision import CiWatch
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory
from tests.fake_forgejo import FakeForgejo
from tests.support import GateRunner, fixture, forgejo_headers, make_config, wait_until

HEAD_C = "dc5b081193719209a67d020d386d4c1ddc27c662"


def forge_config(tmp_path: Path, forge: FakeForgejo, **overrides: Any) -> Any:
    forge.add_token("tok-admin", "admin-bot", site_admin=True)
    forge.add_token("tok-dev", "dev-bot")
    forge.add_token("tok-boss", "boss-bot")
    forge.add_repo(
        "acme",
        "widget",
        collaborators={
            "alice": "write",
            "bob": "write",
            "mallory": "read",
            "dev-bot": "write",
            "boss-bot": "admin",
        },
    )
    forge.add_issue("acme", "widget", number=17, title="Retry failed deliveries")
    forge.add_pull(
        "acme",
        "widget",
        number=18,
        head_sha=HEAD_C,
        head_ref="dev-bot/issue-17-retry",
        user="dev-bot",
        body="Fixes #17.",
    )
    command = ["true"]
    types = {
        "dev": {
            "login": "dev-bot",
            "token": "tok-dev",
            "runner": "command",
            "command": command,
            "workdir": "none",
        },
        "boss": {
            "login": "boss-bot",
            "token": "tok-boss",
            "runner": "command",
            "command": command,
            "workdir": "none",
        },
    }
    types.update(overrides.pop("types", {}))
    return make_config(
        tmp_path,
        forgejo={"url": forge.base_url, "token": "tok-admin", "retries": 1},
        types=types,
        agents=[{"name": "dev-alpha", "type": "dev"}, {"name": "boss-1", "type": "boss"}],
        **overrides,
    )


@pytest.fixture
async def client_for(
    start_service: ServiceFactory,
) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    async def make(config: Any, runner: Any = None) -> tuple[Service, httpx.AsyncClient]:
        service: Service = await start_service(config, runner=runner)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(service)), base_url="http://test"
        )
        clients.append(client)
        return service, client

    yield make
    for client in clients:
        await client.aclose()


async def post(client: httpx.AsyncClient, name: str) -> httpx.Response:
    body, headers = fixture(name)
    return await client.post("/webhook", content=body, headers=headers)


def as_sender(name: str, login: str, delivery: str) -> tuple[bytes, dict[str, str]]:
    body, headers = fixture(name)
    data = json.loads(body)
    data["sender"]["login"] = login
    new = json.dumps(data).encode()
    return new, forgejo_headers(headers["X-Forgejo-Event-Type"], new, delivery)


async def test_sender_permissions_come_from_the_forge_and_are_cached(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    _service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    body, headers = as_sender("issues_assigned_dev", "mallory", "d-mallory")
    refused = await client.post("/webhook", content=body, headers=headers)
    assert refused.status_code == 200
    assert refused.json()["reason"] == (
        "sender 'mallory' may not trigger agents: it needs write access to acme/widget "
        "or a place in [security] allowed_senders"
    )
    path = "/repos/acme/widget/collaborators/alice/permission"
    for index, number in enumerate((17, 30)):
        data = json.loads(fixture("issues_assigned_dev")[0])
        data["issue"]["number"] = number
        payload = json.dumps(data).encode()
        answer = await client.post(
            "/webhook",
            content=payload,
            headers=forgejo_headers("issue_assign", payload, f"d-alice-{index}"),
        )
        assert answer.status_code == 202, answer.text
    assert len(fake_forgejo.requests_to(path)) == 1
    assert fake_forgejo.requests_to(path)[0].user == "admin-bot"


async def test_forge_failure_is_an_error_answer_not_a_500(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    # A refusal is final (a forge that is down makes the delivery pending instead).
    fake_forgejo.fail_next(
        "/repos/acme/widget/collaborators/alice/permission", 5, status=403, message="forbidden"
    )
    answer = await post(client, "issues_assigned_dev")
    assert answer.status_code == 502
    assert answer.json()["status"] == "error"
    assert "could not ask Forgejo" in answer.json()["reason"]
    record = await service.store.intake.get_delivery(
        fixture("issues_assigned_dev")[1]["X-Forgejo-Delivery"]
    )
    assert record is not None and record.outcome == "error"
    assert await service.store.intake.assigned_types("acme/widget", 17) == set()


async def test_a_refused_token_says_which_type_to_fix(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    config = forge_config(tmp_path, fake_forgejo)
    config.forgejo.token = None
    config.types["boss"].token = None
    config.types["dev"].token = None
    _service, client = await client_for(config, gate)
    answer = await post(client, "issues_assigned_dev")
    assert answer.status_code == 502
    assert "forgejo" in answer.json()["reason"].lower()
    assert "token" in answer.json()["reason"]


async def test_task_progress_is_commented_on_the_issue(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    config = forge_config(tmp_path, fake_forgejo)
    config.types["dev"].comments = "each"
    _service, client = await client_for(config)
    answer = await post(client, "issues_assigned_dev")
    assert answer.status_code == 202
    await wait_until(lambda: len(fake_forgejo.comments) == 3)
    bodies = [c.body for c in fake_forgejo.comments]
    task_id = answer.json()["tasks"][0]["id"]
    assert all(c.number == 17 and c.user == "dev-bot" for c in fake_forgejo.comments)
    assert f"queued `work_issue` (task `{task_id}`) for **dev** on `dev-alpha`" in bodies[0]
    assert "started" in bodies[1]
    assert "finished" in bodies[2]


async def test_comments_can_be_turned_off_per_type(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    config = forge_config(tmp_path, fake_forgejo)
    config.types["dev"].comments = "off"
    service, client = await client_for(config)
    answer = await post(client, "issues_assigned_dev")
    task_id = answer.json()["tasks"][0]["id"]

    async def done() -> bool:
        task = await service.store.get_task(task_id)
        return task is not None and task.state.finished

    for _ in range(500):
        if await done():
            break
        await asyncio.sleep(0.01)
    assert fake_forgejo.comments == []


async def test_polled_ci_failure_dispatches_fix_ci_then_asks_a_human(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    config = forge_config(tmp_path, fake_forgejo, flows={"max_fix_attempts": 1})
    service, client = await client_for(config, gate)
    synced = await post(client, "pull_request_synchronized")
    assert "watching its CI status" in synced.json()["reason"]
    watches = await service.store.intake.ci_watches()
    assert [(w.pr_number, w.head_sha) for w in watches] == [(18, HEAD_C)]

    assert await service.ci.check(watches[0]) == "pending"  # no status reported yet
    fake_forgejo.add_status("acme", "widget", HEAD_C, "ci/test", "pending")
    assert await service.ci.check(watches[0]) == "pending"
    fake_forgejo.add_status(
        "acme",
        "widget",
        HEAD_C,
        "ci/test",
        "failure",
        target_url="https://ci.example/1",
        description="3 tests failed",
    )
    assert await service.ci.check(watches[0]) == "failure"
    assert await service.store.intake.ci_watches() == []
    tasks = await service.store.list_tasks(TaskFilter(), 10, 0)
    assert [(t.kind.value, t.session_key) for t in tasks] == [("fix_ci", "dev:acme/widget:17")]
    assert tasks[0].payload["ci_context"]["description"] == "3 tests failed"

    # A second failure on the same head is past the limit: a comment asks a human instead.
    await service.ci.check(CiWatch("acme/widget", 18, HEAD_C, 0.0))
    await wait_until(lambda: any("A human needs to look" in c.body for c in fake_forgejo.comments))
    assert len(await service.store.list_tasks(TaskFilter(), 10, 0)) == 1


async def test_approved_agent_pr_is_merged_by_the_merge_runner(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    config = forge_config(
        tmp_path,
        fake_forgejo,
        types={"boss": {"login": "boss-bot", "token": "tok-boss", "runner": "merge"}},
        flows={"merge_style": "squash"},
    )
    config.types["dev"].comments = "off"
    config.types["boss"].comments = "off"
    service, client = await client_for(config)
    approved_body, approved_headers = fixture("pull_request_review_approved")
    head = json.loads(approved_body)["pull_request"]["head"]["sha"]
    fake_forgejo.add_pull(
        "acme",
        "widget",
        number=18,
        head_sha=head,
        head_ref="dev-bot/issue-17-retry",
        user="dev-bot",
        body="Fixes #17.",
    )
    answer = await client.post("/webhook", content=approved_body, headers=approved_headers)
    assert answer.status_code == 202, answer.text
    await wait_until(lambda: len(fake_forgejo.merges) == 1)
    merge = fake_forgejo.merges[0]
    assert merge.user == "boss-bot"
    assert merge.body["Do"] == "squash"
    assert merge.body["head_commit_id"] == head
    task_id = answer.json()["tasks"][0]["id"]

    async def state() -> str:
        task = await service.store.get_task(task_id)
        assert task is not None
        return task.state.value

    for _ in range(500):
        if await state() != "running" and await state() != "queued":
            break
        await asyncio.sleep(0.01)
    assert await state() == "succeeded"
