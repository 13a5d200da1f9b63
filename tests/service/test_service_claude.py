"""The whole service with `runner = "claude"`: a delivery assigns an issue to dev, the REAL
bundled Claude Code CLI works in the issue's worktree, and a later task of the same key
resumes the conversation on another instance."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from claude_hooks.core.domain import TaskState
from claude_hooks.service.runtime import Service
from claude_hooks.web.app import create_app
from tests.agents.test_workspace import Forge
from tests.claude_service import claude_config, finished
from tests.conftest import ServiceFactory
from tests.e2e.test_claude_e2e import git
from tests.messages_standin import MessagesStandin, cli_environment, text, tool_use
from tests.support import fixture

KEY = "dev:acme/widget:17"


@pytest.fixture
def api() -> Iterator[MessagesStandin]:
    with MessagesStandin() as standin:
        yield standin


@pytest.fixture
async def service(
    start_service: ServiceFactory,
    tmp_path: Path,
    api: MessagesStandin,
    monkeypatch: pytest.MonkeyPatch,
) -> Service:
    cli_environment(api, monkeypatch, tmp_path / "home")
    forge = Forge(tmp_path / "forge")
    forge.create()
    config = claude_config(
        tmp_path,
        forge.root,
        ["dev-alpha", "dev-bravo"],
        dev={"allowed_tools": ["Bash(git add:*)", "Bash(git commit:*)"]},
    )
    started: Service = await start_service(config)
    return started


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def post(client: httpx.AsyncClient, name: str) -> httpx.Response:
    body, headers = fixture(name)
    return await client.post("/webhook", content=body, headers=headers)


async def test_assigned_issue_is_worked_then_resumed_on_another_instance(
    service: Service, client: httpx.AsyncClient, api: MessagesStandin, tmp_path: Path
) -> None:
    workdir = service.pool.workspaces.workdir(KEY)
    api.script(
        tool_use("Write", {"file_path": str(workdir / "retry.py"), "content": "RETRIES = 3\n"}),
        tool_use(
            "Bash",
            {
                "command": "git add retry.py && git commit -q -m 'Add retries'",
                "description": "commit",
            },
        ),
        text("Retries are in retry.py, committed."),
    )
    answer = await post(client, "issues_assigned_dev")
    assert answer.status_code == 202, answer.text
    [queued] = answer.json()["tasks"]
    assert (queued["agent"], queued["session_key"]) == ("dev-alpha", KEY)

    first = await finished(service, queued["id"])
    assert first.state is TaskState.SUCCEEDED, first.error
    assert first.result == "Retries are in retry.py, committed."
    assert first.claude_session_id
    assert first.cost_usd is not None and first.cost_usd > 0
    assert git(workdir, "log", "-1", "--format=%s %an") == "Add retries dev-bot"
    branch = git(workdir, "branch", "--show-current")
    assert branch.startswith("dev/17-")
    # The service pushed the session's branch itself: the agent holds no forge token.
    forge_repo = tmp_path / "forge" / "acme" / "widget.git"
    assert git(forge_repo, "log", "-1", "--format=%s %an", branch) == "Add retries dev-bot"
    session = await service.store.get_session(KEY)
    assert session is not None
    assert session.claude_session_id == first.claude_session_id
    log = service.pool.log_path(first.id).read_text()
    assert '"type": "result"' in log

    api.script(text("I will keep the retries configurable."))
    assert (await post(client, "pull_request_opened")).status_code == 200
    answer = await post(client, "pull_request_review_rejected")
    assert answer.status_code == 202, answer.text
    [queued] = answer.json()["tasks"]
    assert (queued["agent"], queued["session_key"]) == ("dev-bravo", KEY)

    second = await finished(service, queued["id"])
    assert second.state is TaskState.SUCCEEDED, second.error
    assert second.agent == "dev-bravo"
    assert second.claude_session_id == first.claude_session_id
    history = api.message_requests()[-1]
    assert "max-retries-exhausted case" in history.last_user_text()  # the review text
    assert "bob" in history.last_user_text()  # its author
    assert "retry.py" in history.all_text()  # the first conversation came back
