"""The shipped systemd unit lets the agents' sandbox start: its namespace and system-call
rules (and its user, capabilities and no-new-privileges) are replayed around a real `bwrap`
start, as systemd would apply them, since PID 1 here is not systemd.

systemd turns `SystemCallFilter=` into an allow-list seccomp filter (with @default) and
`RestrictNamespaces=` into a filter on the namespace flags of clone/unshare/setns (clone3:
ENOSYS, so callers fall back to clone); `ProtectHostname=` refuses sethostname; the groups are
expanded by `systemd-analyze syscall-filter`. The old unit's rules must fail the same start.
Docker's masks over /proc are replayed too, for the image's `systempaths=unconfined`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from claude_hooks.agents.sandbox import Sandbox
from tests.cli.test_deploy import ROOT, UNIT

seccomp = pytest.importorskip("pyseccomp", reason="pip install pyseccomp (a dev dependency)")
pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("systemd-analyze") is None or os.geteuid(),
    reason="needs bwrap, systemd-analyze and root (to become the unit's unprivileged user)",
)

NAMESPACES = {
    "mnt": 0x00020000,
    "cgroup": 0x02000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "net": 0x40000000,
}
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
NOBODY = 65534
# Docker's default masks over /proc (moby's oci defaults): files hidden behind /dev/null,
# folders made read-only.
DOCKER_MASKED = ["/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                 "/proc/timer_stats", "/proc/sched_debug"]  # fmt: skip
DOCKER_READ_ONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# The rules of the unit as shipped before: bwrap could not start under them.
OLD_RULES = "RestrictNamespaces=yes\nSystemCallFilter=\nSystemCallFilter=@system-service\n"


def settings(text: str) -> dict[str, list[str]]:
    """The [Service] settings, each key's assignments in order (an empty one resets)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[key] = [*found.get(key, []), value] if value else []
    return found


@cache
def expand(group: str) -> frozenset[str]:
    """A system-call group's names, nested groups expanded."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", group],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        names |= expand(entry) if entry.startswith("@") else {entry}
    return frozenset(names)


def filters(unit: dict[str, list[str]]) -> list[object]:
    """The seccomp filters systemd would load for the unit, in its order."""
    loaded: list[object] = []
    allowed: set[str] = set()
    for value in unit.get("SystemCallFilter", []):
        assert not value.startswith("~"), "a deny-list filter: replay not written for it"
        for item in value.split():
            allowed |= expand(item) if item.startswith("@") else {item}
    if allowed:
        allow = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
        for name in sorted(allowed | expand("@default")):
            try:
                allow.add_rule(seccomp.ALLOW, name)
            except (RuntimeError, ValueError, OSError):
                continue  # not a system call of this architecture
        loaded.append(allow)
    permitted = set(NAMESPACES)
    for value in unit.get("RestrictNamespaces", []):  # yes/no set it; lists add up
        if value in ("yes", "no"):
            permitted = set() if value == "yes" else set(NAMESPACES)
        else:
            assert not value.startswith("~"), "an inverted list: replay not written for it"
            permitted = (permitted if permitted != set(NAMESPACES) else set()) | set(value.split())
    refused = [flag for name, flag in NAMESPACES.items() if name not in permitted]
    deny = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for flag in refused:
        masked = seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag)
        deny.add_rule(seccomp.ERRNO(errno.EPERM), "unshare", masked)
        deny.add_rule(seccomp.ERRNO(errno.EPERM), "clone", masked)
        deny.add_rule(
            seccomp.ERRNO(errno.EPERM), "setns", seccomp.Arg(1, seccomp.MASKED_EQ, flag, flag)
        )
    if refused:
        deny.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    if unit.get("ProtectHostname") == ["yes"]:
        for name in ("sethostname", "setdomainname"):
            deny.add_rule(seccomp.ERRNO(errno.EPERM), name)
    loaded.append(deny)
    return loaded


def as_the_unit(unit: dict[str, list[str]], proc_masks: bool = False) -> Callable[[], None]:
    """Runs in the child before bwrap: what systemd sets up for the service's process.
    `proc_masks`: Docker's masks over /proc instead (what systempaths=unconfined lifts)."""
    libc = ctypes.CDLL(None, use_errno=True)
    built = filters(unit)
    read_only = ["/proc/sys"] if unit.get("ProtectKernelTunables") == ["yes"] else []
    hidden: list[str] = []
    if proc_masks:
        read_only = [p for p in DOCKER_READ_ONLY if os.path.exists(p)]
        hidden = [p for p in DOCKER_MASKED if os.path.isfile(p)]

    def apply() -> None:
        if read_only or hidden:
            # In the service's (container's) own mount namespace, as systemd or Docker lay them.
            assert libc.unshare(NAMESPACES["mnt"]) == 0
            assert libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0
        for path in read_only:
            assert libc.mount(path.encode(), path.encode(), None, MS_BIND, None) == 0
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY
            assert libc.mount(None, path.encode(), None, flags, None) == 0
        for path in hidden:
            assert libc.mount(b"/dev/null", path.encode(), None, MS_BIND, None) == 0
        if unit.get("CapabilityBoundingSet") == []:
            for cap in range(64):
                libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        if unit.get("User"):
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        if unit.get("NoNewPrivileges") == ["yes"]:
            assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
        for loaded in reversed(built):  # the allow-list last: it may not allow seccomp()
            loaded.load()  # type: ignore[attr-defined]

    return apply


