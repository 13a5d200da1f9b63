"""Operating claude-hooks from the command line as a new user does: init, paths, errors."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import tomllib
from collections.abc import Awaitable
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from claude_hooks import __version__
from claude_hooks.config import load_config
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.service.runtime import Service
from tests import pg
from tests.dashboard_fixtures import serving
from tests.support import wait_until

CLAUDE_HOOKS = str(Path(sys.executable).parent / "claude-hooks")

TEAM = """
[server]
data_dir = "data"
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


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_HOOKS_")}
    return subprocess.run(
        [CLAUDE_HOOKS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**environ, **(env or {})},
    )


@pytest.fixture
def team(tmp_path: Path) -> Path:
    """A configuration in its own folder, with `data_dir = "data"` relative to it."""
    path = tmp_path / "team" / "claude-hooks.toml"
    path.parent.mkdir()
    path.write_text(TEAM)
    return path


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_reading_commands_never_create_a_database_and_say_where_they_looked(
    team: Path, elsewhere: Path
) -> None:
    expected = team.parent / "data" / "claude-hooks.db"
    for args in (("tasks", "list"), ("agents", "list"), ("deliveries", "list")):
        result = run(*args, "--config", str(team), cwd=elsewhere)
        assert result.returncode == 1, result
        assert result.stderr == (
            f"error: no database yet at {str(expected)!r} (server.data_dir of {str(team)!r}): "
            "'claude-hooks serve' creates it; pass --config if you meant another configuration\n"
        )
    doctor = run("doctor", "--config", str(team), cwd=elsewhere)
    assert f"warn  database: none yet at {expected}: 'claude-hooks serve' creates it" in (
        doctor.stdout.splitlines()
    )
    assert list(elsewhere.iterdir()) == []
    assert not (team.parent / "data").exists()


def test_reading_commands_on_an_empty_postgresql_database_create_no_tables(
    team: Path, elsewhere: Path, pg_server: str
) -> None:
    with pg.own_database(pg_server) as url:
        env = {"CLAUDE_HOOKS_SERVER__DATABASE_URL": url}
        doctor = run("doctor", "--config", str(team), cwd=elsewhere, env=env)
        assert any(
            line.startswith("warn  database: the database at")
            and line.endswith("has no tables yet: 'claude-hooks serve' creates them")
            for line in doctor.stdout.splitlines()
        ), doctor.stdout
        for args in (("tasks", "list"), ("costs",), ("budget", "show")):
            result = run(*args, "--config", str(team), cwd=elsewhere, env=env)
            assert result.returncode == 1, result
            assert "has no tables yet: 'claude-hooks serve' creates them" in result.stderr
        engine = sa.create_engine(make_url(url).set(drivername="postgresql+psycopg"))
        try:
            with engine.connect() as conn:
                assert sa.inspect(conn).get_table_names() == []
        finally:
            engine.dispose()


def test_the_database_follows_the_config_file_from_any_directory(
    team: Path, elsewhere: Path
) -> None:
    added = run(
        "agents", "add", "dev-charlie", "--type", "dev", "--config", str(team), cwd=team.parent
    )
    assert added.returncode == 0, added.stderr
    assert (team.parent / "data" / "claude-hooks.db").exists()
    # From another folder, with --config before or after the command, by a relative path.
    relative = os.path.relpath(team, elsewhere)
    for args in (
        ("agents", "list", "--json", "--config", relative),
        ("--config", relative, "agents", "list", "--json"),
        ("-c", "/nowhere.toml", "agents", "list", "--json", "-c", relative),
    ):
        listed = run(*args, cwd=elsewhere)
        assert listed.returncode == 0, listed.stderr
        assert [row["name"] for row in json.loads(listed.stdout)] == ["dev-charlie"]
    assert list(elsewhere.iterdir()) == []


def test_without_a_config_file_one_line_says_where_it_looked(elsewhere: Path) -> None:
    result = run("agents", "list", cwd=elsewhere)
    assert result.returncode == 2
    assert result.stderr == (
        "error: no configuration file: looked for --config, $CLAUDE_HOOKS_CONFIG and "
        f"{str(elsewhere / 'claude-hooks.toml')!r}; make one with 'claude-hooks init' "
        "(or pass --config PATH)\n"
    )
    assert list(elsewhere.iterdir()) == []


