"""The agents' sandbox: every agent process runs inside bubblewrap (`bwrap`).

An agent reads text written by strangers and runs tools, so it is treated as hostile. In its
sandbox it has its own mount, PID, IPC, UTS and network namespaces; it sees the system
read-only, its own workdir (and state dir) read-write, a fresh `/tmp`, and nothing of the data
dir, the config's folder, the database's folder, `/root`, `/home` or `/run` (the database's
socket). Its network is its own loopback: it reaches the outside only through the service's
egress proxy (`claude_hooks.agents.egress`), whose Unix socket is bound into the sandbox and
served on 127.0.0.1:`BRIDGE_PORT` there: by the service itself, which opens the listener in the
sandbox's network namespace while bwrap waits at its latch (`sandbox_latch`), or, when the service
is not root, by `egress_bridge.py`, the sandbox's first program. Its `/proc` shows only its own
processes. When the service runs as root, each instance's agents
run as an unprivileged account of that instance's own (`<server.sandbox_user>-<instance>`,
created at need) with no capabilities, dropped by `setpriv` inside the sandbox (bwrap itself
stays privileged so it can bind paths the account cannot reach). One account per instance is
the floor under the namespaces: `RLIMIT_NPROC` counts one instance's processes, not every
agent's, and an agent that got out of its namespaces still could not signal another
instance's processes nor enter its workdirs (each the account's, 0700).

Every process it starts dies with the sandbox's first process (the PID namespace), and the
sandbox dies with the service (`--die-with-parent`). The environment is passed in bwrap's
own environment, not its argv, so no secret shows in a process list.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from claude_hooks.agents import confinement
from claude_hooks.errors import ClaudeHooksError

if TYPE_CHECKING:
    from claude_hooks.agents.cages import Cage

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 15.0
INSTALL_HINT = "install it (Debian: apt-get install bubblewrap)"
# Always hidden behind an empty tmpfs, besides the service's own folders.
_PRIVATE_DIRS = (Path("/root"), Path("/home"), Path("/run"))
# Where the egress proxy's socket appears inside, and the port its bridge listens on there.
BRIDGE_SOCKET = Path("/run/claude-hooks/egress.sock")
BRIDGE_PORT = 3128
BRIDGE_SCRIPT = Path(__file__).with_name("egress_bridge.py")
_SCRATCH_DIRS = (Path("/tmp"), Path("/var/tmp"))  # empty and writable by all, as usual
MAX_ACCOUNT_NAME = 32  # useradd's limit
_DIGEST = 8


class SandboxError(ClaudeHooksError):
    """The sandbox cannot be built (bwrap missing, namespaces refused, no account)."""


@dataclass(frozen=True, slots=True)
class Account:
    """The unprivileged account sandboxed agents run as when the service runs as root."""

    name: str
    uid: int
    gid: int


def account_name(prefix: str, instance: str) -> str:
    """The account of one instance: `<prefix>-<instance>`; past useradd's 32 characters, the
    instance's name cut short and 8 hex digits of its hash, so two instances never share one."""
    name = f"{prefix}-{instance}"
    if len(name) <= MAX_ACCOUNT_NAME:
        return name
    digest = hashlib.sha256(instance.encode()).hexdigest()[:_DIGEST]
    room = MAX_ACCOUNT_NAME - len(prefix) - _DIGEST - 2
    if room <= 0:
        return f"{prefix[: MAX_ACCOUNT_NAME - _DIGEST - 1]}-{digest}"
    return f"{prefix}-{instance[:room].rstrip('-._')}-{digest}"


