"""Caps per run (`Caps`): how many processes, how much memory and disk one run may take.

Each run gets a `Cage`: its own cgroup where the kernel enforces `max_processes` (pids) and
`max_memory` (memory, OOM kills inside the cgroup only), under the service's own cgroup:
- cgroup v2 where the service has a delegated subtree (the systemd unit's `Delegate=yes`):
  the service moves itself into a `service` leaf and puts each run in `agents/<task id>`;
- else cgroup v1's `pids` and `memory` hierarchies where the service may write them (root);
- else rlimits only, and the run's processes are counted and their memory summed from /proc.
  RLIMIT_NPROC counts every process of the run's account: as root, that is one instance's
  (each has an account of its own, `Sandbox.for_instance`), so a fork bomb in one leaves the
  others room to start theirs; without root, the service's user's, shared by every agent.
Disk has no kernel limit in any of these: the workdir (and, for Claude, the session's state)
is measured periodically, and RLIMIT_FSIZE stops one file from outgrowing the limit between
two looks; the sandbox's own /tmp is a tmpfs of at most `max_disk`, charged to its memory.

A process joins its cage before it starts the agent (a sandbox is born in it, `spawning`, or
put in at its latch, `admit`; unsandboxed, a `sh` prefix writes its pid into the cgroups, then
execs), so nothing the agent forks escapes it. At a limit, every process in the cage is killed
and the task ends with the reason ("memory limit 4G reached"); the service, the database and
the other agents are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import secrets
import shutil
import signal
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from claude_hooks.agents import processes
from claude_hooks.agents.run_result import RunResult
from claude_hooks.config import TypeConfig, size_bytes

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.2  # between looks at the cgroup's counters: a few reads of small files
# A disk measure walks the workdir: wait 10 times as long as the last walk took, so measuring
# takes at most a tenth of a core, and at least this long.
DISK_MIN_SECONDS = 0.5
DISK_WALK_SHARE = 10.0
KILL_ROUNDS = 50
CLOSE_SECONDS = 2.0
# A v1 pids cgroup refuses its removal (EBUSY) for a few ms after its last process was reaped,
# in about a run of three here: looked at again after 1 ms, then twice as long up to 20 ms (the
# run's end is on its instance's path to its next task).
CLOSE_FIRST_PAUSE = 0.001
CLOSE_PAUSE = 0.02
LEFTOVER_SECONDS = 60.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
CAGES = "claude-hooks"  # the folder of the run cgroups under the service's own (cgroup v1)
# Writes its pid into each cgroup file named before `--`, then execs what follows.
JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'

Kind = Literal["cgroup2", "cgroup1", "rlimits"]


@dataclass(frozen=True, slots=True)
class Caps:
    """One type's caps, in bytes, with the text they were written as for messages."""

    processes: int
    memory: int
    disk: int
    memory_text: str
    disk_text: str

    @classmethod
    def of(cls, config: TypeConfig) -> Caps:
        return cls(
            processes=config.max_processes,
            memory=size_bytes(config.max_memory),
            disk=size_bytes(config.max_disk),
            memory_text=config.max_memory,
            disk_text=config.max_disk,
        )


def disk_use(paths: Iterable[Path]) -> int:
    """Bytes allocated on disk under `paths` (a sparse file counts what it holds)."""
    total = 0
    pending = [str(p) for p in paths]
    seen: set[tuple[int, int]] = set()
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    stat = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (stat.st_dev, stat.st_ino) in seen:
                    continue  # a hard link counts once
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
    return total


def free_disk(path: Path) -> int:
    return shutil.disk_usage(path).free


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counter(path: Path, key: str) -> int:
    """A `key value` line of a cgroup's events file (pids.events, memory.oom_control)."""
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


