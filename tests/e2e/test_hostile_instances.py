"""Two instances of one type, one hostile: each runs as an account of its own (the service runs
as root here), so the floor under the sandbox's namespaces holds between them. The hostile one
cannot read the other's workdir nor signal its processes, from its sandbox or, as its account,
from outside every namespace (what an agent that escaped them would be); and a fork bomb held
at its RLIMIT_NPROC leaves the other's account room to start processes, where one shared
account would not.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from claude_hooks.agents import cages, sandbox
from claude_hooks.agents.sandbox import Account, Sandbox, account_name
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.service.runtime import Service
from tests.agents.test_command_runner import finished
from tests.agents.test_sandbox_latch import start
from tests.conftest import ServiceFactory
from tests.e2e.test_hostile_agent import pytestmark as needs_bwrap
from tests.support import wait_until

pytestmark = [
    needs_bwrap,
    pytest.mark.skipif(os.geteuid() != 0, reason="accounts per instance are made as root"),
]

# The holder keeps a secret in its workdir and waits for `release` there; the attacker tries
# the holder's workdir and processes (their host paths and pids are in its payload).
AGENT = """\
import json, os, sys, time
payload = json.load(sys.stdin)["payload"]
report = {"uid": os.getuid(), "workdir_mode": oct(os.stat(".").st_mode & 0o777)}
if payload["role"] == "holder":
    open("secret.txt", "w").write("the holder's notes")
    deadline = time.monotonic() + 30
    while not os.path.exists("release") and time.monotonic() < deadline:
        time.sleep(0.05)
    report["released"] = os.path.exists("release")
else:
    def attempt(act):
        try:
            return {"ok": True, "got": act()}
        except Exception as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    other = payload["other_workdir"]
    report["read_other"] = attempt(lambda: open(other + "/secret.txt").read())
    report["list_other"] = attempt(lambda: os.listdir(other))
    report["kill_other"] = [attempt(lambda p=p: os.kill(p, 9)) for p in payload["other_pids"]]