def test_version(elsewhere: Path) -> None:
    result = run("--version", cwd=elsewhere)
    assert (result.returncode, result.stdout) == (0, f"claude-hooks {__version__}\n")


def test_environment_mistakes_are_one_line(team: Path, elsewhere: Path) -> None:
    listed = run(
        "doctor",
        "--config",
        str(team),
        cwd=elsewhere,
        env={"CLAUDE_HOOKS_SECURITY__ALLOWED_SENDERS": "{bob"},
    )
    assert listed.returncode == 2
    assert listed.stderr.startswith("error: CLAUDE_HOOKS_SECURITY__ALLOWED_SENDERS: give a list")
    assert len(listed.stderr.splitlines()) == 1
    typo = run(
        "agents",
        "add",
        "dd-1",
        "--type",
        "devv",
        "--config",
        str(team),
        cwd=elsewhere,
        env={"CLAUDE_HOOKS_TYPES__DEVV__TOKEN": "x"},
    )
    assert typo.returncode == 2
    assert typo.stderr.startswith(
        "error: CLAUDE_HOOKS_TYPES__DEVV__TOKEN: there is no type 'devv' in the configuration "
        "(types: dev)"
    )
    refused = run("agents", "add", "dd-1", "--type", "devv", "--config", str(team), cwd=elsewhere)
    assert refused.returncode == 2
    assert "type 'devv' is not configured (configured: dev)" in refused.stderr
    assert not (team.parent / "data").exists()


