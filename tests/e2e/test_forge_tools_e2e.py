"""The forge tools end to end: the REAL bundled Claude Code CLI, in its sandbox and without a
forge token, edits, commits and opens its pull request through the service's MCP tools; a
reviewer requests changes with a line comment; a call outside the task is refused. The
Messages API is tests/messages_standin.py, the forge's API tests/fake_forgejo.py, and its git
repositories local bare ones."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_hooks.core.domain import DispatchRequest, Task, TaskKind
from claude_hooks.service.runtime import Service
from tests.agents.test_command_runner import finished
from tests.agents.test_workspace import Forge, git
from tests.claude_service import claude_type
from tests.conftest import ServiceFactory
from tests.fake_forgejo import FakeForgejo
from tests.messages_standin import MessagesStandin, cli_environment, text, tool_use
from tests.support import make_config

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="bubblewrap (bwrap) is not installed here: apt-get install bubblewrap "
    "(.ci/run installs it, so CI runs these tests)",
)

DEV_TOKEN = "tools-dev-token"
REVIEWER_TOKEN = "tools-reviewer-token"


@pytest.fixture
def api() -> Iterator[MessagesStandin]:
    with MessagesStandin() as standin:
        yield standin


@pytest.fixture
async def service(
    start_service: ServiceFactory,
    tmp_path: Path,
    api: MessagesStandin,
    fake_forgejo: FakeForgejo,
    monkeypatch: pytest.MonkeyPatch,
) -> Service:
    cli_environment(api, monkeypatch)
    fake_forgejo.add_token(DEV_TOKEN, "dev-bot")
    fake_forgejo.add_token(REVIEWER_TOKEN, "reviewer-bot")
    fake_forgejo.add_repo(
        "acme", "widget", collaborators={"dev-bot": "write", "reviewer-bot": "write"}
    )
    fake_forgejo.add_issue("acme", "widget", number=17, title="Retries", user="alice")
    forge = Forge(tmp_path / "forge")
    forge.create()
    config = make_config(
        tmp_path,
        forgejo={"url": fake_forgejo.base_url, "clone_url": f"file://{forge.root}"},
        types={
            "dev": claude_type(
                "dev-bot",
                DEV_TOKEN,
                allowed_tools=["Write", "Bash(git add:*)", "Bash(git commit:*)"],
            ),
            "reviewer": claude_type("reviewer-bot", REVIEWER_TOKEN),
        },
        agents=[{"name": "dev-alpha", "type": "dev"}, {"name": "reviewer-1", "type": "reviewer"}],
    )
    started: Service = await start_service(config)
    return started


async def run(
    service: Service, agent_type: str, kind: TaskKind, number: int, **payload: object
) -> Task:
    request = DispatchRequest.for_type(agent_type, kind, "acme/widget", number, dict(payload))
    task_id = await service.pool.dispatch_by_type(agent_type, request)
    return await finished(service, task_id, timeout=90)


async def test_a_sandboxed_dev_opens_its_pr_and_a_reviewer_requests_changes_through_the_tools(
    service: Service, api: MessagesStandin, fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    workdir = service.pool.workspaces.workdir("dev:acme/widget:17")
    api.script(
        tool_use("Write", {"file_path": str(workdir / "retry.py"), "content": "RETRIES = 3\n"}),
        tool_use(
            "Bash",
            {"command": "git add retry.py && git commit -q -m 'Add retries'", "description": "c"},
        ),
        tool_use("mcp__forge__comment", {"number": 99, "body": "not mine"}),
        tool_use(
            "mcp__forge__open_pull_request",
            {"title": "Add retries", "body": "Retries for the client.\n\nCloses #17"},
        ),
        text("Opened the pull request."),
    )
    dev = await run(service, "dev", TaskKind.WORK_ISSUE, 17, title="Retries")
    assert dev.state.value == "succeeded", dev.error

    # The refused call came back to the model as an error, and nothing reached #99.
    refused = [r for r in api.message_requests() if "refused:" in r.last_user_text()]
    assert refused and "#99 is not this task's issue" in refused[0].last_user_text()
    assert not [c for c in fake_forgejo.comments if c.number == 99]

    # The PR exists on the forge, from the session's branch, opened with the dev's token ...
    repo = fake_forgejo.repos[("acme", "widget")]
    [pull] = [i for i in repo.issues.values() if i.pull is not None]
    assert pull.pull is not None
    branch = pull.pull.head_ref
    assert branch.startswith("dev/17-")
    assert (pull.user, pull.title, pull.pull.base_ref) == ("dev-bot", "Add retries", "main")
    # ... and its branch, with the commit, was pushed by the service.
    forge_repo = tmp_path / "forge" / "acme" / "widget.git"
    assert git("log", "-1", "--format=%s %an", branch, cwd=forge_repo) == "Add retries dev-bot"

    api.script(
        tool_use(
            "mcp__forge__submit_review",
            {
                "event": "REQUEST_CHANGES",
                "body": "Make the retries configurable.",
                "comments": [{"path": "retry.py", "line": 1, "body": "Read it from the config."}],
            },
        ),
        tool_use("mcp__forge__merge_pull_request", {}),
        text("Changes requested."),
    )
    review = await run(service, "reviewer", TaskKind.REVIEW_PR, pull.number, title="Add retries")
    assert review.state.value == "succeeded", review.error
    [posted] = fake_forgejo.reviews
    assert (posted.number, posted.event, posted.user) == (
        pull.number,
        "REQUEST_CHANGES",
        "reviewer-bot",
    )
    assert posted.comments == [
        {"path": "retry.py", "new_position": 1, "body": "Read it from the config."}
    ]
    assert fake_forgejo.merges == [], "a reviewer's task merges nothing"
    merge_answer = json.dumps([r.last_user_text() for r in api.message_requests()])
    assert "only a merge_pr task merges" in merge_answer


async def test_a_command_agent_asks_through_its_result_file(
    start_service: ServiceFactory, tmp_path: Path, fake_forgejo: FakeForgejo
) -> None:
    fake_forgejo.add_token(DEV_TOKEN, "dev-bot")
    fake_forgejo.add_repo("acme", "widget", collaborators={"dev-bot": "write"})
    fake_forgejo.add_issue("acme", "widget", number=17, title="Retries", user="alice")
    fake_forgejo.add_issue("acme", "widget", number=18, title="Someone else's", user="alice")
    agent = tmp_path / "agents" / "asks.py"
    agent.parent.mkdir()
    agent.write_text(
        "import json, os\n"
        "requests = [{'tool': 'comment', 'body': 'A question about the retries'},\n"
        "            {'tool': 'comment', 'number': 18, 'body': 'spam'},\n"
        "            {'tool': 'merge_pull_request'}]\n"
        "open(os.environ['CLAUDE_HOOKS_RESULT'], 'w').write(json.dumps({'forge': requests}))\n"
    )
    service: Service = await start_service(
        forgejo={"url": fake_forgejo.base_url},
        types={
            "dev": {
                "login": "dev-bot",
                "token": DEV_TOKEN,
                "runner": "command",
                "command": [sys.executable, str(agent)],
                "workdir": "none",
                "comments": False,
            }
        },
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    task = await run(service, "dev", TaskKind.WORK_ISSUE, 17, title="Retries")
    assert task.state.value == "succeeded", task.error
    assert [(c.number, c.body, c.user) for c in fake_forgejo.comments] == [
        (17, "A question about the retries", "dev-bot")
    ]
    assert fake_forgejo.merges == []
    log = service.pool.log_path(task.id).read_text()
    assert "#18 is not this task's issue or pull request" in log
    assert "only a merge_pr task merges" in log
    assert not (
        service.pool.workspaces.workdir(task.session_key) / ".claude-hooks-result.json"
    ).exists()


async def test_a_claude_agents_hostile_tool_arguments_are_refused_and_its_branch_pushed(
    service: Service, api: MessagesStandin, fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    """Issue 19 item 5 through the MCP server: arguments of the wrong shape get a refusal
    each, back to the model; nothing of them stops the run or its push."""
    workdir = service.pool.workspaces.workdir("dev:acme/widget:17")
    api.script(
        tool_use("Write", {"file_path": str(workdir / "retry.py"), "content": "RETRIES = 3\n"}),
        tool_use(
            "Bash",
            {"command": "git add retry.py && git commit -q -m 'Add retries'", "description": "c"},
        ),
        tool_use("mcp__forge__submit_review", {"event": "COMMENT", "body": "x", "comments": 5}),
        tool_use("mcp__forge__comment", {"body": "deep", "extra": [[[[["too deep"]]]]]}),
        text("Done."),
    )
    dev = await run(service, "dev", TaskKind.WORK_ISSUE, 17, title="Retries", pr_number=40)
    assert dev.state.value == "succeeded", dev.error
    answers = [r.last_user_text() for r in api.message_requests()]
    # The CLI checks the tools' schemas (so `comments` = 5 never reaches the service), not
    # what they leave open: the extra, deep argument is the service's to refuse.
    assert any("5 is not of type 'array'" in answer for answer in answers)
    assert any("refused: the arguments must be a JSON object nested" in a for a in answers)
    assert fake_forgejo.comments == [] and fake_forgejo.reviews == []
    forge_repo = tmp_path / "forge" / "acme" / "widget.git"
    branch = git("for-each-ref", "--format=%(refname:short)", "refs/heads/dev/", cwd=forge_repo)
    assert git("log", "-1", "--format=%s", branch, cwd=forge_repo) == "Add retries"
