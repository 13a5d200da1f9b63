"""End to end: the claude runner with the REAL bundled Claude Code CLI, offline.

The CLI talks to a stand-in of the Messages API on 127.0.0.1 (tests/messages_standin.py) whose
scripted answers make it use its tools for real; the workdir is a worktree prepared from a local
bare repository, as the pool would prepare it. Timings are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_hooks.agents import processes
from claude_hooks.agents.environment import agent_environment
from claude_hooks.agents.runners.base import RunContext, SteerMessage
from claude_hooks.agents.runners.claude import ClaudeRunner
from claude_hooks.agents.workspace import Workspaces
from claude_hooks.config import TypeConfig
from claude_hooks.core.domain import Task, TaskKind
from claude_hooks.store.sql import SqlStore
from tests.agents.test_workspace import IDENTITY, Forge, make_task
from tests.messages_standin import MessagesStandin, error, stall, text, tool_use

ROLE = "You are the team's developer: small, tested changes."


class EndToEnd:
    def __init__(self, tmp_path: Path, store: SqlStore, api: MessagesStandin) -> None:
        self.store = store
        self.api = api
        self.data_dir = tmp_path / "data"
        self.forge = Forge(tmp_path / "forge")
        self.forge.create()
        self.workspaces = Workspaces(self.data_dir, remote_url=self.forge.url)
        home = tmp_path / "home"
        home.mkdir()
        self.parent = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "ANTHROPIC_BASE_URL": api.url,
            "ANTHROPIC_API_KEY": "sk-standin",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        self.pids: list[int] = []

    def type_config(self, **overrides: Any) -> TypeConfig:
        options: dict[str, Any] = {
            "login": "dev-bot",
            "token": "forgejo-dev-token",
            "role": ROLE,
            "allowed_tools": ["Bash(git add:*)", "Bash(git commit:*)"],
            "env": {"DISABLE_TELEMETRY": "1", **IDENTITY},
            **overrides,
        }
        return TypeConfig(**options)

    async def context(
        self, task: Task, config: TypeConfig, cancel_grace: float = 2.0
    ) -> RunContext:
        workdir = await self.workspaces.prepare(task, config)

        async def on_process(pid: int, start: int | None) -> None:
            self.pids.append(pid)

        return RunContext(
            task=task,
            type_config=config,
            workdir=workdir,
            log_path=self.data_dir / "logs" / f"{task.id}.log",
            env=agent_environment(task, config, "https://forge.example.org", self.parent),
            cancel_grace=cancel_grace,
            on_process=on_process,
        )

    def runner(self) -> ClaudeRunner:
        """A runner of its own for every call: as on another agent instance."""
        return ClaudeRunner(self.store, self.data_dir)

    @staticmethod
    def log(ctx: RunContext) -> list[dict[str, Any]]:
        return [json.loads(line) for line in ctx.log_path.read_text().splitlines()]


@pytest.fixture
def api() -> Iterator[MessagesStandin]:
    with MessagesStandin() as standin:
        yield standin


@pytest.fixture
def e2e(tmp_path: Path, store: SqlStore, api: MessagesStandin) -> Iterator[EndToEnd]:
    made = EndToEnd(tmp_path, store, api)
    yield made
    for pid in made.pids:
        assert processes.start_time(pid) is None, f"Claude Code {pid} is still running"


def git(workdir: Path, *args: str) -> str:
    # A sandboxed workdir belongs to the agents' account, not to the test's root.
    return subprocess.run(
        ["git", "-c", "safe.directory=*", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


async def test_work_issue_commits_then_another_instance_resumes(
    e2e: EndToEnd, api: MessagesStandin
) -> None:
    config = e2e.type_config()
    task = make_task()
    ctx = await e2e.context(task, config)
    api.script(
        tool_use("Write", {"file_path": str(ctx.workdir / "hello.txt"), "content": "hello\n"}),
        tool_use(
            "Bash",
            {
                "command": "git add hello.txt && git commit -q -m 'Add hello.txt'",
                "description": "c",
            },
        ),
        text("I added hello.txt and committed it."),
    )
    started = time.monotonic()
    first = await e2e.runner().run(ctx)
    took = time.monotonic() - started

    assert first.succeeded, first.error
    assert first.result == "I added hello.txt and committed it."
    assert (ctx.workdir / "hello.txt").read_text() == "hello\n"
    assert git(ctx.workdir, "log", "-1", "--format=%s") == "Add hello.txt"
    assert git(ctx.workdir, "status", "--porcelain") == ""
    assert git(ctx.workdir, "branch", "--show-current") == "dev/17-widget-crashes-on-empty-input"
    assert first.cost_usd is not None
    assert first.cost_usd > 0
    assert first.details["num_turns"] == 3
    transcript = first.details["transcript_path"]
    assert isinstance(transcript, str)
    assert Path(transcript).is_file()
    assert Path(transcript).is_relative_to(e2e.data_dir.resolve() / "claude" / "sessions")

    requests = api.message_requests()
    assert len(requests) == 3
    assert requests[0].headers["x-api-key"] == "sk-standin"
    assert "issue #17 in `acme/widget`" in requests[0].last_user_text()
    assert "Widget crashes on empty input!" in requests[0].last_user_text()
    assert ROLE in json.dumps(requests[0].body["system"])
    first_request = requests[0].at - started
    print(f"\nfirst task: {took:.2f} s; run() to the first API request: {first_request:.3f} s")

    review = make_task(TaskKind.ADDRESS_REVIEW, payload={"review_body": "Say goodbye too."})
    review.agent = "dev-bravo"
    ctx2 = await e2e.context(review, config)
    assert ctx2.workdir == ctx.workdir
    api.script(text("Noted: I will say goodbye too."))
    second = await e2e.runner().run(ctx2)

    assert second.succeeded, second.error
    assert second.claude_session_id == first.claude_session_id
    assert second.details["resumed"] is True
    history = api.message_requests()[-1]
    assert "Say goodbye too." in history.last_user_text()
    assert "issue #17 in `acme/widget`" in history.all_text(), "the first prompt came back"
    assert "File created successfully" in history.all_text(), "and the first turn's tools"
    session = await e2e.store.get_session(task.session_key)
    assert session is not None
    assert session.total_cost_usd is not None
    assert second.cost_usd == pytest.approx(session.total_cost_usd - first.cost_usd, abs=1e-6)


async def test_cancel_mid_turn_interrupts_in_well_under_a_second(
    e2e: EndToEnd, api: MessagesStandin
) -> None:
    config = e2e.type_config()
    task = make_task()
    ctx = await e2e.context(task, config)
    api.script(stall("Let me look at the code"))
    running = asyncio.create_task(e2e.runner().run(ctx))
    deadline = time.monotonic() + 30
    while not (ctx.log_path.exists() and any(r["type"] == "assistant" for r in e2e.log(ctx))):
        assert time.monotonic() < deadline, "the stalled turn never started"
        assert not running.done(), running.result()
        await asyncio.sleep(0.01)
    assert api.first_stall.is_set()

    cancelled_at = time.monotonic()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    elapsed = time.monotonic() - cancelled_at
    print(f"\ncancel to the end of run(): {elapsed:.3f} s")

    assert elapsed < 1.0
    [pid] = e2e.pids
    assert processes.start_time(pid) is None
    log = e2e.log(ctx)
    ended = next(r for r in log if r["type"] == "result")
    assert ended["terminal_reason"] == "aborted_streaming"
    cancelled = next(r for r in log if r.get("event") == "cancelled")
    print(f"interrupt to closed CLI: {cancelled['seconds_after_interrupt']:.3f} s")

    api.script(text("Picking up where I stopped."))
    again = await e2e.runner().run(await e2e.context(make_task(), config))
    assert again.succeeded, again.error
    assert again.details["resumed"] is True
    assert "Let me look at the code" in api.message_requests()[-1].all_text()


@pytest.mark.parametrize(
    ("status", "kind", "retries"), [(529, "overloaded_error", 2), (500, "api_error", 0)]
)
async def test_an_api_error_fails_fast_with_a_clear_reason(
    e2e: EndToEnd, api: MessagesStandin, status: int, kind: str, retries: int
) -> None:
    api.script(*(error(status, kind) for _ in range(5)))
    ctx = await e2e.context(make_task(), e2e.type_config(max_api_retries=retries))
    started = time.monotonic()
    result = await e2e.runner().run(ctx)
    took = time.monotonic() - started
    print(f"\nHTTP {status}, {retries} retries: failed after {took:.2f} s")

    assert not result.succeeded
    assert result.error is not None
    assert result.error.startswith(f"Claude API error (HTTP {status}): API Error: {status}")
    assert result.details["terminal_reason"] == "api_error"
    assert len(api.message_requests()) == 1 + retries
    assert took < 10


async def test_the_agents_tools_see_only_the_agent_environment(
    e2e: EndToEnd, api: MessagesStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "CLAUDE_HOOKS_SERVER__WEBHOOK_SECRET": "webhook-s3cret",
        "CLAUDE_HOOKS_SERVER__API_TOKEN": "api-t0ken",
        "CLAUDE_HOOKS_TYPES__REVIEWER__TOKEN": "reviewer-t0ken",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    e2e.parent.update(secrets)  # what agent_env filters out; the SDK would merge os.environ
    config = e2e.type_config(allowed_tools=["Bash(env)"])
    ctx = await e2e.context(make_task(), config)
    api.script(tool_use("Bash", {"command": "env", "description": "environment"}), text("ok"))
    result = await e2e.runner().run(ctx)
    assert result.succeeded, result.error

    seen = api.message_requests()[-1].last_user_text()
    assert "forgejo-dev-token" not in seen, "the type's forge token stays with the service"
    assert "CLAUDE_HOOKS_TASK_ID=" in seen
    for name, value in secrets.items():
        assert name not in seen
        assert value not in seen


class QueuedInbox:
    """A steering inbox holding messages written while the first turn ran."""

    def __init__(self, *messages: SteerMessage) -> None:
        self.messages = list(messages)

    async def wait(self) -> None:
        await asyncio.Event().wait()

    async def take(self) -> list[SteerMessage]:
        taken, self.messages = self.messages, []
        return taken


async def test_a_steering_message_reaches_the_running_conversation(
    e2e: EndToEnd, api: MessagesStandin
) -> None:
    config = e2e.type_config()
    task = make_task()
    ctx = await e2e.context(task, config)
    inbox = QueuedInbox(SteerMessage("alice", "Please also say goodbye.", time.time(), 4242))
    ctx = dataclasses.replace(ctx, steering=inbox)
    api.script(text("I said hello."), text("And now goodbye, as alice asked."))
    result = await e2e.runner().run(ctx)

    assert result.succeeded, result.error
    assert result.result == "And now goodbye, as alice asked."
    first, second = api.message_requests()
    assert "Please also say goodbye." not in first.all_text()
    assert "Please also say goodbye." in second.last_user_text()
    assert 'label="comment by @alice"' in second.last_user_text()
    assert "I said hello." in second.all_text(), "the same conversation goes on"
    steered = [r for r in e2e.log(ctx) if r.get("event") == "steered"]
    assert steered and steered[0]["senders"] == ["alice"]
    # The CLI adds every turn into the session's total: the run's cost covers both turns.
    first_turn, second_turn = [r["total_cost_usd"] for r in e2e.log(ctx) if r["type"] == "result"]
    assert second_turn == pytest.approx(2 * first_turn)
    assert result.cost_usd == pytest.approx(second_turn)


class LaterInbox:
    """A steering inbox whose message comes `after` seconds into the run."""

    def __init__(self, message: SteerMessage, after: float) -> None:
        self.message: SteerMessage | None = message
        self.due = time.monotonic() + after

    async def wait(self) -> None:
        if self.message is None:
            await asyncio.Event().wait()
        await asyncio.sleep(max(0.0, self.due - time.monotonic()))

    async def take(self) -> list[SteerMessage]:
        if self.message is None or time.monotonic() < self.due:
            return []
        taken, self.message = [self.message], None
        return taken


async def test_a_message_sent_while_a_tool_runs_is_read_within_the_turn(
    e2e: EndToEnd, api: MessagesStandin
) -> None:
    config = e2e.type_config(allowed_tools=["Bash(sleep:*)"])
    ctx = await e2e.context(make_task(), config)
    message = SteerMessage("alice", "Use the config file, not the environment.", time.time())
    ctx = dataclasses.replace(ctx, steering=LaterInbox(message, after=1.0))
    api.script(
        tool_use("Bash", {"command": "sleep 3", "description": "wait"}),
        text("Done, reading the config file as alice asked."),
    )
    result = await ClaudeRunner(e2e.store, e2e.data_dir, steer_grace=0.5).run(ctx)

    assert result.succeeded, result.error
    assert result.result == "Done, reading the config file as alice asked."
    first, second = api.message_requests()  # one turn: no third request
    assert "Use the config file" not in first.all_text()
    assert "Use the config file, not the environment." in second.last_user_text()