def agent_account(name: str) -> Account | None:
    """The account `name`, created if missing: None when the service is not root (agents run
    as its user, which cannot reach the service's files through the sandbox's mounts)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        _create_account(name)
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise SandboxError(f"server.sandbox_user {name!r} is root: name an unprivileged account")
    return Account(name, entry.pw_uid, entry.pw_gid)


def _create_account(name: str) -> None:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home", "--home-dir",
             "/nonexistent", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True, timeout=PROBE_TIMEOUT,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return  # another service on this host made it meanwhile
        detail = getattr(exc, "stderr", b"") or b""
        raise SandboxError(
            f"cannot create the sandbox account {name!r} ({detail.decode().strip() or exc}): "
            "create it yourself (useradd --system NAME) or set server.sandbox_user"
        ) from None
    log.info("created the system account %r for sandboxed agents", name)


@dataclass(frozen=True, slots=True)
class Sandbox:
    """Builds the bwrap command line of one agent process, run as `account`.

    `prefix`: what the instances' account names start with (`for_instance`). `hidden`:
    folders the agent must not see (data dir, the config's and the database's folders); each
    becomes an empty tmpfs, and the paths bound later are re-created inside.
    """

    bwrap: str
    account: Account | None
    prefix: str = "claude-hooks-agent"
    hidden: tuple[Path, ...] = ()
    setpriv: str = "setpriv"
    # bwrap 0.5 and later bound a tmpfs's size (`--size`); with an older one /tmp is bounded
    # by the agent's memory limit only.
    sized_tmpfs: bool = True
    # Instance -> its sandbox, its account looked up (and created) at its first run: later
    # runs start without the passwd lookup and the thread it takes (shared by every copy).
    _instances: dict[str, Sandbox] = field(default_factory=dict, compare=False, repr=False)
    _masks: tuple[Path, ...] = field(init=False)

    def __post_init__(self) -> None:
        masks = {
            p.resolve()
            for p in (*_PRIVATE_DIRS, *_SCRATCH_DIRS, *self.hidden)
            if p.resolve() != Path("/")
        }
        object.__setattr__(self, "_masks", tuple(sorted(masks, key=lambda p: len(p.parts))))

    def for_instance(self, instance: str) -> Sandbox:
        """This sandbox run as `instance`'s own account (created at its first run; blocking:
        call it off the event loop). Without root, the service's user for every instance."""
        known = self.known_for(instance)
        if known is not None:
            return known
        account = agent_account(account_name(self.prefix, instance))
        made = self._instances[instance] = dataclasses.replace(self, account=account)
        return made

    def known_for(self, instance: str) -> Sandbox | None:
        """`for_instance` when it needs no lookup (no root, or the instance ran before), else
        None: it does not block, so the event loop calls it before handing the lookup to a
        thread."""
        if self.account is None:
            return self
        return self._instances.get(instance)

    @property
    def listens_inside(self) -> bool:
        """Whether the service opens the egress listener in the sandbox's network namespace
        itself (`sandbox_latch`: it takes root to enter it); else `egress_bridge.py` runs first
        in the sandbox and listens there."""
        return self.account is not None

    def wrap(
        self,
        argv: Sequence[str],
        workdir: Path,
        writable: Iterable[Path] = (),
        readable: Iterable[Path] = (),
        cage: Cage | None = None,
        bridge: Path | None = None,
        latch: Sequence[str] = (),
    ) -> list[str]:
        """`argv` run in `workdir` inside the sandbox; `writable` paths (the workdir among
        them) are bound read-write, `readable` ones read-only (an agent's own script). In a
        `cage`, each tmpfs holds at most `max_disk`. `latch`: bwrap's options of the run's latch
        (`sandbox_latch.Latch`), where the service puts the sandbox in its cage and, when it
        `listens_inside`, gives it its egress listener before the agent starts. `bridge`: the
        egress proxy's socket for this run, otherwise bound in and served on
        127.0.0.1:`BRIDGE_PORT` inside by `egress_bridge.py`; without either the sandbox has
        no way out at all."""
        if cage is not None and not latch:
            raise SandboxError("a caged sandbox starts through its latch: pass its options")
        readable = list(readable)
        if bridge is not None and not self.listens_inside:
            # The base interpreter, not a venv's link to it: with -I -S the bridge needs no
            # venv, and one under a hidden folder would not be in the sandbox.
            python = Path(sys.executable).resolve()
            argv = [
                str(python), "-I", "-S", str(BRIDGE_SCRIPT),
                str(BRIDGE_SOCKET), str(BRIDGE_PORT), "--", *argv,
            ]  # fmt: skip
            readable += [python, BRIDGE_SCRIPT]
        else:
            bridge = None
        args = [
            self.bwrap,
            *latch,
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
            "--hostname", "sandbox",
            "--die-with-parent", "--new-session",
        ]  # fmt: skip
        size = ["--size", str(cage.limits.disk)] if cage is not None and self.sized_tmpfs else []
        for mask in self._masks:
            mode = "1777" if mask in _SCRATCH_DIRS else "0755"
            args += ["--perms", mode, *size, "--tmpfs", str(mask)]
        made: set[Path] = set()
        needed = {need for p in readable if p.exists() for need in self._installation(p)}
        binds = [("--ro-bind", p) for p in sorted(needed, key=lambda p: len(p.parts))]
        binds += [("--bind", p.resolve()) for p in (workdir, *writable)]
        for flag, path in binds:
            args += self._parents(path, made)
            args += [flag, str(path), str(path)]
        if bridge is not None:
            args += ["--dir", str(BRIDGE_SOCKET.parent), "--bind", str(bridge), str(BRIDGE_SOCKET)]
        args += ["--chdir", str(workdir.resolve())]
        if self.account is not None:
            args += [
                "--", self.setpriv,
                f"--reuid={self.account.uid}", f"--regid={self.account.gid}",
                "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
            ]  # fmt: skip
        return [*args, "--", *argv]

    def _installation(self, path: Path) -> set[Path]:
        """What must be bound for `path` to run where a mask hides it: itself and what it links
        to. A program in a `bin/` folder brings its whole installation (`…/bin/..`: libraries,
        links between its names), nothing else there: an interpreter under /root (pyenv), or
        a virtualenv in a clone under /tmp or /home with the base installation its pyvenv.cfg
        names (a venv made with --copies has no link to it)."""
        named = Path(os.path.abspath(path))
        needed: set[Path] = set()
        for program in (named, path.resolve()):
            if not any(mask in program.parents for mask in self._masks):
                continue  # visible as it is
            if program.parent.name != "bin":
                needed.add(program)
                continue
            installation = program.parent.parent
            needed.add(installation)
            home = _venv_home(installation / "pyvenv.cfg")
            base = home.resolve() if home is not None and home.is_dir() else None
            if base is not None and any(mask in base.parents for mask in self._masks):
                needed.add(base.parent if base.name == "bin" else base)
        return needed

    def _parents(self, path: Path, made: set[Path]) -> list[str]:
        """Traversable folders (0755) down to `path` inside the masks that cover it."""
        args: list[str] = []
        for mask in self._masks:
            if mask not in path.parents:
                continue
            for parent in reversed(path.parents):
                if mask in parent.parents and parent not in made:
                    made.add(parent)
                    args += ["--perms", "0755", "--dir", str(parent)]
        return args

    def give(self, *paths: Path) -> None:
        """Make `paths` (recursively) the agent account's, so it can write them, and each
        folder among them 0700, so no other instance's account may enter it. A tree whose top
        is the account's already is not walked again: only the service's fresh clones and
        folders, and workdirs another instance last ran in, need it; no agent process runs
        while its own workdir is given."""
        if self.account is None:
            return
        for path in paths:
            if not path.exists():
                continue
            if path.stat().st_uid != self.account.uid:
                _chown_tree(path, self.account.uid, self.account.gid)
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o700)


