"""A repository's policy in the agent's sandbox: its `setup` commands run first, in the
workdir, and a failure fails the task; its `egress` hosts join the type's list."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_hooks.agents.sandbox import find_bwrap
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.service.runtime import Service
from tests.agents.test_command_runner import finished
from tests.conftest import ServiceFactory
from tests.e2e.test_hostile_agent import AllowedHost
from tests.fake_forgejo import FakeForgejo
from tests.support import make_config

pytestmark = pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap is not installed")

POLICY = ".forgejo/claude-hooks.toml"
# The agent: succeeds if setup left its mark in the workdir, and fetches a URL it is given.
AGENT = """
import json, os, sys, urllib.request
task = json.load(sys.stdin)
mark = os.path.exists("prepared.txt")
url = task["payload"].get("url")
fetched = ""
if url:
    # Through the proxy even for a loopback address, which NO_PROXY keeps on the sandbox's own.
    os.environ.pop("NO_PROXY", None)
    os.environ.pop("no_proxy", None)
    proxy = urllib.request.ProxyHandler({"http": os.environ["HTTP_PROXY"]})
    try:
        fetched = urllib.request.build_opener(proxy).open(url, timeout=5).read().decode()
    except Exception as exc:
        fetched = f"refused: {exc}"
print(f"prepared={mark} fetched={fetched}")
sys.exit(0 if mark or url else 4)
"""


def config(tmp_path: Path, forge: FakeForgejo, allow: list[str]) -> Any:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    forge.add_token("tok-admin", "admin-bot", site_admin=True)
    forge.add_repo("acme", "widget")
    return make_config(
        tmp_path,
        types={
            "dev": {
                "runner": "command",
                "command": [sys.executable, str(script)],
                "workdir": "none",
            },
        },
        agents=[{"name": "dev-a", "type": "dev"}],
        forgejo={"url": forge.base_url, "token": "tok-admin", "retries": 0},
        policy={"allow": allow},
    )


def work(number: int, **payload: Any) -> DispatchRequest:
    return DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", number, payload)


def output(service: Service, task_id: str) -> str:
    return service.pool.log_path(task_id).read_text()


async def test_setup_runs_in_the_workdir_before_the_agent_and_a_failure_fails_the_task(
    tmp_path: Path, fake_forgejo: FakeForgejo, start_service: ServiceFactory
) -> None:
    configured = config(tmp_path, fake_forgejo, ["setup"])
    fake_forgejo.commit_file(
        "acme", "widget", POLICY, 'setup = ["echo ready > prepared.txt", "true"]\n'
    )
    service: Service = await start_service(configured)
    task = await service.pool.dispatch("dev", work(17))
    done = await finished(service, task.id, timeout=30)
    assert done.state is TaskState.SUCCEEDED, done.error
    log = output(service, task.id)
    assert "[claude-hooks] setup: echo ready > prepared.txt" in log
    assert "prepared=True" in log
    fake_forgejo.commit_file("acme", "widget", POLICY, 'setup = ["echo broken; exit 3"]\n')
    service.pool.policies.pushed("acme/widget", "main")  # type: ignore[union-attr]
    failing = await service.pool.dispatch("dev", work(18))
    failed = await finished(service, failing.id, timeout=30)
    assert failed.state is TaskState.FAILED
    assert failed.error is not None
    assert failed.error.startswith("setup command 'echo broken; exit 3' failed: command exited")
    assert "broken" in failed.error
    assert "prepared=" not in output(service, failing.id)  # the agent never started


async def test_setup_is_not_run_unless_the_service_allows_it(
    tmp_path: Path, fake_forgejo: FakeForgejo, start_service: ServiceFactory
) -> None:
    configured = config(tmp_path, fake_forgejo, [])
    fake_forgejo.commit_file("acme", "widget", POLICY, 'setup = ["echo ready > prepared.txt"]\n')
    service: Service = await start_service(configured)
    task = await service.pool.dispatch("dev", work(17))
    done = await finished(service, task.id, timeout=30)
    assert done.state is TaskState.FAILED and done.exit_code == 4


@pytest.fixture
def allowed_host() -> Iterator[AllowedHost]:
    server = AllowedHost()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("allow", [["egress"], []])
async def test_a_repository_adds_egress_hosts_where_the_service_allows_it(
    tmp_path: Path,
    fake_forgejo: FakeForgejo,
    start_service: ServiceFactory,
    allowed_host: AllowedHost,
    allow: list[str],
) -> None:
    host = f"127.0.0.1:{allowed_host.server_address[1]}"
    configured = config(tmp_path, fake_forgejo, allow)
    fake_forgejo.commit_file("acme", "widget", POLICY, f'[types.dev]\negress = ["{host}"]\n')
    service: Service = await start_service(configured)
    task = await service.pool.dispatch("dev", work(17, url=allowed_host.url))
    done = await finished(service, task.id, timeout=30)
    assert done.state is TaskState.SUCCEEDED, done.error
    log = output(service, task.id)
    if allow:
        assert "fetched=hello from the allowed host" in log
    else:
        assert "fetched=refused" in log
