"""The CLI as a user runs it: a real subprocess against a real database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from claude_hooks.config import load_config
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.store.sql import SqlStore
from tests.conftest import ServiceFactory
from tests.fake_forgejo import FakeForgejo
from tests.support import GateRunner, make_config, queue_is, wait_until

CONFIG = """
[server]
data_dir = "{data}"
webhook_secret = "s"
api_token = "t"
poll_interval = 0.05

[types.dev]
runner = "command"
workdir = "none"
command = ["true"]

[[agents]]
name = "dev-alpha"
type = "dev"
"""


def cli(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "claude_hooks", *args]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "claude-hooks.toml"
    path.write_text(CONFIG.format(data=tmp_path / "data"))
    return path


@pytest.fixture
def database(config_file: Path) -> Path:
    """The configuration's database, created as `serve` would."""
    config = load_config(config_file)

    async def create() -> None:
        await (await SqlStore.open(config.database_url)).close()

    asyncio.run(create())
    assert config.sqlite_file is not None
    return config.sqlite_file


def test_agents_lifecycle(config_file: Path) -> None:
    added = cli("agents", "add", "dev-charlie", "--type", "dev", config=config_file)
    assert added.returncode == 0, added.stderr
    assert "added dev-charlie (type dev)" in added.stdout
    listed = json.loads(cli("agents", "list", "--json", config=config_file).stdout)
    assert listed == [
        {
            "name": "dev-charlie",
            "type": "dev",
            "enabled": True,
            "state": "idle",
            "current_task": None,
            "queued": 0,
            "node": None,  # no service runs: no node holds it
            "pinned_node": None,
            "paused": None,  # its type waits on no budget or breaker
            "auto": False,  # declared (`agents add`), not added by the elastic rule
            "added": None,
        },
    ]
    assert cli("agents", "disable", "dev-charlie", config=config_file).returncode == 0
    listed = json.loads(cli("agents", "list", "--json", config=config_file).stdout)
    assert listed[0]["enabled"] is False
    assert listed[0]["state"] == "disabled"
    assert cli("agents", "enable", "dev-charlie", config=config_file).returncode == 0
    table = cli("agents", "list", config=config_file).stdout
    assert "dev-charlie" in table
    assert "idle" in table
    assert cli("agents", "remove", "dev-charlie", config=config_file).returncode == 0
    assert json.loads(cli("agents", "list", "--json", config=config_file).stdout) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("agents", "add", "Bad Name", "--type", "dev"), "'Bad Name' is not a valid agent name"),
        (("agents", "disable", "ghost"), "no agent named 'ghost'"),
        (("agents", "remove", "ghost"), "no agent named 'ghost'"),
        (("tasks", "show", "nope"), "no task with id 'nope'"),
        (("tasks", "cancel", "nope"), "no task with id 'nope'"),
    ],
)
def test_bad_input_is_one_clear_line(
    database: Path, config_file: Path, args: tuple[str, ...], message: str
) -> None:
    result = cli(*args, config=config_file)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[server]\nprot = 1\n", "server.prot: unknown key"),
        ("[server]\nport = 'abc'\n", "server.port: Input should be a valid integer"),
        ("[types.dev]\nrunner = 'command'\n", "needs a non-empty 'command'"),
        ("[[agents]]\nname = 'a'\n", "agents.0.type: required key is missing"),
        ("[server\n", "is not valid TOML"),
    ],
)
def test_bad_config_stops_with_the_key_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    result = cli("agents", "list", config=path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_environment_overrides_and_missing_file(tmp_path: Path, config_file: Path) -> None:
    missing = cli("agents", "list", config=tmp_path / "nowhere.toml")
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr


def test_an_unreadable_config_says_whose_it_is_and_what_to_do(config_file: Path) -> None:
    """`init` writes the file 0600 for its user; a service run as another (the image's user,
    without the README's `docker run --user`) is told whose it is and what to do."""
    if os.geteuid() == 0:  # root reads anything: run without the capabilities that let it
        os.chown(config_file, 10001, 10001)
        config_file.chmod(0o600)
        owner, mode = 10001, "0600"
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    else:
        config_file.chmod(0)
        owner, mode, prefix = os.getuid(), "0000", []
    argv = [*prefix, sys.executable, "-m", "claude_hooks", "tasks", "list"]
    for extra, env in (
        (["--config", str(config_file)], dict(os.environ)),
        ([], {**os.environ, "CLAUDE_HOOKS_CONFIG": str(config_file)}),
    ):
        refused = subprocess.run(
            [*argv, *extra], capture_output=True, text=True, timeout=60, check=False, env=env
        )
        assert refused.returncode == 2
        assert refused.stderr == (
            f"error: config file {str(config_file)!r} cannot be read by uid {os.getuid()} "
            f"(it is uid {owner}'s, mode {mode}): run claude-hooks as the file's owner (in a "
            f'container: docker run --user "$(id -u):$(id -g)") or let uid {os.getuid()} '
            "read it\n"
        )


def test_serve_refuses_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path}"\napi_token = "t"\n')
    result = cli("serve", config=path)
    assert result.returncode == 2
    assert "server.webhook_secret is not set" in result.stderr
    assert "--insecure-no-signature" in result.stderr
    path.write_text(f'[server]\ndata_dir = "{tmp_path}"\nwebhook_secret = "s"\n')
    result = cli("serve", config=path)
    assert "server.api_token is not set" in result.stderr


