"""An agent dies with its node: after a SIGKILL of the service nothing it started runs on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from claude_hooks.agents.processes import dies_with_service
from claude_hooks.agents.runners.claude import LAUNCHER

# Stands in for the service: starts the agent as the runners do, prints its pid, waits.
PARENT = textwrap.dedent(
    """
    import json, subprocess, sys, time
    argv, env = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    child = subprocess.Popen(argv, env=env, start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def orphan_after_kill(argv: list[str], env: dict[str, str]) -> int:
    """Start `argv` under a parent, SIGKILL the parent, return the agent's pid."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, json.dumps(argv), json.dumps(env)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    time.sleep(0.3)  # the launcher has set its death signal and exec'd
    assert running(pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    return pid


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def gone_soon(pid: int) -> bool:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("runner", ["command", "claude"])
def test_the_agent_of_a_killed_service_is_killed_too(runner: str) -> None:
    sleeper = "/bin/sleep"
    if runner == "command":
        argv, env = dies_with_service([sleeper, "60"]), {"PATH": os.environ["PATH"]}
    else:  # the claude runner's launcher, exec'ing a stand-in for the CLI
        argv = [sys.executable, "-I", "-S", "-c", LAUNCHER, "60"]
        env = {"CLAUDE_HOOKS_CLI": sleeper, "CLAUDE_HOOKS_CLI_ENV": "[]"}
    pid = orphan_after_kill(argv, env)
    try:
        assert gone_soon(pid), f"the agent {pid} outlived its service"
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)