def _venv_home(config: Path) -> Path | None:
    """The `home` a virtualenv's pyvenv.cfg names (its base interpreter's folder), if any."""
    try:
        lines = config.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            return Path(value.strip())
    return None


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    if not root.exists():
        return
    os.chown(root, uid, gid, follow_symlinks=False)
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def probe(sandbox: Sandbox) -> None:
    """Run `true` in a sandbox like the agents'; SandboxError with the reason if it fails."""
    try:
        with tempfile.TemporaryDirectory(prefix="claude-hooks-probe-") as scratch:
            done = subprocess.run(
                sandbox.wrap(["true"], Path(scratch)),
                capture_output=True,
                timeout=PROBE_TIMEOUT,
                env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
            )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"bubblewrap cannot run: {exc}") from None
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        cause = confinement.hint()
        raise SandboxError(
            "bubblewrap cannot create the sandbox's namespaces"
            + (f" ({reason[-1]})" if reason else f" (exit {done.returncode})")
            + (f"; {cause}" if cause else "")
        )


def _knows_size(bwrap: str) -> bool:
    try:
        done = subprocess.run(
            [bwrap, "--help"], capture_output=True, text=True, timeout=PROBE_TIMEOUT
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "--size" in done.stdout + done.stderr


def build(bwrap: str | None, prefix: str, hidden: Iterable[Path]) -> Sandbox:
    """The service's sandbox, probed as the account `prefix` (each instance's agents then run
    as their own, `for_instance`); SandboxError says what is missing."""
    if bwrap is None:
        raise SandboxError(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
    account = agent_account(prefix)
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    sandbox = Sandbox(bwrap, account, prefix, tuple(hidden), setpriv, _knows_size(bwrap))
    probe(sandbox)
    return sandbox
