"""A sandbox born in its cage (`spawning`): bwrap is forked by a service thread that joined the
run's cgroups, so bwrap and its child are in them before the latch lets anything run, with no
move to wait for; the thread is back in the service's own cgroups once it has started it (no
service process is ever listed in a cage); and what it started lives as long as the service
(bwrap's `--die-with-parent` follows the thread that forked it, which must not end)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from claude_hooks.agents import cages, sandbox, spawning
from claude_hooks.agents.sandbox import Sandbox
from claude_hooks.agents.sandbox_latch import Latch
from tests.e2e.test_hostile_agent import pytestmark as needs_bwrap

pytestmark = [
    needs_bwrap,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs the sandbox as an instance's account"),
]

LIMITS = cages.Caps(64, 512 << 20, 50 << 20, "512M", "50M")


@pytest.fixture
def box() -> Sandbox:
    return sandbox.build(sandbox.find_bwrap(), "claude-hooks-agent", []).for_instance("born")


def listed(cage: cages.Cage) -> set[int]:
    """Every pid in any of the cage's cgroups, the service's own included."""
    return {
        int(pid)
        for folder in cage.cgroups.values()
        for pid in (folder / "cgroup.procs").read_text().split()
    }


async def test_bwrap_is_in_its_cgroups_before_the_latch_and_the_service_is_not(
    box: Sandbox, tmp_path: Path
) -> None:
    cage = cages.detect().cage("born-test", LIMITS)
    if cage.kind != "cgroup1":
        await cage.close()
        pytest.skip("only a cgroup v1 thread can join a cgroup of its own")
    box.give(tmp_path)
    latch = Latch.pipes()
    try:
        argv = box.wrap(
            ["cat", "/proc/self/cgroup"],
            tmp_path,
            readable=[Path(sys.executable)],
            cage=cage,
            latch=latch.args(),
        )
        process = await spawning.spawn(
            argv,
            cage,
            stdout=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"},
            pass_fds=latch.child_fds,
            bufsize=0,
        )
        latch.spawned()
        # Before the latch: bwrap is in, and nothing of the service is.
        assert process.pid in listed(cage)
        assert os.getpid() not in listed(cage)
        child = await latch.admit(cage, None)
        assert process.stdout is not None
        out = await asyncio.wait_for(process.stdout.read(), 30)
        assert await process.wait() == 0
    finally:
        latch.close()
        await cage.close()
    assert child != process.pid
    for folder in cage.cgroups.values():
        assert f"/{folder.name}\n" in out.decode()
    # The spawner thread is back where the service's threads are.
    own = Path("/proc/self/cgroup").read_text()
    for thread in Path("/proc/self/task").iterdir():
        assert (thread / "cgroup").read_text() == own


async def test_what_the_spawner_started_outlives_the_start(box: Sandbox, tmp_path: Path) -> None:
    box.give(tmp_path)
    process = await spawning.spawn(
        box.wrap(["sleep", "30"], tmp_path), None, env={"PATH": "/usr/bin:/bin"}
    )
    try:
        await asyncio.sleep(1.0)  # --die-with-parent would have fired by now
        assert process.returncode is None
        os.kill(process.pid, 0)
    finally:
        os.kill(process.pid, 9)
    assert await asyncio.wait_for(process.wait(), 10) == -9
