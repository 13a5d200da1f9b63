"""The sandbox's gate: bwrap waits while the service puts it in its cage and opens its egress
listener inside, then the agent starts with nothing of ours run before it. From the agent's
first instruction: the listener answers, it is in its cgroups with its rlimits, it runs as the
instance's account with no capability in any set and no_new_privs, and it holds no end of the
gate. A gate that fails, or a service that dies at it, leaves a sandbox that never starts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from claude_hooks.agents import cages, sandbox
from claude_hooks.agents.sandbox import BRIDGE_PORT, Sandbox
from claude_hooks.agents.sandbox_gate import Gate, GateError, Listen
from tests.e2e.test_hostile_agent import pytestmark as needs_bwrap
from tests.support import wait_until

pytestmark = [
    needs_bwrap,
    pytest.mark.skipif(os.geteuid() != 0, reason="the service opens the listener as root"),
]

LIMITS = cages.Caps(64, 512 << 20, 50 << 20, "512M", "50M")

# Its first instruction after the imports: the bridge must be listening already.
AGENT = f"""\
import json, os, resource, socket
first = socket.create_connection(("127.0.0.1", {BRIDGE_PORT}), timeout=5)
first.sendall(b"ping")
answer = first.recv(16).decode()
first.close()
status = {{}}
for line in open("/proc/self/status").read().splitlines():
    key, _, value = line.partition(":")
    status[key] = value.strip()
print(json.dumps({{
    "answer": answer,
    "status": status,
    "cgroup": open("/proc/self/cgroup").read(),
    "fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
    "fds": sorted(os.listdir("/proc/self/fd")),
}}))
"""


@pytest.fixture
def box() -> Sandbox:
    return sandbox.build(sandbox.find_bwrap(), "claude-hooks-agent", []).for_instance("gate")


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"pong:" + await reader.read(16))
    await writer.drain()
    writer.close()


async def start(
    box: Sandbox, workdir: Path, argv: list[str], cage: cages.Cage, listen: Listen | None
) -> tuple[asyncio.subprocess.Process, int]:
    """`argv` in `box`, started through its gate as the command runner does."""
    box.give(workdir)
    gate = Gate.pipes()
    try:
        wrapped = box.wrap(
            argv, workdir, readable=[Path(sys.executable)], cage=cage, gate=gate.args()
        )
        process = await asyncio.create_subprocess_exec(
            *wrapped,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"},
            pass_fds=gate.child_fds,
        )
        gate.spawned()
        try:
            child = await gate.admit(cage, listen)
        except GateError:
            await process.wait()
            raise
    finally:
        gate.close()
    return process, child


async def test_the_agent_starts_caged_as_its_account_with_the_bridge_listening(
    box: Sandbox, tmp_path: Path
) -> None:
    assert box.account is not None and box.listens_inside
    servers: list[asyncio.Server] = []

    async def listen(listener: socket.socket) -> None:
        servers.append(await asyncio.start_server(echo, sock=listener))

    (tmp_path / "agent.py").write_text(AGENT)
    cage = cages.detect().cage("gate-test", LIMITS)
    try:
        process, _ = await start(
            box, tmp_path, [sys.executable, str(tmp_path / "agent.py")], cage, listen
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        for server in servers:
            server.close()
        await cage.close()
    assert process.returncode == 0, err
    seen = json.loads(out)
    assert seen["answer"] == "pong:ping"
    status = seen["status"]
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capabilities], 16) == 0, (capabilities, status[capabilities])
    assert status["NoNewPrivs"] == "1"
    account = box.account
    assert status["Uid"].split() == [str(account.uid)] * 4
    assert status["Gid"].split() == [str(account.gid)] * 4
    assert status["Groups"] == ""
    assert seen["fsize"] == [LIMITS.disk, LIMITS.disk]
    for folder in cage.cgroups.values():
        assert f"/{folder.name}\n" in seen["cgroup"], seen["cgroup"]
    # Standard streams and the listing's own: no end of the gate, no cgroup file.
    assert seen["fds"] == ["0", "1", "2", "3"]


async def test_without_root_the_bridge_listens_inside_and_the_gate_still_cages(
    tmp_path: Path,
) -> None:
    """A service that is not root cannot enter the sandbox's network namespace: the bridge
    program listens there before the agent starts (here as root, with no account)."""
    box = Sandbox(sandbox.find_bwrap() or "bwrap", None)
    assert not box.listens_inside
    socket_path = tmp_path / "egress.sock"
    proxy = await asyncio.start_unix_server(echo, path=str(socket_path))
    (tmp_path / "agent.py").write_text(AGENT)
    cage = cages.detect().cage("gate-bridge", LIMITS)
    gate = Gate.pipes()
    try:
        wrapped = box.wrap(
            [sys.executable, str(tmp_path / "agent.py")],
            tmp_path,
            readable=[Path(sys.executable)],
            cage=cage,
            bridge=socket_path,
            gate=gate.args(),
        )
        process = await asyncio.create_subprocess_exec(
            *wrapped,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"},
            pass_fds=gate.child_fds,
        )
        gate.spawned()
        await gate.admit(cage, None)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        gate.close()
        proxy.close()
        await cage.close()
    assert process.returncode == 0, err
    seen = json.loads(out)
    assert seen["answer"] == "pong:ping"
    assert seen["fsize"] == [LIMITS.disk, LIMITS.disk]
    for folder in cage.cgroups.values():
        assert f"/{folder.name}\n" in seen["cgroup"], seen["cgroup"]


async def test_a_sandbox_the_gate_cannot_cage_never_starts(box: Sandbox, tmp_path: Path) -> None:
    gone = cages.Cage(LIMITS, "cgroup2", {"": tmp_path / "removed-cgroup"})
    marker = tmp_path / "ran"
    with pytest.raises(GateError, match="cannot start the sandbox"):
        await start(box, tmp_path, ["/bin/sh", "-c", f"touch {marker}"], gone, None)
    assert not marker.exists()


SERVICE_THAT_DIES = """\
import os, subprocess, sys
from pathlib import Path
from claude_hooks.agents import sandbox
from claude_hooks.agents.cages import Caps, Confinement
from claude_hooks.agents.sandbox_gate import Gate
box = sandbox.build(sandbox.find_bwrap(), "claude-hooks-agent", []).for_instance("gate")
cage = Confinement("rlimits").cage("dies", Caps(64, 1 << 29, 1 << 29, "512M", "512M"))
gate = Gate.pipes()
argv = box.wrap(["/bin/sh", "-c", "touch " + sys.argv[2]], Path(sys.argv[1]), cage=cage,
                gate=gate.args())
