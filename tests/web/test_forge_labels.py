"""Label triggers end to end: signed label deliveries (the captured Forgejo payloads, and
issue ones of the same shape) assign and unassign agent types."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from claude_hooks.core.domain import TaskKind, TaskState
from claude_hooks.service.runtime import Service
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory
from tests.fake_forgejo import FakeForgejo
from tests.support import GateRunner, fixture, forgejo_headers, make_config, wait_until


@pytest.fixture
async def app(
    start_service: ServiceFactory, tmp_path: Path, gate: GateRunner
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    config = make_config(
        tmp_path,
        security={"allowed_senders": ["6543", "alice"]},
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    config.types["dev"].labels = ["Kind/Testing", "agent:dev"]
    service: Service = await start_service(config, runner=gate)
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield service, client


async def post(client: httpx.AsyncClient, name: str) -> httpx.Response:
    body, headers = fixture(name)
    return await client.post("/webhook", content=body, headers=headers)


async def relabel(
    client: httpx.AsyncClient, name: str, labels: list[str], delivery: str, sender: str = ""
) -> httpx.Response:
    """Deliver the pull request fixture `name` again with other labels, signed anew."""
    body, headers = fixture(name)
    data = json.loads(body)
    data["pull_request"]["labels"] = [{"id": i, "name": n} for i, n in enumerate(labels, 1)]
    raw = json.dumps(data).encode()
    event_type = headers["X-Forgejo-Event-Type"]
    return await client.post(
        "/webhook", content=raw, headers=forgejo_headers(event_type, raw, delivery)
    )


async def test_adding_a_types_label_assigns_it_and_removing_it_cancels(
    app: tuple[Service, httpx.AsyncClient], gate: GateRunner
) -> None:
    service, client = app
    first = await post(client, "pull_request_label_added")  # Documentation, Enhancement
    assert first.status_code == 200
    assert "no agent label changed" in first.json()["reason"]
    assert await service.store.labels.labels("test_it/test_ci_thing", 1) == {
        "Kind/Documentation",
        "Kind/Enhancement",
    }

    added = await post(client, "pull_request_label_updated")  # Documentation -> Testing
    assert added.status_code == 202, added.text
    assert "labelled for dev" in added.json()["reason"]
    task_id = added.json()["tasks"][0]["id"]
    task = await service.store.get_task(task_id)
    assert task is not None
    assert (task.kind, task.session_key) == (TaskKind.WORK_ISSUE, "dev:test_it/test_ci_thing:1")
    assert task.payload["label"] == "Kind/Testing" and task.payload["is_pull"] is True
    await wait_until(lambda: task_id in gate.started)

    # label_cleared lists what is left: the Testing label is still there, nothing changes.
    same = await post(client, "pull_request_label_cleared")
    assert same.status_code == 200 and "no agent label changed" in same.json()["reason"]

    removed = await relabel(client, "pull_request_label_cleared", ["Kind/Enhancement"], "rm-1")
    assert removed.status_code == 200
    assert removed.json()["cancelled"] == [task_id]
    await wait_until(lambda: task_id in gate.cancelled)

    async def cancelled() -> bool:
        found = await service.store.get_task(task_id)
        return found is not None and found.state is TaskState.CANCELLED

    # The worker records the stopped run just after its runner saw the cancel.
    await wait_until(cancelled)


async def test_an_issue_label_is_an_assignment_with_its_checks(
    app: tuple[Service, httpx.AsyncClient], gate: GateRunner
) -> None:
    service, client = app
    issue = "issues_assigned_dev"
    body, _ = fixture(issue)
    data = json.loads(body)
    data["action"] = "label_updated"
    data["issue"]["labels"] = [{"id": 1, "name": "agent:dev"}]
    data["sender"]["login"] = "mallory"
    raw = json.dumps(data).encode()
    refused = await client.post(
        "/webhook", content=raw, headers=forgejo_headers("issue_label", raw, "lbl-mallory")
    )
    assert refused.status_code == 200
    assert "may not trigger agents" in refused.json()["reason"]
    # Not saved: the same labels set by someone allowed are new work.
    assert await service.store.labels.labels("acme/widget", 17) == set()
    data["sender"]["login"] = "alice"
    raw = json.dumps(data).encode()
    answer = await client.post(
        "/webhook", content=raw, headers=forgejo_headers("issue_label", raw, "lbl-alice")
    )
    assert answer.status_code == 202, answer.text
    [entry] = answer.json()["tasks"]
    assert entry["session_key"] == "dev:acme/widget:17"
    # An agent labelling for its own type triggers nothing.
    data["issue"]["labels"] = []
    data["sender"]["login"] = "alice"
    raw = json.dumps(data).encode()
    await client.post("/webhook", content=raw, headers=forgejo_headers("issue_label", raw, "x1"))
    data["issue"]["labels"] = [{"id": 1, "name": "agent:dev"}]
    data["sender"]["login"] = "dev-bot"
    raw = json.dumps(data).encode()
    own = await client.post(
        "/webhook", content=raw, headers=forgejo_headers("issue_label", raw, "lbl-dev-bot")
    )
    assert "an agent never triggers its own type" in own.json()["reason"]
    assert "tasks" not in own.json()


async def test_a_label_event_whose_header_contradicts_the_body_is_refused(
    app: tuple[Service, httpx.AsyncClient],
) -> None:
    _service, client = app
    body, _ = fixture("pull_request_label_updated")
    answer = await client.post(
        "/webhook", content=body, headers=forgejo_headers("pull_request_sync", body, "liar")
    )
    assert answer.status_code == 400
    assert "label_updated" in answer.json()["error"]


async def test_a_repository_policy_adds_trigger_labels_read_from_the_base_branch(
    start_service: ServiceFactory, tmp_path: Path, gate: GateRunner, fake_forgejo: FakeForgejo
) -> None:
    fake_forgejo.add_token("tok-admin", "admin-bot", site_admin=True)
    fake_forgejo.add_repo("test_it", "test_ci_thing")
    config = make_config(
        tmp_path,
        security={"allowed_senders": ["6543"]},
        agents=[{"name": "dev-alpha", "type": "dev"}],
        forgejo={"url": fake_forgejo.base_url, "token": "tok-admin", "retries": 0},
    )
    service: Service = await start_service(config, runner=gate)
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        # The service's dev has no labels: Kind/Testing triggers nothing.
        plain = await post(client, "pull_request_label_updated")
        assert plain.status_code == 200 and "no agent label changed" in plain.json()["reason"]
        await relabel(client, "pull_request_label_updated", ["Kind/Enhancement"], "reset")
        # The repository's file (no [policy] needed: labels only add) adds it to dev's.
        fake_forgejo.commit_file(
            "test_it",
            "test_ci_thing",
            ".forgejo/claude-hooks.toml",
            '[types.dev]\nlabels = ["Kind/Testing"]\n',
        )
        added = await relabel(
            client, "pull_request_label_updated", ["Kind/Enhancement", "Kind/Testing"], "add"
        )
        assert added.status_code == 202, added.text
        assert "labelled for dev" in added.json()["reason"]
        task = await service.store.get_task(added.json()["tasks"][0]["id"])
        assert task is not None and task.payload["label"] == "Kind/Testing"
