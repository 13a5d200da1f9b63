"""The `ci_logs` forge tool over a real service and the fake forge: a review task reads the
failing checks of its own pull request with the end of each Forgejo Actions job log; a page on
another host is not fetched, and another pull request's logs are refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from claude_hooks.agents.forge_tools import MAX_LOG_BYTES
from claude_hooks.core.domain import TaskKind
from tests.conftest import ServiceFactory
from tests.e2e.test_forge_tools_e2e import run
from tests.fake_forgejo import FakeForgejo

TOKEN = "ci-reviewer-token"
HEAD = "c1" * 20


async def test_a_review_task_reads_the_logs_of_its_own_pull_requests_failing_checks(
    start_service: ServiceFactory, tmp_path: Path, fake_forgejo: FakeForgejo
) -> None:
    fake_forgejo.add_token(TOKEN, "reviewer-bot")
    fake_forgejo.add_repo("acme", "widget", collaborators={"reviewer-bot": "write"})
    pull = fake_forgejo.add_pull("acme", "widget", head_sha=HEAD, head_ref="dev/17-retries")
    fake_forgejo.add_pull("acme", "widget", head_sha="d2" * 20, head_ref="other")
    long_log = "x" * (MAX_LOG_BYTES + 1000) + "\nFAILED tests/test_retry.py::test_backoff\n"
    job = fake_forgejo.set_job_log("acme", "widget", 7, 1, long_log)
    short = fake_forgejo.set_job_log("acme", "widget", 7, 2, "ruff: E501 line too long\n")
    forge = fake_forgejo.base_url
    fake_forgejo.add_status("acme", "widget", HEAD, "ci/test", "failure", target_url=forge + job)
    fake_forgejo.add_status("acme", "widget", HEAD, "ci/lint", "error", target_url=forge + short)
    fake_forgejo.add_status(
        "acme", "widget", HEAD, "ext/ci", "failure", target_url="http://203.0.113.9/build/1"
    )
    fake_forgejo.add_status("acme", "widget", HEAD, "ci/docs", "success", target_url=forge + job)
    secret = fake_forgejo.set_job_log("acme", "private", 1, 1, "the private repository's log")
    escape = f"{forge}/acme/widget/../private/actions/runs/1/jobs/1"
    fake_forgejo.add_status("acme", "widget", HEAD, "ci/escape", "failure", target_url=escape)
    agent = tmp_path / "agents" / "reads_logs.py"
    agent.parent.mkdir()
    agent.write_text(
        "import json, os\n"
        f"requests = [{{'tool': 'ci_logs'}}, {{'tool': 'ci_logs', 'number': {pull.number + 1}}}]\n"
        "open(os.environ['CLAUDE_HOOKS_RESULT'], 'w').write(json.dumps({'forge': requests}))\n"
    )
    service = await start_service(
        forgejo={"url": fake_forgejo.base_url},
        types={
            "reviewer": {
                "login": "reviewer-bot",
                "token": TOKEN,
                "runner": "command",
                "command": [sys.executable, str(agent)],
                "workdir": "none",
                "comments": False,
            }
        },
        agents=[{"name": "reviewer-1", "type": "reviewer"}],
    )
    task = await run(service, "reviewer", TaskKind.REVIEW_PR, pull.number, title="Retries")
    assert task.state.value == "succeeded", task.error
    outcomes = [
        json.loads(line.removeprefix("[claude-hooks] forge: "))
        for line in service.pool.log_path(task.id).read_text().splitlines()
        if line.startswith("[claude-hooks] forge: ")
    ]
    [logs, refused] = outcomes
    assert logs["done"], logs
    answer = json.loads(logs["answer"])
    assert (answer["pull_request"], answer["sha"]) == (pull.number, HEAD)
    failing = {item["context"]: item for item in answer["failing"]}
    assert set(failing) == {"ci/test", "ci/lint", "ext/ci", "ci/escape"}
    test_log = failing["ci/test"]
    assert test_log["truncated"] is True and len(test_log["log"]) == MAX_LOG_BYTES
    assert test_log["log"].endswith("FAILED tests/test_retry.py::test_backoff\n")
    assert failing["ci/lint"]["log"] == "ruff: E501 line too long\n"
    assert failing["ci/lint"]["truncated"] is False
    for elsewhere in ("ext/ci", "ci/escape"):
        assert failing[elsewhere]["log"] is None and "not fetched" in failing[elsewhere]["note"]
    assert secret + "/logs" not in [path for path, _ in fake_forgejo.web_requests]
    # Only this repository's job logs were read, with the type's token; nothing off the forge.
    assert sorted(fake_forgejo.web_requests) == [
        (job + "/logs", "reviewer-bot"),
        (short + "/logs", "reviewer-bot"),
    ]
    assert not refused["done"]
    assert f"only for this task's pull request #{pull.number}" in refused["answer"]
