"""Usage errors are one `error:` line with exit 2, `--help` groups the commands, and a task
is named by the tail of its id the dashboard shows."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from claude_hooks.core.domain import DispatchRequest, TaskKind
from tests.cli.test_cli import CONFIG, cli
from tests.conftest import ServiceFactory
from tests.support import GateRunner, make_config, wait_until


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("budget", "set", "dev", "--daily", "-3"),
            "error: Invalid value for '--daily': Input should be greater than or equal to 0 "
            "(see 'claude-hooks budget set --help')",
        ),
        (
            ("tasks", "show"),
            "error: Missing argument 'task_id' (see 'claude-hooks tasks show --help')",
        ),
        (("tasks", "list", "--bogus"), "error: No such option: --bogus"),
        (("tasks", "list", "--limit", "x"), "error: Invalid value for '--limit'"),
        (("nosuch",), "error: No such command 'nosuch' (see 'claude-hooks --help')"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    result = cli(*args)
    assert result.returncode == 2, result
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert result.stdout == ""


def test_help_lists_the_commands_grouped_run_operate_inspect_plan() -> None:
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    panels = re.findall(r"^╭─ (\w+) ", result.stdout, flags=re.MULTILINE)
    assert panels == ["Options", "Run", "Operate", "Inspect", "Plan"]
    sections = dict(
        zip(panels, re.split(r"^╭─ \w+ .*$", result.stdout, flags=re.M)[1:], strict=True)
    )
    listed = {
        panel: re.findall(r"^│ (\w+) ", text, flags=re.MULTILINE)
        for panel, text in sections.items()
    }
    assert listed["Run"] == ["serve", "init", "claude", "demo"]
    assert set(listed["Operate"]) == {
        "agents",
        "workdirs",
        "budget",
        "backup",
        "restore",
        "spool",
        "labels",
    }
    inspect = {"tasks", "deliveries", "nodes", "costs", "report", "doctor", "policy"}
    assert set(listed["Inspect"]) == inspect
    assert listed["Plan"] == ["simulate"]
    # A group without its command shows its help, as Click does.
    bare = cli("tasks")
    assert bare.returncode == 2
    assert "Usage: claude-hooks tasks" in bare.stdout + bare.stderr


async def test_tasks_are_named_by_the_tail_the_dashboard_shows(
    start_service: ServiceFactory, gate: GateRunner, tmp_path: Path
) -> None:
    config_file = tmp_path / "claude-hooks.toml"
    config_file.write_text(CONFIG.format(data=tmp_path / "data"))
    config = make_config(tmp_path, agents=[{"name": "dev-alpha", "type": "dev"}])
    service = await start_service(config, runner=gate)
    ids = [
        await service.pool.dispatch_by_type(
            "dev", DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", n)
        )
        for n in range(1, 41)
    ]
    await wait_until(lambda: gate.started == ids[:1])
    shown = ids[-1][-7:]

    async def run(*args: str) -> tuple[int, str, str]:
        done = await asyncio.to_thread(cli, *args, config=config_file)
        return done.returncode, done.stdout, done.stderr

    code, out, err = await run("tasks", "show", shown)
    assert (code, json.loads(out)["id"]) == (0, ids[-1]), err
    code, out, err = await run("tasks", "log", shown)
    assert (code, err) == (0, f"task {ids[-1]} has no output (queued)\n")
    # 40 ids over 32 last characters: some end alike, and such a tail names no task.
    last = [task_id[-1] for task_id in ids]
    common = next(char for char in last if last.count(char) > 1)
    code, out, err = await run("tasks", "show", common)
    matches = sorted((i for i in ids if i.endswith(common)), reverse=True)
    assert code == 1
    assert err.startswith(f"error: task id {common!r} matches several tasks ({matches[0]}, ")
    code, out, err = await run("tasks", "cancel", shown)
    assert (code, out) == (0, f"task {ids[-1]} cancelled (was queued)\n"), err


def test_the_claude_cli_the_agents_run_is_at_hand(tmp_path: Path) -> None:
    """`claude-hooks claude …` runs the CLI inside claude-agent-sdk's wheel (the README's
    `claude setup-token`), with its arguments and exit code as they are."""
    done = subprocess.run(
        [sys.executable, "-m", "claude_hooks", "claude", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("(Claude Code)\n")
