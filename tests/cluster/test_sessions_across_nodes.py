"""A Claude session started on one node is resumed on another: two Services with their own
data dirs on one PostgreSQL database, the REAL bundled CLI against the stand-in Messages API.

The second node has neither the first one's transcript nor its workdir: the conversation
comes back from the database (the SDK's SessionStore), the uncommitted work from the saved
worktree state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from claude_hooks.core.domain import TaskState
from claude_hooks.service.runtime import Service
from claude_hooks.web.app import create_app
from tests.agents.test_workspace import Forge
from tests.claude_service import claude_config, finished
from tests.e2e.test_claude_e2e import git
from tests.messages_standin import MessagesStandin, cli_environment, text, tool_use
from tests.support import fixture

KEY = "dev:acme/widget:17"


@pytest.fixture
def api() -> Iterator[MessagesStandin]:
    with MessagesStandin() as standin:
        yield standin


@pytest.fixture
def environment(tmp_path: Path, api: MessagesStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    cli_environment(api, monkeypatch, tmp_path / "home")


async def open_node(tmp_path: Path, name: str, forge: Forge, database_url: str) -> Service:
    config = claude_config(
        tmp_path,
        forge.root,
        ["dev-alpha"],
        server={"data_dir": str(tmp_path / name), "database_url": database_url, "node": name},
    )
    service = await Service.open(config)
    await service.start()
    return service


async def deliver(service: Service, *names: str) -> str:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for name in names:
            body, headers = fixture(name)
            answer = await client.post("/webhook", content=body, headers=headers)
            assert answer.status_code in (200, 202), answer.text
    [queued] = answer.json()["tasks"]
    return str(queued["id"])


@pytest.mark.usefixtures("environment")
async def test_a_session_started_on_one_node_resumes_on_another(
    tmp_path: Path, api: MessagesStandin, pg_url: str
) -> None:
    forge = Forge(tmp_path / "forge")
    forge.create()

    a = await open_node(tmp_path, "a", forge, pg_url)
    try:
        workdir_a = a.pool.workspaces.workdir(KEY)
        api.script(
            tool_use(
                "Write", {"file_path": str(workdir_a / "retry.py"), "content": "RETRIES = 3\n"}
            ),
            text("Retries are in retry.py, not committed yet."),
        )
        first = await finished(a, await deliver(a, "issues_assigned_dev"))
        assert first.state is TaskState.SUCCEEDED, first.error
    finally:
        await a.stop()
    assert (workdir_a / "retry.py").read_text() == "RETRIES = 3\n"
    assert "retry.py" in git(workdir_a, "status", "--porcelain")  # uncommitted

    b = await open_node(tmp_path, "b", forge, pg_url)
    try:
        workdir_b = b.pool.workspaces.workdir(KEY)
        assert workdir_b != workdir_a and not workdir_b.exists()
        api.script(text("I will keep the retries configurable."))
        second = await finished(
            b, await deliver(b, "pull_request_opened", "pull_request_review_rejected")
        )
        assert second.state is TaskState.SUCCEEDED, second.error
        log = b.pool.log_path(second.id).read_text()
    finally:
        await b.stop()

    assert second.claude_session_id == first.claude_session_id
    assert '"event": "transcript_restored"' in log
    history = api.message_requests()[-1]
    assert "max-retries-exhausted case" in history.last_user_text()  # the review, new here
    assert "Retries are in retry.py, not committed yet." in history.all_text()  # from node a
    assert str(workdir_a / "retry.py") in history.all_text()  # a's tool call, as it was
    # The workdir continues from node a's tree, uncommitted change included.
    assert (workdir_b / "retry.py").read_text() == "RETRIES = 3\n"
    assert "retry.py" in git(workdir_b, "status", "--porcelain")