json.dump(report, open("report.json", "w"))
"""


def account_of(service: Service, instance: str) -> Account:
    prefix = service.config.server.sandbox_user
    entry = pwd.getpwnam(account_name(prefix, instance))
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def pids_of(uid: int, cwd: Path | None = None) -> list[int]:
    """The processes of `uid` (working in `cwd`: an account may run another test's agents)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(entry.path).st_uid != uid:
                    continue
                if cwd is None or os.readlink(f"{entry.path}/cwd") == str(cwd):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def as_account(account: Account, *argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` run as `account` on the host, in no namespace of the sandbox's."""
    return subprocess.run(
        ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups",
         "--inh-caps=-all", "--", *argv],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip


async def test_one_instance_cannot_read_or_signal_anothers(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    service: Service = await start_service(
        types={
            "dev": {
                "runner": "command",
                "command": [sys.executable, str(agent)],
                "workdir": "none",
                "timeout": 60,
            }
        },
        agents=[{"name": "dev-alpha", "type": "dev"}, {"name": "dev-beta", "type": "dev"}],
    )
    service.pool.confinement = cages.Confinement("rlimits")  # the floor: no cgroup

    async def dispatch(number: int, payload: dict[str, Any]) -> str:
        request = DispatchRequest.for_type(
            "dev", TaskKind.WORK_ISSUE, "acme/widget", number, payload
        )
        return await service.pool.dispatch_by_type("dev", request)

    holder_id = await dispatch(1, {"title": "hold", "role": "holder"})
    holder_dir = service.pool.workspaces.workdir("dev:acme/widget:1")
    await wait_until(lambda: (holder_dir / "secret.txt").exists(), timeout=15)
    holder_task = await service.store.get_task(holder_id)
    assert holder_task is not None
    holder = account_of(service, holder_task.agent)
    holder_pids = pids_of(holder.uid, holder_dir.resolve())
    assert holder_pids, "the holder's agent runs as its instance's account"
    assert holder_dir.stat().st_uid == holder.uid
    assert holder_dir.stat().st_mode & 0o777 == 0o700

    attacker_id = await dispatch(
        2,
        {
            "title": "attack",
            "role": "attacker",
            "other_workdir": str(holder_dir),
            "other_pids": holder_pids,
        },
    )
    attack = await finished(service, attacker_id, 30)
    assert attack.state is TaskState.SUCCEEDED, attack.error
    assert attack.agent != holder_task.agent
    attacker = account_of(service, attack.agent)
    assert attacker.uid not in (0, holder.uid)
    report = json.loads(
        (service.pool.workspaces.workdir("dev:acme/widget:2") / "report.json").read_text()
    )
    assert report["uid"] == attacker.uid
    assert report["read_other"]["ok"] is False, report
    assert report["list_other"]["ok"] is False, report
    assert all(not kill["ok"] for kill in report["kill_other"]), report

    # The floor on its own: as the attacker's account, outside every namespace of the sandbox.
    read = as_account(attacker, "cat", str(holder_dir / "secret.txt"))
    assert read.returncode != 0 and "Permission denied" in read.stderr, read
    for pid in holder_pids:
        kill = as_account(attacker, "kill", "-KILL", str(pid))
        assert kill.returncode != 0 and "not permitted" in kill.stderr, kill
    assert set(holder_pids) <= set(pids_of(holder.uid, holder_dir.resolve())), "one was killed"

    (holder_dir / "release").write_text("")
    held = await finished(service, holder_id, 30)
    assert held.state is TaskState.SUCCEEDED, held.error
    assert json.loads((holder_dir / "report.json").read_text())["released"] is True


# Forks until its RLIMIT_NPROC refuses, then holds what it has.
BOMB = """\
import os, time
while True:
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    except OSError:
        time.sleep(60)
"""
STARTS = "for n in 1 2 3 4 5 6 7 8 9 10; do /bin/true || exit 1; done"


async def start_in(
    box: Sandbox, limit: int, workdir: Path, argv: list[str]
) -> asyncio.subprocess.Process:
    """`argv` in `box`, let in at its latch into a cage with RLIMIT_NPROC at `limit`."""
    cage = cages.Confinement("rlimits").cage(
        "bomb", cages.Caps(limit, 1 << 30, 1 << 30, "1G", "1G")
    )
    process, _ = await start(box, workdir, argv, cage, None)
    return process


async def test_a_fork_bomb_in_one_instance_leaves_another_room(tmp_path: Path) -> None:
    base = sandbox.build(sandbox.find_bwrap(), "claude-hooks-agent", [])
    bomber, beside = base.for_instance("bomb-alpha"), base.for_instance("bomb-beta")
    assert bomber.account is not None and beside.account is not None
    assert bomber.account.uid != beside.account.uid
    limit = 24
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "bomb.py").write_text(BOMB)
    bomb = await start_in(
        bomber, limit, tmp_path / "a", [sys.executable, str(tmp_path / "a" / "bomb.py")]
    )
    try:
        await wait_until(lambda: len(pids_of(bomber.account.uid)) >= limit - 1, timeout=20)  # type: ignore[union-attr]
        await asyncio.sleep(0.2)

        async def starts(box: Sandbox) -> tuple[int, bytes]:
            process = await start_in(box, limit, tmp_path / "b", ["/bin/sh", "-c", STARTS])
            _, err = await asyncio.wait_for(process.communicate(), 20)
            assert process.returncode is not None
            return process.returncode, err

        code, err = await starts(beside)
        assert code == 0, err
        # The same, as the bomb's own account (one account for every agent): no room left.
        code, _ = await starts(bomber)
        assert code != 0, "the test's bomb did not reach its limit"
    finally:
        bomb.send_signal(signal.SIGKILL)
        await asyncio.wait_for(bomb.communicate(), 10)
    await wait_until(lambda: not pids_of(bomber.account.uid), timeout=10)  # type: ignore[union-attr]
