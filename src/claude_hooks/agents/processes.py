"""Agent processes: identify them across a service crash, wait on their descriptors, and stop
their whole process group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path


def dies_with_service(argv: list[str]) -> list[str]:
    """`argv` run so that the kernel kills it when the service dies (PR_SET_PDEATHSIG through
    util-linux's `setpriv`): an agent never outlives its node, even after a SIGKILL."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


async def readable(fd: int) -> None:
    """Until `fd` reads as ready (a pipe with data or closed, a pidfd whose process ended),
    on the event loop: no thread waits."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, ready.set_result, None)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone.

    Stored with the pid so that recovery never signals an unrelated process that reused it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def alive(pid: int, pid_start: int | None) -> bool:
    current = start_time(pid)
    return current is not None and (pid_start is None or current == pid_start)


def _signal_group(pid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def kill_group(pid: int) -> None:
    """SIGKILL what is left of a process group whose leader has exited (a grandchild that
    stayed behind); the sandbox's PID namespace also ends those that left the group."""
    _signal_group(pid, signal.SIGKILL)


async def stop_group(pid: int, grace: float, exited: asyncio.Event | None = None) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL it after `grace` seconds.

    `exited` is set by the caller when it has reaped the leader; without one, /proc is polled.
    """
    if not _signal_group(pid, signal.SIGTERM):
        return
    if exited is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exited.wait(), grace)
    else:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Not our child (its parent was a service that died): nothing to wait on but /proc.
        while start_time(pid) is not None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)


def children(pid: int) -> list[int]:
    found: list[int] = []
    # The process, or one of its threads, may end while it is read: what is left counts.
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                found += [int(child) for child in Path(task.path, "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents first (one look at /proc: a racing fork may escape
    it, but not the PID namespace that `stop_sandbox` ends)."""
    found: list[int] = []
    pending = children(pid)
    while pending:
        current = pending.pop(0)
        found.append(current)
        pending += children(current)
    return found


async def stop_sandbox(pid: int, grace: float, exited: asyncio.Event) -> None:
    """Stop a sandbox whose bwrap is `pid`: SIGTERM every process inside it, so agents can
    stop cleanly, then SIGKILL bwrap after `grace` seconds: its PID namespace ends with it.

    bwrap forwards no signal, and SIGTERM to bwrap itself would kill the sandbox at once;
    its first child is the namespace's init, which is left alone.
    """
    for init in children(pid):
        for inner in descendants(init):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(inner, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(exited.wait(), grace)
    _signal_group(pid, signal.SIGKILL)


async def stop_stale(pid: int, pid_start: int | None, grace: float) -> bool:
    """Stop an agent process a crashed service left behind; False if it was already gone."""
    if not alive(pid, pid_start):
        return False
    await stop_group(pid, grace)
    return True
