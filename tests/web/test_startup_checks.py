"""What `serve` and `doctor` say before any work: secrets, Claude credentials, the start-up log."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_hooks.agents.credentials import Credential, claude_credential
from claude_hooks.agents.environment import agent_environment
from claude_hooks.agents.runners.claude import ClaudeRunner
from claude_hooks.config import TypeConfig
from claude_hooks.core.domain import Task, TaskKind, TaskState
from claude_hooks.errors import ConfigError
from claude_hooks.store.sql import SqlStore
from claude_hooks.web.server import check_startup
from tests.service.test_restart import free_port
from tests.support import make_config

CLAUDE_HOOKS = str(Path(sys.executable).parent / "claude-hooks")
ROOT = Path(__file__).resolve().parents[2]
LONG = "x7Qm2Lr9Vt4Kp8Zw3Nc6"


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without any credentials or claude-hooks settings."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLAUDE_HOOKS_", "ANTHROPIC_", "CLAUDE_CODE_"))
    }
    return {**kept, **extra}


@pytest.mark.parametrize(
    ("host", "secret", "token", "refused"),
    [
        ("0.0.0.0", "change-me-webhook-secret", LONG, "server.webhook_secret is the placeholder"),
        ("192.0.2.7", LONG, "short-token", "server.api_token is shorter than 16 characters"),
        ("forge-box.example", LONG, "Change-Me-please-0123", "server.api_token is the placeholder"),
        ("0.0.0.0", LONG, LONG + "a", None),
        ("127.0.0.1", "change-me-webhook-secret", "t", None),
        ("::1", "s", "t", None),
        ("localhost", "s", "t", None),
    ],
)
def test_serve_refuses_weak_secrets_off_loopback(
    tmp_path: Path, host: str, secret: str, token: str, refused: str | None
) -> None:
    config = make_config(
        tmp_path, server={"host": host, "webhook_secret": secret, "api_token": token}
    )
    if refused is None:
        check_startup(config, insecure_no_signature=False)
        return
    with pytest.raises(ConfigError) as caught:
        check_startup(config, insecure_no_signature=False)
    assert refused in str(caught.value)
    assert f"serve refuses such secrets on {host!r}, which is not a loopback address" in str(
        caught.value
    )


def test_serve_with_the_sample_secrets_on_every_address_stops_with_one_line(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [CLAUDE_HOOKS, "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env=clean_environ(CLAUDE_HOOKS_CONFIG=str(ROOT / "examples" / "claude-hooks.toml")),
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: server.webhook_secret is the placeholder 'change-me'…; server.api_token is the "
        "placeholder 'change-me'…: serve refuses such secrets on '0.0.0.0'"
    )
    assert len(result.stderr.splitlines()) == 1


def _claude_type(**env: str) -> TypeConfig:
    return TypeConfig(runner="claude", env=env)


def _task() -> Task:
    return Task(
        id="t1",
        type="dev",
        agent="dev-alpha",
        kind=TaskKind.WORK_ISSUE,
        session_key="dev:acme/widget:1",
        repo="acme/widget",
        number=1,
        payload={},
        state=TaskState.RUNNING,
        seq=1,
        attempts=1,
        enqueued_at=0.0,
    )


@pytest.mark.parametrize(
    ("parent", "type_env", "expected"),
    [
        (
            {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-x"},
            {},
            Credential("CLAUDE_CODE_OAUTH_TOKEN", "the service's environment"),
        ),
        ({}, {"ANTHROPIC_API_KEY": "k"}, Credential("ANTHROPIC_API_KEY", "types.dev.env")),
        (
            {"ANTHROPIC_API_KEY": "k", "CLAUDE_CODE_OAUTH_TOKEN": "o"},
            {},
            Credential("ANTHROPIC_API_KEY", "the service's environment"),
        ),
        (
            {"CLAUDE_CODE_USE_BEDROCK": "1"},
            {},
            Credential("CLAUDE_CODE_USE_BEDROCK", "the service's environment"),
        ),
        ({"ANTHROPIC_API_KEY": ""}, {}, None),
        ({}, {}, None),
    ],
)
def test_the_credential_is_the_one_the_agent_environment_carries(
    tmp_path: Path,
    parent: dict[str, str],
    type_env: dict[str, str],
    expected: Credential | None,
) -> None:
    # A login in the user's ~/.claude is not the runner's: the CLI gets its own config dir.
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / ".credentials.json").write_text("{}")
    parent = {"HOME": str(home), "PATH": "/usr/bin", **parent}
    type_config = _claude_type(**type_env)
    found = claude_credential("dev", type_config, parent)
    assert found == expected
    env = agent_environment(_task(), type_config, "", parent)
    if expected is not None:
        assert env[expected.what]


async def test_a_stored_login_does_not_count_for_the_runner_never_reads_one(
    tmp_path: Path,
) -> None:
    # Each session gets a fresh CLAUDE_CONFIG_DIR: a login file left anywhere is not used.
    config = make_config(tmp_path)
    store = await SqlStore.open(config.database_url)
    try:
        runner = ClaudeRunner(store, config.data_dir)
        stored = runner.state_dir("dev:acme/widget:1") / "config" / ".credentials.json"
        stored.parent.mkdir(parents=True)
        stored.write_text("{}")
    finally:
        await store.close()
    assert claude_credential("dev", _claude_type(), {"HOME": str(tmp_path)}) is None


CLAUDE_TEAM = """
[server]
host = "{host}"
port = 0
data_dir = "data"
webhook_secret = "change-me-webhook-secret"
api_token = "change-me-api-token"