def test_init_writes_a_working_configuration_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "site" / "claude-hooks.toml"
    made = run("init", "--path", str(path), "--types", "dev=2,reviewer=1,boss=1", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    config = load_config(path, environ={})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {name: t.runner for name, t in config.types.items()} == {
        "dev": "claude",
        "reviewer": "claude",
        "boss": "merge",
    }
    assert [(a.name, a.type) for a in config.agents] == [
        ("dev-1", "dev"),
        ("dev-2", "dev"),
        ("reviewer-1", "reviewer"),
        ("boss-1", "boss"),
    ]
    assert config.server.webhook_secret is not None and config.server.api_token is not None
    secret = config.server.webhook_secret.get_secret_value()
    assert len(secret) >= 32
    assert secret != config.server.api_token.get_secret_value()
    assert config.data_dir == path.parent / "data"
    # What it says of a type's token is what the service does: it never reaches the agents.
    text = path.read_text()
    assert "given to its agents" not in text
    assert "it is never given to the agents (see agent_token)" in text
    # The webhook settings to paste: the URL, the content type, the same secret, the events.
    lines = made.stdout.splitlines()
    assert "  Target URL:    http://127.0.0.1:8080/webhook" in lines
    assert "  POST content type: application/json" in lines
    assert f"  Secret:        {secret}" in lines
    assert "  Trigger on:    All events" in lines
    # Nothing but the file: `serve` makes the data dir where data_dir says when it starts.
    assert list(path.parent.iterdir()) == [path]
    assert f"'serve' keeps its data in {path.parent / 'data'}" in made.stdout

    again = run("init", "--path", str(path), "--types", "dev=1", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr == f"error: {str(path)!r} already exists: pass --force to replace it\n"
    assert tomllib.loads(path.read_text())["types"].keys() == {"dev", "reviewer", "boss"}
    forced = run("init", "--path", str(path), "--types", "dev=1", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    replaced = load_config(path, environ={})
    assert list(replaced.types) == ["dev"]
    assert replaced.server.webhook_secret is not None
    assert replaced.server.webhook_secret.get_secret_value() != secret

    bad = run("init", "--path", str(tmp_path / "x.toml"), "--types", "dev=0", cwd=tmp_path)
    assert bad.returncode == 2
    assert "give each type 1 to 100 instances" in bad.stderr


def test_unknown_filter_values_and_missing_workdirs_are_refused(
    team: Path, elsewhere: Path
) -> None:
    assert (
        run("agents", "add", "dev-b", "--type", "dev", "-c", str(team), cwd=elsewhere).returncode
        == 0
    )
    for args, message in (
        (("tasks", "list", "--type", "nosuch"), "unknown type 'nosuch' for --type (types: dev)"),
        (("deliveries", "list", "--outcome", "bogus"), "unknown outcome 'bogus' for --outcome"),
    ):
        result = run(*args, "-c", str(team), cwd=elsewhere)
        assert result.returncode == 2, result
        assert message in result.stderr
    limited = run("deliveries", "list", "--limit", "5", "--json", "-c", str(team), cwd=elsewhere)
    assert (limited.returncode, json.loads(limited.stdout)) == (0, [])
    clean = run("workdirs", "clean", "dev:acme/widget:404", "-c", str(team), cwd=elsewhere)
    assert clean.returncode == 1
    assert "dev:acme/widget:404: no workdir" in clean.stderr


async def test_agents_remove_of_a_declared_agent_says_it_comes_back_and_it_does(
    team: Path, elsewhere: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="claude_hooks")
    config = load_config(team, environ={})
    service = await Service.open(config)
    await service.start()
    try:
        assert "registered agents from the configuration: dev-alpha" in caplog.text
        removed = await asyncio.to_thread(
            run, "agents", "remove", "dev-alpha", "-c", str(team), cwd=elsewhere
        )
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.splitlines() == [
            "removed dev-alpha",
            f"note: dev-alpha is declared in [[agents]] of {team}, so the next start registers "
            "it again: delete it there to remove it for good, or use 'claude-hooks agents "
            "disable dev-alpha' to keep it without work",
        ]
        await wait_until(lambda: "dev-alpha" not in service.pool.workers)
    finally:
        await service.stop()
    caplog.clear()
    service = await Service.open(load_config(team, environ={}))
    await service.start()
    try:
        assert "dev-alpha" in service.pool.workers
        assert "registered agents from the configuration: dev-alpha" in caplog.text
        disabled = await asyncio.to_thread(
            run, "agents", "disable", "dev-alpha", "-c", str(team), cwd=elsewhere
        )
        assert disabled.returncode == 0, disabled.stderr
    finally:
        await service.stop()
    service = await Service.open(load_config(team, environ={}))
    await service.start()
    try:
        agent = await service.store.get_agent("dev-alpha")
        assert agent is not None and agent.enabled is False  # a disable outlives restarts
    finally:
        await service.stop()


def following(pid: int, port: int) -> bool:
    """Whether process `pid` has a connection open to the service on `port`."""
    try:
        connections = psutil.Process(pid).net_connections("tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.raddr and c.raddr.port == port for c in connections)


async def test_tasks_log_reads_through_the_service_and_follows_a_queued_task(
    tmp_path: Path, elsewhere: Path
) -> None:
    """While the service runs, `tasks log` is its API's reader (a file reader could not follow:
    it refuses -f); with no service, the file, and -f of an unfinished task is refused."""
    gate = tmp_path / "gate"
    agent = (
        "import os, sys, time\n"
        "print('first line', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        "print('last line', flush=True)\n"
    )
    path = tmp_path / "team.toml"
    path.write_text(
        f'[server]\ndata_dir = "data"\nwebhook_secret = "s"\napi_token = "t"\n'
        # Unconfined: the agent waits for a file in the test's /tmp, which a sandbox hides.
        f"[types.dev]\nrunner = 'command'\nworkdir = 'none'\nsandbox = false\n"
        f"command = {json.dumps([sys.executable, '-c', agent])}\n"
        '[[agents]]\nname = "dev-alpha"\ntype = "dev"\n'
    )

    def dispatch(service: Service, number: int) -> Awaitable[str]:
        request = DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", number)
        return service.pool.dispatch_by_type("dev", request)

    async with serving(load_config(path, environ={})) as (service, url):
        first = await dispatch(service, 1)
        log = service.pool.log_path(first)
        await wait_until(lambda: log.exists() and "first line" in log.read_text(), timeout=20)
        queued = await dispatch(service, 2)  # behind the first
        once = await asyncio.to_thread(run, "tasks", "log", first, "-c", str(path), cwd=elsewhere)
        assert (once.returncode, once.stdout) == (0, "first line\n"), once.stderr
        follower = await asyncio.create_subprocess_exec(
            CLAUDE_HOOKS, "tasks", "log", queued, "-f", "-c", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=elsewhere,
        )  # fmt: skip
        try:
            port = int(url.rsplit(":", 1)[1])
            await wait_until(lambda: following(follower.pid, port), timeout=20)
            task = await service.store.get_task(queued)
            assert task is not None and task.state is TaskState.QUEUED  # the premise
            assert follower.stdout is not None
            gate.touch()  # the first ends, the queued one runs through
            out, errors = await asyncio.wait_for(follower.communicate(), 30)
            assert (follower.returncode, out, errors) == (0, b"first line\nlast line\n", b"")
        finally:
            if follower.returncode is None:
                follower.kill()
                await follower.wait()
        second = await asyncio.to_thread(
            run, "tasks", "log", first, "--run", "2", "-c", str(path), cwd=elsewhere
        )
        assert (second.returncode, second.stderr.strip()) == (
            1,
            f"error: task {first} has no run 2: it ran 1 time (its runs are on its page and "
            "in 'claude-hooks tasks show')",
        )
        gate.unlink()
        stopped = await dispatch(service, 3)  # still running when the service stops
        log = service.pool.log_path(stopped)
        await wait_until(lambda: log.exists() and "first line" in log.read_text(), timeout=20)
    # No service: the file is read, and -f refuses an unfinished task after what is there.
    alone = await asyncio.to_thread(
        run, "tasks", "log", stopped, "-f", "--run", "1", "-c", str(path), cwd=elsewhere
    )
    assert (alone.returncode, alone.stdout) == (0, "first line\n"), alone.stderr  # run 1 ended
    alone = await asyncio.to_thread(
        run, "tasks", "log", stopped, "-f", "-c", str(path), cwd=elsewhere
    )
    assert (alone.returncode, alone.stdout) == (1, "first line\n")
    assert alone.stderr.startswith(f"error: task {stopped} is queued: following its log needs ")
    missing = await asyncio.to_thread(run, "tasks", "log", "nope", "-c", str(path), cwd=elsewhere)
    assert missing.returncode == 1
    assert "no task with id 'nope'" in missing.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_backup_and_restore_keep_the_data_private_and_refuse_a_running_service(
    team: Path, elsewhere: Path
) -> None:
    data = team.parent / "data"
    database = data / "claude-hooks.db"
    assert (
        run("agents", "add", "dev-b", "--type", "dev", "-c", str(team), cwd=elsewhere).returncode
        == 0
    )
    assert (mode(data), mode(database)) == (0o700, 0o600)  # as `serve` makes them
    copy = elsewhere / "copy.db"
    backed = run("backup", str(copy), "-c", str(team), cwd=elsewhere)
    assert backed.returncode == 0, backed.stderr
    assert mode(copy) == 0o600
    assert (
        run("agents", "add", "dev-c", "--type", "dev", "-c", str(team), cwd=elsewhere).returncode
        == 0
    )

    config = load_config(team, environ={})
    service = await Service.open(config)
    await service.start()
    try:
        refused = await asyncio.to_thread(run, "restore", str(copy), "-c", str(team), cwd=elsewhere)
    finally:
        await service.stop()
    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: a service is running on {str(data)!r} (pid {os.getpid()}): stop it, then restore\n"
    )

    restored = run("restore", str(copy), "-c", str(team), cwd=elsewhere)
    assert restored.returncode == 0, restored.stderr
    listed = run("agents", "list", "--json", "-c", str(team), cwd=elsewhere)
    assert [row["name"] for row in json.loads(listed.stdout)] == ["dev-b"]  # before the serve
    (kept,) = data.glob("claude-hooks.db.before-restore-*")
    assert f"the database it replaced is kept at {kept}" in restored.stdout
    assert (mode(kept), mode(database)) == (0o600, 0o600)
    with sqlite3.connect(kept) as before:
        names = [row[0] for row in before.execute("SELECT name FROM agents ORDER BY name")]
    assert names == ["dev-alpha", "dev-b", "dev-c"]  # dev-alpha: the serve registered it

    for bad, message in (
        (team, "is not an SQLite database"),
        (elsewhere / "none.db", "no backup at"),
    ):
        refused = run("restore", str(bad), "-c", str(team), cwd=elsewhere)
        assert (refused.returncode, refused.stderr.count("\n")) == (1, 1), refused.stderr
        assert message in refused.stderr


def test_restore_on_postgresql_points_at_pg_restore(tmp_path: Path) -> None:
    path = tmp_path / "pg.toml"
    url = "postgresql://hooks:secret@127.0.0.1:5432/hooks"
    path.write_text(f"[server]\ndata_dir = {json.dumps(str(tmp_path))}\ndatabase_url = '{url}'\n")
    done = run("restore", "dump.pgc", "-c", str(path), cwd=tmp_path)
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "pg_restore --clean --if-exists --dbname" in message and "secret" not in message
