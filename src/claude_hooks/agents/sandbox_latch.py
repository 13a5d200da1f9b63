"""The latch of a sandbox's start: bwrap builds the sandbox, then waits, before the agent's
first instruction, until the service has put it in its run's cage and given it its way out.

bwrap tells the pid of its child, the sandbox's first process (`--info-fd`), and blocks on a pipe
(`--block-fd`) once every namespace and mount is made. Meanwhile the service writes that pid
into the run's cgroups and sets its rlimits (prlimit(2)); when the service is root it also opens
the egress listener itself inside the sandbox's network namespace (a thread of its own enters
it with setns(2), binds 127.0.0.1:`BRIDGE_PORT` and leaves), served from its event loop. Then
it writes one byte, and bwrap execs: so the agent starts in its cage, with the bridge listening,
and no program of ours runs in the sandbox before it (a shell joining the cgroups, `setpriv` and
the bridge's interpreter took ~20 of the ~37 ms of a start). The child's pid is checked against
the network namespace bwrap named, so the pid written into the cgroups is the sandbox's.

The block pipe's write end is also bwrap's `--sync-fd`, which the sandbox's init keeps and the
agent never gets: the pipe never reads as closed, so a service that dies before it releases
the latch leaves a sandbox that never starts (rather than one that starts uncaged); when the
service cannot cage it, it kills the waiting child.

A command runner's bwrap gets the latch as pipes (`pipes`); the claude runner's bwrap is started
by its launcher, outside the service, which opens the latch's FIFOs (`fifos`) by their paths and
puts them at `LAUNCHER_FDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_hooks.agents.processes import readable
from claude_hooks.agents.sandbox import BRIDGE_PORT, SandboxError

if TYPE_CHECKING:
    from claude_hooks.agents.cages import Cage

# What a run does with the egress listener opened in its sandbox: serve it.
Listen = Callable[[socket.socket], Awaitable[None]]

_CLONE_NEWNET = 0x40000000
# Bind 127.0.0.1 before bwrap has brought the sandbox's loopback up (it does so after it has
# told the child's pid); the listener answers once it is up, which is before the block.
_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
_LISTEN_BACKLOG = 64
_READ = 4096
# Where a launcher puts the FIFOs' ends for bwrap (info, block, sync): fixed, so the bwrap
# command line is written before the launcher opens them.
LAUNCHER_FDS = (3, 4, 5)


class LatchError(SandboxError):
    """The sandbox could not be let in (bwrap ended first, or a cgroup refused it)."""


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


async def _listener(child: int) -> socket.socket:
    """A TCP socket listening on 127.0.0.1:`BRIDGE_PORT` in `child`'s network namespace, made in
    a thread of its own that enters it (setns acts on the calling thread only) and then ends:
    no thread that runs anything else of the service ever enters an agent's namespace."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[socket.socket] = loop.create_future()

    def settle(listener: socket.socket | None, failure: BaseException | None) -> None:
        if done.cancelled():
            if listener is not None:
                listener.close()
        elif failure is not None:
            done.set_exception(failure)
        else:
            done.set_result(listener)  # type: ignore[arg-type]

    def inside() -> None:
        listener: socket.socket | None = None
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                target = os.open(f"/proc/{child}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _setns(target)
                    try:
                        # IPPROTO_TCP named: asyncio turns Nagle off only on sockets that
                        # say TCP (40 ms a streamed answer with it on, delayed ACKs).
                        listener = socket.socket(
                            socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
                        )
                        listener.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
                        listener.bind(("127.0.0.1", BRIDGE_PORT))
                        listener.listen(_LISTEN_BACKLOG)
                        listener.setblocking(False)
                    finally:
                        _setns(home)  # if this failed, the thread ends here all the same
                finally:
                    os.close(target)
            finally:
                os.close(home)
        except BaseException as exc:
            if listener is not None:
                listener.close()
            loop.call_soon_threadsafe(settle, None, exc)
            return
        loop.call_soon_threadsafe(settle, listener, None)

    threading.Thread(target=inside, name="sandbox-listener", daemon=True).start()
    try:
        return await done
    except OSError as exc:
        raise LatchError(f"cannot listen in the agent's network namespace: {exc}") from None


class Latch:
    """One run's latch, the service's ends: `info` (bwrap's child pid comes in) and `block`
    (the byte that lets it go). `admit` lets one sandbox in; a run may start several (setup
    commands, a resumed Claude session started again), each through it."""

    def __init__(self, info: int, block: int, child_fds: tuple[int, ...], folder: Path | None):
        self.info = info
        self.block = block
        self.child_fds = child_fds  # the pipes' ends for bwrap (pass_fds), closed once spawned
        self.folder = folder  # the FIFOs' private folder
        self._buffer = b""
        os.set_blocking(info, False)

    @classmethod
    def pipes(cls) -> Latch:
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        sync = os.dup(block_w)
        return cls(info_r, block_w, (info_w, block_r, sync), None)

    @classmethod
    def fifos(cls) -> Latch:
        """The latch as two FIFOs in a private folder (0700, the service's), for a bwrap a
        launcher starts: it opens them by `paths`. The service holds each open for reading
        and writing, so neither reads as closed while it waits, and a launcher's open never
        blocks."""
        folder = Path(tempfile.mkdtemp(prefix="claude-hooks-latch-"))
        for name in ("info", "block"):
            os.mkfifo(folder / name, 0o600)
        info = os.open(folder / "info", os.O_RDWR | os.O_CLOEXEC)
        block = os.open(folder / "block", os.O_RDWR | os.O_CLOEXEC)
        return cls(info, block, (), folder)

    def args(self) -> list[str]:
        """bwrap's options: the pipes' ends, or where a launcher puts the FIFOs' ends."""
        info, block, sync = self.child_fds if self.folder is None else LAUNCHER_FDS
        return ["--info-fd", str(info), "--block-fd", str(block), "--sync-fd", str(sync)]

    def paths(self) -> list[str]:
        assert self.folder is not None
        return [str(self.folder / "info"), str(self.folder / "block")]

    def spawned(self) -> None:
        """bwrap has its ends of the pipes: the service's copies go."""
        for fd in self.child_fds:
            os.close(fd)
        self.child_fds = ()

    async def admit(self, cage: Cage | None, listen: Listen | None) -> int:
        """Wait for a sandbox's child, put it in `cage` (a child born in its cgroups,
        `spawning`, is not moved again), give it the egress listener `listen` serves (None:
        the sandbox bridges itself, or has no way out), and let it start; its pid. On any
        failure the child is killed, so it never starts."""
        document = await self._document()
        child = int(document["child-pid"])
        listening: asyncio.Future[socket.socket] | None = None
        try:
            _check_namespace(child, document)
            if listen is not None:
                listening = asyncio.ensure_future(_listener(child))
            if cage is not None and cage.holds(child):
                cage.admit(child)  # born in its cgroups: only its rlimits to set
            elif cage is not None:
                # In a thread, beside the listener's: a move into a cgroup waits for an RCU
                # grace period (9-18 ms on cgroup v1 here); the loop goes on meanwhile.
                await asyncio.to_thread(cage.admit, child)
            if listening is not None and listen is not None:
                await listen(await listening)
            os.write(self.block, b"1")
        except BaseException as exc:
            if listening is not None:
                listening.cancel()  # a listener made meanwhile is closed as it comes
                await asyncio.gather(listening, return_exceptions=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            if isinstance(exc, OSError):
                raise LatchError(f"cannot start the sandbox: {exc}") from None
            raise
        return child

    async def _document(self) -> dict[str, Any]:
        """bwrap's next info document (one object a start, ending with a lone "}")."""
        while b"}" not in self._buffer:
            await readable(self.info)
            try:
                data = os.read(self.info, _READ)
            except BlockingIOError:
                continue
            if not data:
                raise LatchError("bwrap ended before it built the sandbox (see its message)")
            self._buffer += data
        document, _, self._buffer = self._buffer.partition(b"}")
        try:
            parsed = json.loads(document + b"}")
            int(parsed["child-pid"])
        except (ValueError, TypeError, KeyError):
            raise LatchError(
                f"bwrap's information is not what was expected: {document!r}"
            ) from None
        return dict(parsed)

    def close(self) -> None:
        for fd in (self.info, self.block, *self.child_fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.child_fds = ()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _check_namespace(child: int, document: dict[str, Any]) -> None:
    """`child` is the sandbox's process (its pid was not reused meanwhile): it is in the
    network namespace bwrap named (bwrap before 0.6 names none: nothing to compare)."""
    expected = document.get("net-namespace")
    if expected is None:
        return
    if os.stat(f"/proc/{child}/ns/net").st_ino != int(expected):
        raise LatchError(f"process {child} is not the sandbox bwrap made")