quiet = subprocess.DEVNULL
subprocess.Popen(argv, pass_fds=gate.child_fds, start_new_session=True, stdout=quiet, stderr=quiet)
gate.spawned()
os.set_blocking(gate.info, True)
os.read(gate.info, 4096)  # bwrap told its child's pid: it waits
os._exit(0)  # the service dies before it lets it in
"""


def waiting_at_the_gate(marker: Path) -> list[int]:
    """The processes of the sandbox started to make `marker` (by their command lines)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if str(marker).encode() in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_a_sandbox_whose_service_died_at_the_gate_never_starts(
    box: Sandbox, tmp_path: Path
) -> None:
    box.give(tmp_path)
    marker = tmp_path / "ran"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    service = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVICE_THAT_DIES,
        str(tmp_path),
        str(marker),
        env=env,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(service.communicate(), 30)
    assert service.returncode == 0, err
    try:
        # bwrap's outer process dies with the service; its child keeps waiting at the gate
        # (it would have started the agent at once on a closed pipe).
        await wait_until(lambda: len(waiting_at_the_gate(marker)) == 1, timeout=10)
        await asyncio.sleep(2)
        (child,) = waiting_at_the_gate(marker)
        assert Path(f"/proc/{child}/task/{child}/children").read_text() == ""
        assert not marker.exists()
    finally:
        for pid in waiting_at_the_gate(marker):
            os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: not waiting_at_the_gate(marker), timeout=10)
    assert not marker.exists()


async def test_a_bwrap_that_ends_before_its_sandbox_is_built_fails_the_gate() -> None:
    gate = Gate.pipes()
    try:
        argv = ["bwrap", "--no-such-option", *gate.args(), "--", "/bin/true"]
        process = await asyncio.create_subprocess_exec(
            *argv, stderr=subprocess.DEVNULL, pass_fds=gate.child_fds
        )
        gate.spawned()
        with pytest.raises(GateError, match="bwrap ended before it built the sandbox"):
            await asyncio.wait_for(gate.admit(None, None), 10)
        assert await process.wait() != 0
    finally:
        gate.close()
