"""Repositories' policies in the running service: concurrency groups held at the claim, across
nodes on PostgreSQL, and tasks a repository's policy refuses ended before they start."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from claude_hooks.agents.prompting import Prompts, prompt_context
from claude_hooks.agents.runners.base import RunContext, RunResult
from claude_hooks.core.decision import ForgeCommand
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.service.runtime import Service
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory
from tests.fake_forgejo import FakeForgejo
from tests.support import GateRunner, fixture, forgejo_headers, make_config, wait_until

DEVS = [{"name": "dev-a", "type": "dev"}, {"name": "dev-b", "type": "dev"}]


def work(number: int, repo: str = "acme/widget") -> DispatchRequest:
    return DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, repo, number)


async def state_of(service: Service, task_id: str) -> TaskState:
    task = await service.store.get_task(task_id)
    assert task is not None
    return task.state


async def test_max_running_holds_the_second_task_of_a_repository_until_the_first_ends(
    start_service: ServiceFactory, gate: GateRunner
) -> None:
    service: Service = await start_service(
        runner=gate, agents=DEVS, policy={"max_running": {"dev": 1}}
    )
    first = await service.pool.dispatch("dev", work(17))
    second = await service.pool.dispatch("dev", work(18))
    other = await service.pool.dispatch("dev", work(5, repo="acme/gadget"))
    assert {first.agent, second.agent} == {"dev-a", "dev-b"}
    await wait_until(lambda: first.id in gate.started)
    waiting = service.pool.get_worker(second.agent)
    await wait_until(lambda: waiting.waiting is not None)
    assert waiting.waiting == "waiting: dev max_running 1 in acme/widget, held by #17"
    assert second.id not in gate.started
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)), base_url="http://test"
    ) as client:
        answer = await client.get("/api/agents", headers={"Authorization": "Bearer test-token"})
    shown = {agent["name"]: agent["waiting"] for agent in answer.json()}
    assert shown[second.agent] == waiting.waiting and shown[first.agent] is None
    gate.release(first.id)
    await wait_until(lambda: second.id in gate.started)
    await wait_until(lambda: other.id in gate.started)  # another repository: its own group
    assert waiting.waiting is None
    gate.release_all()


@asynccontextmanager
async def node(tmp_path: Path, pg_url: str, name: str, gate: GateRunner) -> AsyncIterator[Service]:
    config = make_config(
        tmp_path / name,
        agents=[{"name": f"dev-{c}", "type": "dev"} for c in "abcd"],
        server={"database_url": pg_url, "node": name, "lease_seconds": 1.5},
        policy={"max_running": {"all": 1}},
    )
    service = await Service.open(config, lambda _type: gate)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def test_two_nodes_never_run_two_tasks_of_a_group_at_once(
    tmp_path: Path, pg_url: str
) -> None:
    gate_one, gate_two = GateRunner(), GateRunner()
    async with (
        node(tmp_path, pg_url, "one", gate_one) as one,
        node(tmp_path, pg_url, "two", gate_two) as two,
    ):
        await wait_until(lambda: len(one.pool.workers) == 2 and len(two.pool.workers) == 2)
        tasks = [await one.pool.dispatch("dev", work(n)) for n in range(1, 5)]
        assert len({t.agent for t in tasks}) == 4  # one per instance, on both nodes
        done: set[str] = set()
        for _ in tasks:
            await wait_until(lambda: len(set(gate_one.started + gate_two.started) - done) == 1)
            running = [t.id for t in tasks if await state_of(one, t.id) is TaskState.RUNNING]
            assert len(running) == 1, running
            [current] = running
            (gate_one if current in gate_one.started else gate_two).release(current)
            await wait_until(lambda c=current: _finished(one, c))
            done.add(current)
        assert done == {t.id for t in tasks}


async def _finished(service: Service, task_id: str) -> bool:
    return await state_of(service, task_id) is TaskState.SUCCEEDED


def forge_config(tmp_path: Path, forge: FakeForgejo, **overrides: Any) -> Any:
    forge.add_token("tok-admin", "admin-bot", site_admin=True)
    forge.add_repo("acme", "widget")
    return make_config(
        tmp_path,
        agents=[*DEVS, {"name": "boss-a", "type": "boss"}],
        forgejo={"url": forge.base_url, "token": "tok-admin", "retries": 0},
        **overrides,
    )


async def test_a_broken_policy_file_fails_the_task_closed_naming_line_and_key(
    tmp_path: Path, fake_forgejo: FakeForgejo, start_service: ServiceFactory, gate: GateRunner
) -> None:
    config = forge_config(tmp_path, fake_forgejo)
    fake_forgejo.commit_file("acme", "widget", ".forgejo/claude-hooks.toml", "max_runing = 1\n")
    service: Service = await start_service(config, runner=gate)
    task = await service.pool.dispatch("dev", work(17))
    await wait_until(lambda: _ended(service, task.id, TaskState.FAILED))
    found = await service.store.get_task(task.id)
    assert found is not None and found.error is not None
    assert ".forgejo/claude-hooks.toml:1: unknown key 'max_runing'" in found.error
    assert task.id not in gate.started


async def test_a_type_the_repository_does_not_allow_and_a_merge_it_does_not_want_are_cancelled(
    tmp_path: Path, fake_forgejo: FakeForgejo, start_service: ServiceFactory, gate: GateRunner
) -> None:
    config = forge_config(tmp_path, fake_forgejo)
    fake_forgejo.commit_file(
        "acme",
        "widget",
        ".claude-hooks.toml",
        'allowed_types = ["reviewer", "boss"]\nauto_merge = false\n',
    )
    service: Service = await start_service(config, runner=gate)
    dev = await service.pool.dispatch("dev", work(17))
    merge = await service.pool.dispatch(
        "boss", DispatchRequest.for_type("boss", TaskKind.MERGE_PR, "acme/widget", 18)
    )
    await wait_until(lambda: _ended(service, dev.id, TaskState.CANCELLED))
    await wait_until(lambda: _ended(service, merge.id, TaskState.CANCELLED))
    found = await service.store.get_task(merge.id)
    assert found is not None and found.error == (
        "the policy of acme/widget says auto_merge = false: a person merges"
    )
    assert gate.started == []


async def _ended(service: Service, task_id: str, state: TaskState) -> bool:
    return await state_of(service, task_id) is state


async def test_the_repository_instructions_and_test_command_reach_the_run(
    tmp_path: Path, fake_forgejo: FakeForgejo, start_service: ServiceFactory
) -> None:
    config = forge_config(tmp_path, fake_forgejo)
    fake_forgejo.add_repo("acme", ".claude-hooks")
    fake_forgejo.commit_file(
        "acme", ".claude-hooks", ".forgejo/claude-hooks.toml", 'instructions = "Be brief."\n'
    )
    fake_forgejo.commit_file(
        "acme",
        "widget",
        ".forgejo/claude-hooks.toml",
        'test = "make check"\n[types.dev]\ninstructions = "Use uv."\n',
    )
    seen: list[RunContext] = []

    class Recording(GateRunner):
        async def run(self, ctx: RunContext) -> RunResult:
            seen.append(ctx)
            return RunResult(succeeded=True, exit_code=0)

    service: Service = await start_service(config, runner=Recording())
    task = await service.pool.dispatch("dev", work(17))
    await wait_until(lambda: _ended(service, task.id, TaskState.SUCCEEDED))
    [ctx] = seen
    assert (ctx.instructions, ctx.test_command) == ("Be brief.\n\nUse uv.", "make check")
    context = prompt_context(
        ctx.task, ctx.type_config, tmp_path, "agent/17", "", ctx.instructions, ctx.test_command
    )
    system = Prompts().render("system", context)
    assert "## From the maintainers of acme/widget\n\nBe brief.\n\nUse uv." in system
    assert "run the repository's tests: `make check`" in system


async def test_a_repository_merge_style_is_used_where_the_service_allows_it(
    tmp_path: Path, fake_forgejo: FakeForgejo, start_service: ServiceFactory
) -> None:
    config = forge_config(
        tmp_path,
        fake_forgejo,
        types={"boss": {"runner": "merge", "token": "tok-admin"}},
        policy={"allow": ["merge_style"]},
    )
    fake_forgejo.add_pull("acme", "widget", number=18, head_sha="a" * 40, head_ref="agent/17")
    fake_forgejo.commit_file("acme", "widget", ".claude-hooks.toml", 'merge_style = "squash"\n')
    service: Service = await start_service(config)
    merge = await service.pool.dispatch(
        "boss",
        DispatchRequest.for_type(
            "boss", TaskKind.MERGE_PR, "acme/widget", 18, {"pr_number": 18, "base_ref": "main"}
        ),
    )
    await wait_until(lambda: len(fake_forgejo.merges) > 0)
    assert fake_forgejo.merges[0].body["Do"] == "squash"
    assert fake_forgejo.merges[0].number == merge.number


async def test_a_push_to_the_default_branch_refreshes_the_policy_at_once(
    tmp_path: Path, fake_forgejo: FakeForgejo, start_service: ServiceFactory
) -> None:
    config = forge_config(tmp_path, fake_forgejo)
    path = ".forgejo/claude-hooks.toml"
    fake_forgejo.commit_file("acme", "widget", path, 'instructions = "First."\n')
    seen: list[str] = []

    class Recording(GateRunner):
        async def run(self, ctx: RunContext) -> RunResult:
            seen.append(ctx.instructions)
            return RunResult(succeeded=True, exit_code=0)

    service: Service = await start_service(config, runner=Recording())
    first = await service.pool.dispatch("dev", work(17))
    await wait_until(lambda: _ended(service, first.id, TaskState.SUCCEEDED))
    fake_forgejo.commit_file("acme", "widget", path, 'instructions = "Second."\n')
    data = json.loads(fixture("push")[0])
    data["ref"] = "refs/heads/main"
    body = json.dumps(data).encode()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)), base_url="http://test"
    ) as client:
        answer = await client.post(
            "/webhook", content=body, headers=forgejo_headers("push", body, str(uuid.uuid4()))
        )
    assert answer.status_code == 200, answer.text
    second = await service.pool.dispatch("dev", work(17))
    await wait_until(lambda: _ended(service, second.id, TaskState.SUCCEEDED))
    assert seen == ["First.", "Second."]


async def test_a_spent_repository_budget_holds_its_next_task_and_not_another_repository(
    tmp_path: Path, start_service: ServiceFactory
) -> None:
    class Costly(GateRunner):
        async def run(self, ctx: RunContext) -> RunResult:
            self.started.append(ctx.task.id)
            return RunResult(succeeded=True, exit_code=0, cost_usd=3.0)

    runner = Costly()
    service: Service = await start_service(
        runner=runner, agents=DEVS, policy={"daily_budget_usd": 2.5}
    )
    first = await service.pool.dispatch("dev", work(17))
    await wait_until(lambda: _ended(service, first.id, TaskState.SUCCEEDED))
    held = await service.pool.dispatch("dev", work(18))
    elsewhere = await service.pool.dispatch("dev", work(5, repo="acme/gadget"))
    await wait_until(lambda: _ended(service, elsewhere.id, TaskState.SUCCEEDED))
    worker = service.pool.get_worker(held.agent)
    await wait_until(lambda: worker.waiting is not None)
    assert worker.waiting is not None
    assert worker.waiting.startswith(
        "waiting: the daily budget of acme/widget ($2.50) is spent ($3.00)"
    )
    assert held.id not in runner.started


async def test_a_forge_that_does_not_answer_leaves_the_service_settings_in_force(
    tmp_path: Path, start_service: ServiceFactory, gate: GateRunner
) -> None:
    service: Service = await start_service(
        runner=gate,
        agents=DEVS,
        forgejo={"url": "http://127.0.0.1:9", "retries": 0},
        policy={"max_running": {"dev": 1}},
    )
    first = await service.pool.dispatch("dev", work(17))
    second = await service.pool.dispatch("dev", work(18))
    await wait_until(lambda: first.id in gate.started)
    waiting = service.pool.get_worker(second.agent)
    await wait_until(lambda: waiting.waiting is not None)  # the ceiling holds without the forge
    gate.release(first.id)
    await wait_until(lambda: second.id in gate.started)
    gate.release_all()


DEV_BOT = {"login": "dev-bot", "token": "tok-admin", "comments": "off"}


async def assign(service: Service, delivery: str, number: int = 17) -> dict[str, Any]:
    """A signed assignment of dev to acme/widget#`number` by alice, through the intake."""
    data = json.loads(fixture("issues_assigned_dev")[0])
    data["issue"]["number"] = number
    raw = json.dumps(data).encode()
    answer = await service.intake.receive(forgejo_headers("issue_assign", raw, delivery), raw)
    return answer.body


