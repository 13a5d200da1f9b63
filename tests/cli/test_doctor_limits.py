"""`doctor` says what an agent can consume and reach: each type's limits, how this host
enforces them (delegated cgroup v2, cgroup v1, or rlimits only), the agents' accounts (one
per instance as root), the free disk below which no agent starts, and a PostgreSQL that lets
this host in without a password."""

from __future__ import annotations

import os
from pathlib import Path

from claude_hooks.agents import cages
from tests.cli.test_cli import cli

SERVER = '[server]\ndata_dir = "{data}"\nwebhook_secret = "s"\napi_token = "t"\n{more}'
TYPES = (
    '[types.dev]\nrunner = "command"\ncommand = ["true"]\nworkdir = "none"\n'
    'max_processes = 64\nmax_memory = "256M"\nmax_disk = "50M"\n'
    '[types.reviewer]\nrunner = "command"\ncommand = ["true"]\nworkdir = "none"\n'
)


def doctor(tmp_path: Path, more: str = "") -> list[str]:
    path = tmp_path / "claude-hooks.toml"
    path.write_text(SERVER.format(data=tmp_path / "data", more=more) + TYPES)
    return cli("doctor", config=path).stdout.splitlines()


def test_doctor_names_each_types_limits_and_how_the_host_enforces_them(tmp_path: Path) -> None:
    lines = doctor(tmp_path)
    assert "ok    types.dev limits: max_processes 64, max_memory 256M, max_disk 50M" in lines
    assert "ok    types.reviewer limits: max_processes 512, max_memory 4G, max_disk 20G" in lines
    enforced = cages.detect(prepare=False)
    mark = "warn" if enforced.kind == "rlimits" else "ok  "
    assert f"{mark}  agent limits: {enforced.describe()}" in "\n".join(lines)
    if os.geteuid() == 0:
        assert (
            "ok    agent accounts: one per instance, claude-hooks-agent-INSTANCE (created at its "
            "first run): no instance reads or signals another's"
        ) in lines
    else:
        assert any(
            "agent accounts: the service's own user for every instance" in line for line in lines
        )
    assert any(
        line.startswith("ok    server.min_free_disk: ") and "(agents start above 2G)" in line
        for line in lines
    )
    low = doctor(tmp_path, 'min_free_disk = "1000T"\n')
    assert any(
        line.startswith("warn  server.min_free_disk: ")
        and line.endswith(": below 1000T, no agent starts")
        for line in low
    )


def test_doctor_warns_of_a_postgresql_that_needs_no_password(
    tmp_path: Path, pg_database: str
) -> None:
    lines = doctor(tmp_path, f'database_url = "{pg_database}"\n')
    warning = [line for line in lines if line.startswith("warn  database auth: ")]
    assert warning, lines
    assert "without a password" in warning[0] and "pg_hba.conf" in warning[0]