async def test_tasks_list_show_cancel(
    start_service: ServiceFactory, gate: GateRunner, tmp_path: Path, config_file: Path
) -> None:
    config = make_config(tmp_path, agents=[{"name": "dev-alpha", "type": "dev"}])
    service = await start_service(config, runner=gate)
    ids = [
        await service.pool.dispatch_by_type(
            "dev", DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", n)
        )
        for n in (1, 2, 3)
    ]
    await wait_until(lambda: gate.started == ids[:1])

    listed = await asyncio.to_thread(cli, "tasks", "list", "--json", config=config_file)
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows[ids[0]]["state"] == "running"
    assert rows[ids[1]]["queue_position"] == 1
    assert rows[ids[2]]["queue_position"] == 2
    queued = await asyncio.to_thread(
        cli, "tasks", "list", "--state", "queued", "--json", config=config_file
    )
    assert sorted(row["id"] for row in json.loads(queued.stdout)) == sorted(ids[1:])

    shown = json.loads(
        (await asyncio.to_thread(cli, "tasks", "show", ids[1], config=config_file)).stdout
    )
    assert shown["session_key"] == "dev:acme/widget:2"
    assert shown["log"].endswith(f"{ids[1]}.log")

    cancel_queued = await asyncio.to_thread(cli, "tasks", "cancel", ids[1], config=config_file)
    assert "cancelled (was queued)" in cancel_queued.stdout
    await wait_until(lambda: queue_is(service.store, "dev-alpha", ids[2:]))

    cancel_running = await asyncio.to_thread(cli, "tasks", "cancel", ids[0], config=config_file)
    assert "cancel requested" in cancel_running.stdout
    await wait_until(lambda: gate.cancelled == ids[:1], timeout=2)
    await wait_until(lambda: gate.started[-1:] == ids[2:])
    first = await service.store.get_task(ids[0])
    assert first is not None and first.state is TaskState.CANCELLED
    again = await asyncio.to_thread(cli, "tasks", "cancel", ids[0], config=config_file)
    assert again.returncode == 1
    assert "already finished (cancelled)" in again.stderr


