"""Starting an agent's first program born in its cage, and watching it from the event loop.

A process is born in the cgroups of the thread that forks it. Moving a process in later (its
pid written into `cgroup.procs`, as `Cage.admit` does) waits for an RCU grace period: 9-18 ms
on this cgroup v1 host, the longest step of a sandbox's start. A thread that moves itself
(`0` into a v1 cgroup's `tasks`) skips that wait (0.1 ms). So the program is started by a thread
of the service's that joins the run's cgroups (`Cage.join`), forks it there, and moves back
(`Cage.leave`) before it starts anything else: no other thread ever enters a cage. Where a
thread cannot join (cgroup v2, rlimits only), it forks where it is, and the latch's admission
moves the sandbox as before.

asyncio starts its processes only from the event loop's thread, so `Spawned` gives a process
started elsewhere asyncio's view of it: its pipes as streams, its end awaited on a pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

from claude_hooks.agents.cages import Cage
from claude_hooks.agents.processes import readable

# As asyncio's own subprocesses: the most a stream buffers before its reader takes it.
_STREAM_LIMIT = 2**16


class Spawned:
    """A process started by `spawn`, as the event loop sees it: `stdin` and `stdout` when
    they are pipes, and `wait` for its exit code (negative: the signal that killed it)."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        pidfd: int,
        stdin: asyncio.StreamWriter | None,
        stdout: asyncio.StreamReader | None,
        transports: list[asyncio.BaseTransport],
    ) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.stdin = stdin
        self.stdout = stdout
        self._transports = transports  # its pipes' ends on the loop, for `close`
        self._pidfd = pidfd  # reads as ready once the process has ended (Linux 5.3)
        self._ended: asyncio.Future[int] | None = None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    async def wait(self) -> int:
        """Its exit code, once it has ended (it is reaped here, once)."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        if self._ended is None:
            self._ended = asyncio.ensure_future(self._reap())
        return await asyncio.shield(self._ended)

    def close(self) -> None:
        """Close its pipes' ends here (a descendant may hold a pipe open past the process's
        end, and a reader given up on leaves its end open): asyncio's own subprocesses are
        closed with their transport, these by their runner once the run is over (the last
        use of it)."""
        for transport in self._transports:
            if not transport.is_closing():
                transport.close()
        if self._ended is None:  # nobody awaits its end: the pidfd is left to close here
            os.close(self._pidfd)
            if self.popen.poll() is None:  # a run given up on: not left running, nor unreaped
                _discard(self.popen)

    async def _reap(self) -> int:
        await readable(self._pidfd)
        os.close(self._pidfd)
        code = self.popen.poll()  # ended: reaped without waiting
        assert code is not None
        return code


class _Spawner:
    """The one thread that starts the sandboxes, for the service's whole life: a process's
    `--die-with-parent` (PR_SET_PDEATHSIG) fires when the *thread* that forked it ends, so
    that thread must outlive every agent, as the event loop's does. For each start it joins
    the run's cgroups, forks, and moves back to the service's own before the next."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.retired = False
        threading.Thread(target=self._serve, name="agent-spawner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            cage, argv, popen, deliver = self.jobs.get()
            joined = cage.join() if cage is not None else []
            process: subprocess.Popen[bytes] | None = None
            failure: BaseException | None = None
            try:
                # bytes: no text mode is asked for (`popen` is the runner's own).
                process = cast("subprocess.Popen[bytes]", subprocess.Popen(argv, **popen))
            except BaseException as exc:
                failure = exc
            left = not joined or Cage.leave(joined)
            deliver(process, failure)  # out of the cage first: no kill can find the service
            if not left:
                # Still in that cage: what it started next would be born there. It starts
                # nothing more and stays (what it started dies with it); a new one takes over.
                self.retired = True
                with contextlib.suppress(queue.Empty):
                    while True:
                        _current().jobs.put(self.jobs.get_nowait())
                threading.Event().wait()


_Job = tuple["Cage | None", list[str], dict[str, Any], Callable[..., None]]
_spawner: _Spawner | None = None


def _current() -> _Spawner:
    global _spawner
    if _spawner is None or _spawner.retired:
        _spawner = _Spawner()
    return _spawner


async def spawn(argv: Sequence[str], cage: Cage | None, **popen: Any) -> Spawned:
    """`subprocess.Popen(argv, **popen)` from the spawner thread, which first joins `cage`'s
    cgroups where a thread can (`Cage.join`), so the process is born in them; then its pipes
    (`stdin`, `stdout` given as `subprocess.PIPE`) connected to the event loop."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[subprocess.Popen[bytes]] = loop.create_future()

    def settle(process: subprocess.Popen[bytes] | None, failure: BaseException | None) -> None:
        if failure is not None:
            started.set_exception(failure)
        else:
            started.set_result(process)  # type: ignore[arg-type]

    def deliver(process: subprocess.Popen[bytes] | None, failure: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(settle, process, failure)
        except RuntimeError:  # the loop is closed: the service is stopping
            if process is not None:
                _discard(process)

    _current().jobs.put((cage, list(argv), popen, deliver))
    try:
        process = await asyncio.shield(started)
    except asyncio.CancelledError:
        started.add_done_callback(_kill_unclaimed)  # started all the same: nobody's to run
        raise
    try:
        return await _connected(loop, process)
    except BaseException:
        _discard(process)
        raise


def _discard(process: subprocess.Popen[bytes]) -> None:
    """Kill a process nobody will run, close its pipes (nobody will read or close them) and
    reap it from a thread of its own (no one will wait for it; the loop must not)."""
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    threading.Thread(target=process.wait, name="agent-reaper", daemon=True).start()


def _kill_unclaimed(started: asyncio.Future[subprocess.Popen[bytes]]) -> None:
    if not started.cancelled() and started.exception() is None:
        _discard(started.result())


async def _connected(loop: asyncio.AbstractEventLoop, process: subprocess.Popen[bytes]) -> Spawned:
    pidfd = os.pidfd_open(process.pid)
    transports: list[asyncio.BaseTransport] = []
    try:
        stdout = None
        if process.stdout is not None:
            stdout = asyncio.StreamReader(limit=_STREAM_LIMIT)
            reading = asyncio.StreamReaderProtocol(stdout)
            read_end, _ = await loop.connect_read_pipe(lambda: reading, process.stdout)
            transports.append(read_end)
        stdin = None
        if process.stdin is not None:
            # A protocol that drains and closes; what it would read (nothing) goes nowhere.
            writing = asyncio.StreamReaderProtocol(asyncio.StreamReader())
            write_end, _ = await loop.connect_write_pipe(lambda: writing, process.stdin)
            transports.append(write_end)
            stdin = asyncio.StreamWriter(write_end, writing, None, loop)
    except BaseException:
        os.close(pidfd)
        for transport in transports:
            transport.close()
        raise
    return Spawned(process, pidfd, stdin, stdout, transports)