async def test_a_broken_file_refuses_deliveries_with_one_comment_per_file_version(
    tmp_path: Path, fake_forgejo: FakeForgejo, start_service: ServiceFactory, gate: GateRunner
) -> None:
    config = forge_config(
        tmp_path,
        fake_forgejo,
        security={"allowed_senders": ["alice"]},
        types={"dev": DEV_BOT},  # only the policy's comments are posted
    )
    fake_forgejo.add_issue("acme", "widget", number=17, title="One")
    fake_forgejo.add_issue("acme", "widget", number=18, title="Two")
    path = ".forgejo/claude-hooks.toml"
    fake_forgejo.commit_file("acme", "widget", path, "allowed_types = ['dev']\nautomerge = 1\n")
    service: Service = await start_service(config, runner=gate)
    first = await assign(service, "d-1", 17)
    assert first["status"] == "ignored" and "tasks" not in first
    assert first["reason"].endswith(
        ".forgejo/claude-hooks.toml:2: unknown key 'automerge' "
        "(see the README's per-repository keys)"
    )
    assert "no agent work in acme/widget: its policy file cannot be used" in first["reason"]
    recorded = await service.store.intake.get_delivery("d-1")
    assert recorded is not None and recorded.reason == first["reason"]
    await wait_until(lambda: len(fake_forgejo.comments) == 1)
    assert "unknown key 'automerge'" in fake_forgejo.comments[0].body
    # Another delivery of the same file version: refused too, and no second comment.
    second = await assign(service, "d-2", 18)
    assert second["status"] == "ignored" and "automerge" in second["reason"]
    # A push changes the file (still broken): its new version is told once more.
    fake_forgejo.commit_file("acme", "widget", path, "automerge = 2\n")
    service.pool.policies.pushed("acme/widget", "main")  # type: ignore[union-attr]
    third = await assign(service, "d-3", 18)
    assert third["status"] == "ignored"
    await wait_until(lambda: len(fake_forgejo.comments) == 2)
    assert [c.number for c in fake_forgejo.comments] == [17, 18]
    assert gate.started == []
    # Fixed: the same assignment is new work (a refused one is not saved as assigned).
    fake_forgejo.commit_file("acme", "widget", path, "allowed_types = ['dev']\n")
    service.pool.policies.pushed("acme/widget", "main")  # type: ignore[union-attr]
    assert (await assign(service, "d-4", 18))["status"] == "queued"
    gate.release_all()