def test_doctor_checks_tokens_against_the_forge(tmp_path: Path, fake_forgejo: FakeForgejo) -> None:
    fake_forgejo.add_token("tok-dev", "dev-bot")
    fake_forgejo.add_token("tok-rev", "someone-else")
    path = tmp_path / "c.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nwebhook_secret = "s"\napi_token = "t"\n'
        f'[forgejo]\nurl = "{fake_forgejo.base_url}"\nretries = 0\n'
        '[types.dev]\nlogin = "dev-bot"\ntoken = "tok-dev"\nrunner = "command"\n'
        'command = ["no-such-agent-binary"]\nworkdir = "none"\n'
        '[types.reviewer]\ntoken = "tok-rev"\nrunner = "command"\ncommand = ["true"]\n'
        'workdir = "none"\negress = ["pypi.org", "files.pythonhosted.org:443"]\n'
        '[types.boss]\ntoken = "wrong"\nrunner = "merge"\n'
    )
    result = cli("doctor", config=path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "ok    types.dev.token: belongs to 'dev-bot'" in lines
    assert any(
        line.startswith("FAIL  types.reviewer.token: belongs to 'someone-else', but the type's")
        for line in lines
    )
    assert any(line.startswith("FAIL  types.boss.token:") and "refused" in line for line in lines)
    assert "FAIL  types.dev: command 'no-such-agent-binary' not found on PATH" in lines
    assert (
        "ok    types.reviewer.egress: the agents may reach pypi.org, "
        "files.pythonhosted.org:443 (through the service's proxy)" in lines
    )
    assert (
        "ok    types.dev.egress: no host (the agents reach nothing but the service's proxy)"
        in lines
    )
    assert "error: 3 check(s) failed" in result.stderr


def test_doctor_says_an_unsandboxed_type_s_egress_list_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nwebhook_secret = "s"\napi_token = "t"\n'
        '[types.loose]\nrunner = "command"\ncommand = ["true"]\nworkdir = "none"\n'
        'sandbox = false\negress = ["pypi.org"]\n'
    )
    lines = cli("doctor", config=path).stdout.splitlines()
    assert (
        "warn  types.loose.egress: ignored: with sandbox = false the agents use the host's network"
        in lines
    )


def test_demo_runs_the_sample_flows_and_exits(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "claude_hooks", "demo", "--once", "--pace", "0.2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("demo service on http://127.0.0.1:")
    assert any("issue_assign" in line and "202 queued: dev -> dev-alpha" in line for line in lines)
    assert any(
        "pull_request_review_request" in line and "reviewer -> reviewer-1" in line for line in lines
    )
    assert any("issues " in line and "200 ignored" in line for line in lines)
    # The story: a queue, a steer, a stop, a failure, a cancel, review -> merge, CI -> fix.
    assigned = [line for line in lines if line.startswith("issue_assign ") and "202" in line]
    assert len(assigned) == 5  # two dev instances: three of them wait in a queue
    assert any("200 cancelled: cancelled task" in line for line in lines)
    comments = [line for line in lines if line.startswith("issue_comment ")]
    assert "200 ignored: steered dev's running task" in comments[0]
    assert "cancelled task" in comments[1]  # @dev stop
    assert "202 queued: dev -> dev-" in comments[2]  # @dev queue: ...
    assert any(
        "pull_request_review_approved" in line and "boss -> boss-1" in line for line in lines
    )
    assert any(line.startswith("status ") and "dev -> dev-" in line for line in lines)
    assert lines[-1] == "all 9 tasks finished: 2 cancelled, 1 failed, 6 succeeded"


def test_an_instance_pinned_to_a_node_and_the_nodes_listed(config_file: Path) -> None:
    added = cli("agents", "add", "dev-p", "--type", "dev", "--node", "build-2", config=config_file)
    assert added.returncode == 0, added.stderr
    assert "added dev-p (type dev, pinned to node build-2)" in added.stdout
    listed = json.loads(cli("agents", "list", "--json", config=config_file).stdout)
    assert listed[0]["pinned_node"] == "build-2" and listed[0]["node"] is None
    bad = cli("agents", "add", "dev-q", "--type", "dev", "--node", "Build 2", config=config_file)
    assert bad.returncode == 2 and "--node 'Build 2' is not a valid node name" in bad.stderr
    assert json.loads(cli("nodes", "list", "--json", config=config_file).stdout) == []
