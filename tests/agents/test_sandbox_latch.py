"""The sandbox's latch: bwrap waits while the service puts it in its cage and opens its egress
listener inside, then the agent starts with nothing of ours run before it. From the agent's
first instruction: the listener answers, it is in its cgroups with its rlimits, it runs as the
instance's account with no capability in any set and no_new_privs, and it holds no end of the
latch. A latch that fails, or a service that dies at it, leaves a sandbox that never starts."""

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
from claude_hooks.agents.sandbox_latch import Latch, LatchError, Listen
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
    return sandbox.build(sandbox.find_bwrap(), "claude-hooks-agent", []).for_instance("latch")


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers `pong:` and what it read; `nagle:` on a TCP connection with Nagle's algorithm
    on (then every streamed answer of the proxy would wait 40 ms on delayed ACKs)."""
    sock = writer.get_extra_info("socket")
    nagle = sock.family == socket.AF_INET and not sock.getsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY
    )
    writer.write((b"nagle:" if nagle else b"pong:") + await reader.read(16))
    await writer.drain()
    writer.close()


async def start(
    box: Sandbox, workdir: Path, argv: list[str], cage: cages.Cage, listen: Listen | None
) -> tuple[asyncio.subprocess.Process, int]:
    """`argv` in `box`, started through its latch as the command runner does."""
    box.give(workdir)
    latch = Latch.pipes()
    try:
        wrapped = box.wrap(
            argv, workdir, readable=[Path(sys.executable)], cage=cage, latch=latch.args()
        )
        process = await asyncio.create_subprocess_exec(
            *wrapped,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"},
            pass_fds=latch.child_fds,
        )
        latch.spawned()
        try:
            child = await latch.admit(cage, listen)
        except LatchError:
            await process.wait()
            raise
    finally:
        latch.close()
    return process, child


async def test_the_agent_starts_caged_as_its_account_with_the_bridge_listening(
    box: Sandbox, tmp_path: Path
) -> None:
    assert box.account is not None and box.listens_inside
    servers: list[asyncio.Server] = []

    async def listen(listener: socket.socket) -> None:
        servers.append(await asyncio.start_server(echo, sock=listener))

    (tmp_path / "agent.py").write_text(AGENT)
    cage = cages.detect().cage("latch-test", LIMITS)
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
    # Standard streams and the listing's own: no end of the latch, no cgroup file.
    assert seen["fds"] == ["0", "1", "2", "3"]


async def test_without_root_the_bridge_listens_inside_and_the_latch_still_cages(
    tmp_path: Path,
) -> None:
    """A service that is not root cannot enter the sandbox's network namespace: the bridge
    program listens there before the agent starts (here as root, with no account)."""
    box = Sandbox(sandbox.find_bwrap() or "bwrap", None)
    assert not box.listens_inside
    socket_path = tmp_path / "egress.sock"
    proxy = await asyncio.start_unix_server(echo, path=str(socket_path))
    (tmp_path / "agent.py").write_text(AGENT)
    cage = cages.detect().cage("latch-bridge", LIMITS)
    latch = Latch.pipes()
    try:
        wrapped = box.wrap(
            [sys.executable, str(tmp_path / "agent.py")],
            tmp_path,
            readable=[Path(sys.executable)],
            cage=cage,
            bridge=socket_path,
            latch=latch.args(),
        )
        process = await asyncio.create_subprocess_exec(
            *wrapped,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"},
            pass_fds=latch.child_fds,
        )
        latch.spawned()
        await latch.admit(cage, None)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        latch.close()
        proxy.close()
        await cage.close()
    assert process.returncode == 0, err
    seen = json.loads(out)
    assert seen["answer"] == "pong:ping"
    assert seen["fsize"] == [LIMITS.disk, LIMITS.disk]
    for folder in cage.cgroups.values():
        assert f"/{folder.name}\n" in seen["cgroup"], seen["cgroup"]


async def test_a_sandbox_the_latch_cannot_cage_never_starts(box: Sandbox, tmp_path: Path) -> None:
    gone = cages.Cage(LIMITS, "cgroup2", {"": tmp_path / "removed-cgroup"})
    marker = tmp_path / "ran"
    with pytest.raises(LatchError, match="cannot start the sandbox"):
        await start(box, tmp_path, ["/bin/sh", "-c", f"touch {marker}"], gone, None)
    assert not marker.exists()


SERVICE_THAT_DIES = """\
import os, subprocess, sys
from pathlib import Path
from claude_hooks.agents import sandbox
from claude_hooks.agents.cages import Caps, Confinement
from claude_hooks.agents.sandbox_latch import Latch
box = sandbox.build(sandbox.find_bwrap(), "claude-hooks-agent", []).for_instance("latch")
cage = Confinement("rlimits").cage("dies", Caps(64, 1 << 29, 1 << 29, "512M", "512M"))
latch = Latch.pipes()
argv = box.wrap(["/bin/sh", "-c", "touch " + sys.argv[2]], Path(sys.argv[1]), cage=cage,
                latch=latch.args())
quiet = subprocess.DEVNULL
subprocess.Popen(argv, pass_fds=latch.child_fds, start_new_session=True, stdout=quiet, stderr=quiet)
latch.spawned()
os.set_blocking(latch.info, True)
os.read(latch.info, 4096)  # bwrap told its child's pid: it waits
os._exit(0)  # the service dies before it lets it in
"""


def waiting_at_the_latch(marker: Path) -> list[int]:
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


async def test_a_sandbox_whose_service_died_at_the_latch_never_starts(
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
        # bwrap's outer process dies with the service; its child keeps waiting at the latch
        # (it would have started the agent at once on a closed pipe).
        await wait_until(lambda: len(waiting_at_the_latch(marker)) == 1, timeout=10)
        await asyncio.sleep(2)
        (child,) = waiting_at_the_latch(marker)
        assert Path(f"/proc/{child}/task/{child}/children").read_text() == ""
        assert not marker.exists()
    finally:
        for pid in waiting_at_the_latch(marker):
            os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: not waiting_at_the_latch(marker), timeout=10)
    assert not marker.exists()


async def test_a_bwrap_that_ends_before_its_sandbox_is_built_fails_the_latch() -> None:
    latch = Latch.pipes()
    try:
        argv = ["bwrap", "--no-such-option", *latch.args(), "--", "/bin/true"]
        process = await asyncio.create_subprocess_exec(
            *argv, stderr=subprocess.DEVNULL, pass_fds=latch.child_fds
        )
        latch.spawned()
        with pytest.raises(LatchError, match="bwrap ended before it built the sandbox"):
            await asyncio.wait_for(latch.admit(None, None), 10)
        assert await process.wait() != 0
    finally:
        latch.close()