[types.dev]
runner = "claude"
workdir = "none"

[types.reviewer]
runner = "claude"
workdir = "none"
env = {{ CLAUDE_CODE_OAUTH_TOKEN = "sk-ant-oat01-token" }}

[[agents]]
name = "dev-alpha"
type = "dev"
"""


async def test_doctor_reports_the_credentials_and_flags_weak_secrets(tmp_path: Path) -> None:
    path = tmp_path / "claude-hooks.toml"
    path.write_text(CLAUDE_TEAM.format(host="0.0.0.0"))
    process = await asyncio.create_subprocess_exec(
        CLAUDE_HOOKS,
        "doctor",
        "-c",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_environ(HOME=str(tmp_path)),
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    lines = stdout.decode().splitlines()
    assert process.returncode == 1
    assert (
        "ok    types.reviewer credentials: CLAUDE_CODE_OAUTH_TOKEN from types.reviewer.env" in lines
    )
    assert any(
        line.startswith("FAIL  types.dev credentials: none: set ANTHROPIC_API_KEY")
        for line in lines
    )
    assert (
        "FAIL  secrets: server.webhook_secret is the placeholder 'change-me'…: serve refuses it "
        "on '0.0.0.0'"
    ) in lines


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


SERVED_TEAM = """
[server]
host = "127.0.0.1"
port = 0
data_dir = "data"
webhook_secret = "change-me-webhook-secret"
api_token = "change-me-api-token"

[forgejo]
url = "http://127.0.0.1:{forge_port}"
retries = 0

[types.dev]
runner = "claude"
token = "dev-token"
env = {{ ANTHROPIC_API_KEY = "sk-ant-test" }}

[[agents]]
name = "dev-alpha"
type = "dev"
"""


async def test_serve_logs_each_failing_check_and_starts_while_the_forge_is_down(
    tmp_path: Path,
) -> None:
    """Nothing listens at the forge's address: that is an outage, which never keeps the
    service from (re)starting; serve says so in its one log format, and starts."""
    path = tmp_path / "claude-hooks.toml"
    path.write_text(SERVED_TEAM.format(forge_port=free_port()))
    process = await asyncio.create_subprocess_exec(
        CLAUDE_HOOKS,
        "serve",
        "-c",
        str(path),
        stderr=asyncio.subprocess.PIPE,
        env=clean_environ(HOME=str(tmp_path)),
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        while not any("Started server process" in line for line in lines):
            line = await asyncio.wait_for(process.stderr.readline(), 60)
            assert line, f"serve ended early: {lines}"
            lines.append(line.decode().rstrip("\n"))
    finally:
        process.send_signal(signal.SIGINT)
        _, rest = await asyncio.wait_for(process.communicate(), 60)
    lines += rest.decode().splitlines() if rest else []
    assert process.returncode == 0, lines
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert not any("alembic" in line for line in lines), lines
    warnings = [line for line in lines if " WARNING " in line]
    said = [line for line in warnings if "WARNING claude_hooks: doctor: " in line]
    assert len(said) == 1, lines
    assert "WARNING claude_hooks: doctor: types.dev.token: " in said[0]
    assert said[0].endswith("(see 'claude-hooks doctor')")
    # Besides, only the forge client's own word of the failed look-up.
    assert all("claude_hooks.forge.client" in line for line in set(warnings) - set(said)), lines
    assert any("uvicorn" in line for line in lines)


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        (
            lambda text: text.replace('env = { ANTHROPIC_API_KEY = "sk-ant-test" }\n', ""),
            "types.dev credentials: none: set ANTHROPIC_API_KEY",
        ),
        (
            lambda text: text.replace("[forgejo]\nurl", "[forgejo]\n# url"),
            "types.dev: workdir = 'worktree' needs [forgejo] url",
        ),
    ],
)
def test_serve_refuses_a_configuration_that_cannot_work_in_one_line(
    tmp_path: Path, change: Callable[[str], str], refused: str
) -> None:
    path = tmp_path / "claude-hooks.toml"
    path.write_text(change(SERVED_TEAM.format(forge_port=free_port())))
    result = subprocess.run(
        [CLAUDE_HOOKS, "serve", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_environ(HOME=str(tmp_path)),
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"error: {refused}")
    assert result.stderr.endswith(
        ": serve refuses a configuration that cannot work (see 'claude-hooks doctor')\n"
    )
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "data").exists()