async def test_a_group_wait_shows_on_every_node_and_in_status(tmp_path: Path, pg_url: str) -> None:
    gate_one, gate_two = GateRunner(), GateRunner()
    async with (
        node(tmp_path, pg_url, "one", gate_one) as one,
        node(tmp_path, pg_url, "two", gate_two) as two,
    ):
        await wait_until(lambda: len(one.pool.workers) == 2 and len(two.pool.workers) == 2)
        first = await one.pool.dispatch("dev", work(17))
        await wait_until(lambda: first.id in gate_one.started + gate_two.started)
        second = await one.pool.dispatch("dev", work(18))
        reason = "waiting: max_running 1 in acme/widget, held by #17"
        # The node not holding the waiting instance sees the wait too, from the database.
        other = two if second.agent in one.pool.workers else one
        assert second.agent not in other.pool.workers
        await wait_until(lambda: _waits(other, second.agent, reason))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(other)), base_url="http://test"
        ) as client:
            auth = {"Authorization": "Bearer test-token"}
            agents = (await client.get("/api/agents", headers=auth)).json()
            dashboard = (await client.get("/", headers=auth)).text
        assert {a["name"]: a["waiting"] for a in agents}[second.agent] == reason
        assert reason in dashboard
        command = ForgeCommand(
            "status", "dev", "acme/widget", 18, second.session_key, (), 1, "alice", True
        )
        status = await other.intake.commands.status(command)
        assert f"position 1; {reason}" in status
        for gate in (gate_one, gate_two):
            gate.release_all()
        await wait_until(lambda: second.id in gate_one.started + gate_two.started)
        assert second.agent not in await other.pool.waits()
        gate_one.release_all()
        gate_two.release_all()


async def _waits(service: Service, agent: str, reason: str) -> bool:
    return (await service.pool.waits()).get(agent) == reason