class Cage:
    """One run's limits as applied: its cgroups (none with rlimits only), the paths whose disk
    use counts, the agent's first pid (for the /proc count without cgroups)."""

    def __init__(self, limits: Caps, kind: Kind, cgroups: dict[str, Path]) -> None:
        self.limits = limits
        self.kind = kind
        self.cgroups = cgroups  # controller ("pids", "memory"; "" for cgroup v2) -> folder
        self.disk_paths: list[Path] = []
        self.pid: int | None = None
        self.reason: str | None = None
        self.stopped: str | None = None

    def prefix(self) -> list[str]:
        """The argv that starts an unsandboxed program in this cage (a sandbox is put in at its
        latch: `admit`): a shell joins the cgroups and bounds a file's size (`ulimit -f`,
        POSIX's one limit, in 512-byte blocks); without cgroups, util-linux's prlimit sets
        the rlimits."""
        files = [str(folder / "cgroup.procs") for folder in self.cgroups.values()]
        if files:
            blocks = self.limits.disk // 512
            join = f"ulimit -f {blocks} || exit 125; {JOIN}"
            return ["/bin/sh", "-c", join, "sh", *files, "--"]
        rlimits = [f"--fsize={self.limits.disk}"]
        if self.kind == "rlimits":
            rlimits.append(f"--nproc={self.limits.processes}")
        prlimit = shutil.which("prlimit")
        return [prlimit, *rlimits, "--"] if prlimit else []

    def admit(self, pid: int) -> None:
        """Put `pid`, a sandbox waiting at its latch (`sandbox_latch`), in this cage: into its
        cgroups, with its rlimits (the file size; the process count without cgroups); what it
        starts then stays in."""
        self.enclose(pid)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (self.limits.disk, self.limits.disk))
        if self.kind == "rlimits":
            nproc = (self.limits.processes, self.limits.processes)
            resource.prlimit(pid, resource.RLIMIT_NPROC, nproc)

    def join(self) -> list[Path]:
        """Move the calling thread into this cage's cgroups where a thread may move itself
        (cgroup v1's `tasks`, given `0`: no RCU grace period to wait for, as a move by pid
        has); what it forks then is born in the cage (`spawning`). Where one refuses (cgroup
        v2 has no `tasks`), the latch's admission moves the sandbox instead. The cgroups it
        joined, for `leave`."""
        joined = []
        for folder in self.cgroups.values():
            with contextlib.suppress(OSError):
                (folder / "tasks").write_text("0")
                joined.append(folder)
        return joined

    @staticmethod
    def leave(joined: Iterable[Path]) -> bool:
        """Move the calling thread back from the cgroups it `join`ed to the service's own (a
        run's cgroup v1 is `<the service's own>/claude-hooks/<run>`); False if one refused."""
        left = True
        for folder in joined:
            try:
                (folder.parent.parent / "tasks").write_text("0")
            except OSError:
                left = False
        return left

    def holds(self, pid: int) -> bool:
        """Whether `pid` is in every cgroup of this cage already (born in them, `spawning`)."""
        return all(self._holds(folder, pid) for folder in self.cgroups.values())

    @staticmethod
    def _holds(folder: Path, pid: int) -> bool:
        return str(pid) in _read(folder / "cgroup.procs").split()

    def enclose(self, pid: int) -> None:
        """Put `pid` in this cage's cgroups it is not in yet (one born in them is not moved
        again: each move waits for an RCU grace period, 9-18 ms on cgroup v1 here)."""
        for folder in self.cgroups.values():
            if not self._holds(folder, pid):
                (folder / "cgroup.procs").write_text(str(pid))

    # what ended it

    def exceeded(self) -> str | None:
        """The limit the run has reached, by the kernel's counters (or /proc), if any."""
        limits = self.limits
        if self.kind == "cgroup2":
            folder = self.cgroups[""]
            if _counter(folder / "memory.events", "oom_kill"):
                return f"memory limit {limits.memory_text} reached"
            if _counter(folder / "pids.events", "max"):
                return f"process limit {limits.processes} reached"
        elif self.kind == "cgroup1":
            if _counter(self.cgroups["memory"] / "memory.oom_control", "oom_kill"):
                return f"memory limit {limits.memory_text} reached"
            if _counter(self.cgroups["pids"] / "pids.events", "max"):
                return f"process limit {limits.processes} reached"
        elif self.pid is not None:
            inside = [self.pid, *processes.descendants(self.pid)]
            if len(inside) >= limits.processes:
                return f"process limit {limits.processes} reached"
            if sum(_memory(pid) for pid in inside) >= limits.memory:
                return f"memory limit {limits.memory_text} reached"
        return None

    def disk_exceeded(self) -> str | None:
        if self.disk_paths and disk_use(self.disk_paths) >= self.limits.disk:
            return f"disk limit {self.limits.disk_text} reached"
        return None

    def stop(self, reason: str) -> None:
        """End the run for a limit found elsewhere (the egress proxy's budget): `watch` returns
        it at its next look."""
        self.stopped = self.stopped or reason

    async def watch(self) -> str:
        """Returns the first limit the run reaches (it runs until cancelled otherwise)."""
        next_disk = 0.0
        while True:
            reason = self.stopped or self.exceeded()
            if reason is None and time.monotonic() >= next_disk:
                began = time.monotonic()
                reason = await asyncio.to_thread(self.disk_exceeded)
                took = time.monotonic() - began
                next_disk = time.monotonic() + max(DISK_MIN_SECONDS, DISK_WALK_SHARE * took)
            if reason is not None:
                self.reason = reason
                return reason
            await asyncio.sleep(CHECK_SECONDS)

    # ending it

    def members(self) -> list[int]:
        if not self.cgroups:
            return [] if self.pid is None else [self.pid, *processes.descendants(self.pid)]
        found: set[int] = set()
        for folder in self.cgroups.values():
            found.update(int(pid) for pid in _read(folder / "cgroup.procs").split())
        # The service itself, while the thread that starts the sandbox is still in (`join`).
        found.discard(os.getpid())
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL every process of the run (a fork bomb forks while it is killed: a few
        rounds, bounded by its pids limit). A killed process stays listed until it is
        reaped (the egress bridge's forwarder, after every run): the rounds end once every
        one listed has had its signal, rather than reading the cgroups 50 times over."""
        folder = self.cgroups.get("")
        if folder is not None and (folder / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (folder / "cgroup.kill").write_text("1")
            return
        killed: set[int] = set()
        for _ in range(KILL_ROUNDS):
            members = set(self.members()) - killed
            if not members:
                return
            killed |= members
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    async def close(self) -> None:
        """Kill what is left and remove the cgroups (they empty as the killed processes go)."""
        self.kill()
        deadline = time.monotonic() + CLOSE_SECONDS
        for folder in self.cgroups.values():
            pause = CLOSE_FIRST_PAUSE
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() >= deadline:
                        log.warning("cannot remove the agent cgroup %s: %s", folder, exc)
                        break
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, CLOSE_PAUSE)


def _memory(pid: int) -> int:
    """The process's proportional share of memory (PSS): pages shared by forks count once
    over all of them, where RSS would count them in each."""
    for line in _read(Path(f"/proc/{pid}/smaps_rollup")).splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


async def enforce(cage: Cage, run: Coroutine[Any, Any, RunResult]) -> RunResult:
    """`run` with `cage` watched: at a limit, the run's processes are killed and its result is
    a failure with that reason. Cancelling it cancels the run (which stops its agent)."""
    runner = asyncio.ensure_future(run)
    watcher = asyncio.create_task(cage.watch(), name="agent-limits")
    try:
        await asyncio.wait({runner, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not runner.done():
            log.warning("agent process %s: %s; stopping it", cage.pid, watcher.result())
            cage.kill()
        result = await runner
    except BaseException:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        raise
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    reason = cage.reason or cage.stopped or cage.exceeded()
    if reason is None and not result.succeeded:
        # RLIMIT_FSIZE ended it (SIGXFSZ) before a measure saw the file.
        reason = await asyncio.to_thread(cage.disk_exceeded)
    if reason is None:
        return result
    return dataclasses.replace(result, succeeded=False, error=reason)


@dataclass(frozen=True, slots=True)
class Confinement:
    """How this host limits agents, and where their cgroups go: chosen once at start."""

    kind: Kind
    parents: dict[str, Path] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "cgroup2":
            return f"cgroup v2, delegated subtree {self.parents['']}"
        if self.kind == "cgroup1":
            folders = ", ".join(str(p) for p in self.parents.values())
            return f"cgroup v1 (pids, memory) under {folders}"
        missing = "" if shutil.which("prlimit") else "; prlimit (util-linux) not found: no rlimits"
        nproc = (
            "per instance, each its own account"
            if os.geteuid() == 0
            else "all the agents' processes together, not being root"
        )
        return (
            f"no writable cgroup: rlimits only (RLIMIT_NPROC counts {nproc}), processes and "
            f"memory counted from /proc{missing}"
        )

    def cage(self, name: str, limits: Caps) -> Cage:
        """A cage for a run of `name` (a task id), its cgroups made with the limits set: new
        ones for each run, so no count of an earlier attempt's carries over."""
        cgroups: dict[str, Path] = {}
        run = f"{name}-{secrets.token_hex(4)}"
        for controller, parent in self.parents.items():
            folder = parent / run
            folder.mkdir()
            cgroups[controller] = folder
            if controller in ("", "pids"):
                (folder / "pids.max").write_text(str(limits.processes))
            if controller == "":
                (folder / "memory.max").write_text(str(limits.memory))
                with contextlib.suppress(OSError):
                    (folder / "memory.swap.max").write_text("0")
            elif controller == "memory":
                (folder / "memory.limit_in_bytes").write_text(str(limits.memory))
                with contextlib.suppress(OSError):  # only with swap accounting
                    (folder / "memory.memsw.limit_in_bytes").write_text(str(limits.memory))
        return Cage(limits, self.kind, cgroups)


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and "" for its cgroup v2 path."""
    found: dict[str, str] = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


def _cgroup2_mount() -> Path | None:
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        fields = line.split()
        if " - cgroup2 " in line and len(fields) > 4:
            return Path(fields[4])
    return None


def _delegated(own: dict[str, str], prepare: bool) -> Path | None:
    """The folder of the runs' cgroups in the service's cgroup v2 subtree, made ready when
    `prepare`, if it was delegated with the memory and pids controllers (Delegate=yes)."""
    mount = _cgroup2_mount()
    if mount is None or "" not in own:
        return None
    top = mount / own[""].lstrip("/")
    if top.name == "service":
        top = top.parent  # a restarted service already moved itself
    controllers = set(_read(top / "cgroup.controllers").split())
    if not {"memory", "pids"} <= controllers or not os.access(top / "cgroup.procs", os.W_OK):
        return None
    if not prepare:
        return top / "agents"
    try:
        # No process may sit in a cgroup whose controllers are handed to its children (the
        # root cgroup excepted: there, every process of the host would be moved).
        if top != mount:
            leaf = top / "service"
            leaf.mkdir(exist_ok=True)
            for pid in _read(top / "cgroup.procs").split():
                with contextlib.suppress(ProcessLookupError, OSError):
                    (leaf / "cgroup.procs").write_text(pid)
        (top / "cgroup.subtree_control").write_text("+memory +pids")
        agents = top / "agents"
        agents.mkdir(exist_ok=True)
        (agents / "cgroup.subtree_control").write_text("+memory +pids")
    except OSError as exc:
        log.warning("cgroup v2 at %s is not usable for agents' limits: %s", top, exc)
        return None
    return agents


def _cgroup1(own: dict[str, str], prepare: bool) -> dict[str, Path] | None:
    parents: dict[str, Path] = {}
    for controller in ("pids", "memory"):
        if controller not in own:
            return None
        parent = CGROUP_ROOT / controller / own[controller].lstrip("/") / CAGES
        if prepare:
            with contextlib.suppress(OSError):
                parent.mkdir(exist_ok=True)
        writable = parent if parent.exists() or prepare else parent.parent
        if not writable.is_dir() or not os.access(writable, os.W_OK):
            return None
        parents[controller] = parent
    return parents


def _remove_leftovers(parent: Path) -> None:
    """Remove the empty cgroups a service that died left behind. One younger than a minute
    may be another service's run about to join it: it stays."""
    with contextlib.suppress(OSError):
        for folder in parent.iterdir():
            with contextlib.suppress(OSError):
                old = time.time() - folder.stat().st_mtime > LEFTOVER_SECONDS
                if folder.is_dir() and old and not _read(folder / "cgroup.procs").strip():
                    folder.rmdir()


def detect(prepare: bool = True) -> Confinement:
    """cgroup v2 if delegated, else cgroup v1 if writable, else rlimits only; without
    `prepare` (for `doctor`), nothing is created, moved or removed."""
    own = _own_cgroups()
    agents = _delegated(own, prepare)
    parents = {"": agents} if agents is not None else _cgroup1(own, prepare)
    if parents is None:
        return Confinement("rlimits")
    if prepare:
        for parent in parents.values():
            _remove_leftovers(parent)
    return Confinement("cgroup2" if agents is not None else "cgroup1", parents)
