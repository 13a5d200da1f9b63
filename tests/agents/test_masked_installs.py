"""Agents whose program lives under a folder the sandbox masks (/tmp, /root, /home): a clone
under /tmp with its own virtualenv runs its agents and `demo` as one anywhere else does."""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_hooks.core.domain import TaskState
from tests.agents.test_command_runner import finished, run_one
from tests.conftest import ServiceFactory
from tests.e2e.test_hostile_agent import pytestmark as needs_bwrap

pytestmark = needs_bwrap


@pytest.fixture(scope="module")
def venv_in_tmp() -> Iterator[Path]:
    """A virtualenv under /tmp whose base interpreter is this one's (pyenv's, under /root,
    here): what `python3 -m venv .venv` makes in a clone under /tmp. It sees this test run's
    packages through a .pth file, as an editable install sees its clone."""
    with tempfile.TemporaryDirectory(prefix="clone-", dir="/tmp") as clone:
        venv = Path(clone) / ".venv"
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
            check=True,
            timeout=60,
        )
        purelib = Path(
            sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
        )
        paths = [*site.getsitepackages(), *sys.path[1:]]
        (purelib / "this_run.pth").write_text("\n".join(p for p in paths if p) + "\n")
        yield venv / "bin" / "python"


async def test_a_command_agent_runs_with_a_virtualenv_under_tmp(
    start_service: ServiceFactory, venv_in_tmp: Path
) -> None:
    clone = venv_in_tmp.parents[2]
    script = clone / "agent.py"
    script.write_text(
        "import os, sys\n"
        "print('prefix', sys.prefix)\n"
        "print('clone', sorted(os.listdir(os.path.dirname(__file__))), flush=True)\n"
    )
    (clone / "private.txt").write_text("not for the agent")
    service, task_id = await run_one(start_service, [str(venv_in_tmp), str(script)])
    task = await finished(service, task_id)
    assert task.state is TaskState.SUCCEEDED, task.error
    output = service.pool.log_path(task_id).read_text()
    assert f"prefix {venv_in_tmp.parents[1]}" in output
    # Nothing else of the clone: its other files stay masked.
    assert "clone ['.venv', 'agent.py']" in output


def test_demo_runs_from_a_virtualenv_under_tmp(venv_in_tmp: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(venv_in_tmp), "-m", "claude_hooks", "demo", "--once", "--pace", "0.2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "setpriv" not in result.stdout + result.stderr
    # Without the venv in the sandbox, every task failed: "all 9 tasks finished: 9 failed".
    assert "succeeded" in result.stdout.splitlines()[-1]