def start_sandbox(unit_text: str, proc_masks: bool = False) -> subprocess.CompletedProcess[str]:
    """The agents' sandbox, as the service builds it for an agent, started under the unit."""
    unit = settings(unit_text)
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    with tempfile.TemporaryDirectory(prefix="unit-replay-") as scratch:
        os.chmod(scratch, 0o777)
        argv = Sandbox(bwrap, None).wrap(["/bin/sh", "-c", "echo started"], Path(scratch))
        return subprocess.run(
            argv,
            capture_output=True, text=True, timeout=30, check=False,
            preexec_fn=as_the_unit(unit, proc_masks), env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip


def test_the_sandbox_starts_under_the_shipped_unit() -> None:
    unit = settings(UNIT.read_text())
    assert unit["User"] == ["claude-hooks"] and unit["Delegate"] == ["yes"]
    started = start_sandbox(UNIT.read_text())
    assert (started.returncode, started.stdout) == (0, "started\n"), started.stderr


@pytest.mark.parametrize(
    ("change", "failure"),
    [
        (OLD_RULES, "No permissions to create new namespace"),
        ("RestrictNamespaces=yes\n", "No permissions to create new namespace"),
        ("SystemCallFilter=\nSystemCallFilter=@system-service\n", "Failed to make / slave"),
        ("ProtectHostname=yes\n", "Can't set hostname"),
        ("SystemCallFilter=\nSystemCallFilter=@system-service @mount\n", "Can't set hostname"),
        ("ProtectKernelTunables=yes\n", "Can't mount proc"),
    ],
)
def test_each_rule_the_unit_leaves_out_would_stop_the_sandbox(change: str, failure: str) -> None:
    text = UNIT.read_text().replace("\n[Install]", f"\n{change}\n[Install]")
    started = start_sandbox(text)
    assert started.returncode != 0 and "started" not in started.stdout
    assert failure in started.stderr, started.stderr


def test_in_a_container_the_sandbox_needs_the_proc_masks_lifted() -> None:
    """The image runs the service unprivileged, as the unit does: under Docker's masks over
    /proc the sandbox cannot mount its own (hence `--security-opt systempaths=unconfined`);
    with them lifted it starts. (seccomp and AppArmor: refused as under the old unit.)"""
    container = "[Service]\nUser=claude-hooks\nNoNewPrivileges=yes\n"
    masked = start_sandbox(container, proc_masks=True)
    assert masked.returncode != 0 and "Can't mount proc" in masked.stderr, masked.stderr
    lifted = start_sandbox(container)
    assert (lifted.returncode, lifted.stdout) == (0, "started\n"), lifted.stderr


# The service's start-up probe, in a process of its own: what `serve` refuses with.
PROBE = """
import sys
from claude_hooks.agents.sandbox import Sandbox, SandboxError, probe
try:
    probe(Sandbox(sys.argv[1], None))
except SandboxError as exc:
    sys.exit(str(exc))
"""


def test_in_a_container_a_refused_sandbox_names_the_options_that_lift_it() -> None:
    """Docker's defaults (its seccomp profile refusing new namespaces, its masks over /proc):
    the refusal names the `docker run` options that lift them, not only bwrap's guess that
    the kernel forbids user namespaces."""
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    docker_defaults = settings("[Service]\nRestrictNamespaces=yes\n")
    refused = subprocess.run(
        [sys.executable, "-c", PROBE, bwrap],
        capture_output=True, text=True, timeout=60, check=False,
        preexec_fn=as_the_unit(docker_defaults, proc_masks=True),
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "new namespace" in refused.stderr  # as root: "Creating new namespace failed"
    assert (
        "this process runs under a seccomp filter and masks over /proc, as in a container: "
        "give docker run --security-opt seccomp=unconfined "
        "--security-opt systempaths=unconfined"
    ) in refused.stderr, refused.stderr


def test_doctor_says_a_container_refuses_the_sandbox_where_bubblewrap_is_installed(
    tmp_path: Path,
) -> None:
    """Installed is not enough: under Docker's defaults `doctor` fails the start it tried and
    names the options, where it said `ok` before and `serve` then refused."""
    config = tmp_path / "claude-hooks.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nwebhook_secret = "s"\napi_token = "t"\n'
        '[types.dev]\nrunner = "command"\ncommand = ["true"]\nworkdir = "none"\n'
    )
    argv = [sys.executable, "-m", "claude_hooks", "doctor", "--config", str(config)]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "HOME": str(tmp_path)}
    docker_defaults = as_the_unit(settings("[Service]\nRestrictNamespaces=yes\n"), True)
    confined, free = (
        subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, env=env, preexec_fn=fn
        ).stdout.splitlines()
        for fn in (docker_defaults, None)
    )
    assert "ok    sandbox: bubblewrap" in "\n".join(confined)
    [refused] = [line for line in confined if "sandbox start" in line]
    assert refused.startswith("FAIL  sandbox start: bubblewrap cannot create the sandbox's")
    assert "--security-opt seccomp=unconfined --security-opt systempaths=unconfined" in refused
    assert refused.endswith(
        "serve refuses to start so: lift it, or set sandbox = false for dev to run them unconfined"
    )
    assert "ok    sandbox start: bubblewrap creates the agents' namespaces here" in free
