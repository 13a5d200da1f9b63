"""What confines the service's own process and can keep bubblewrap from starting.

A container runtime confines its processes three ways by default, and each stops the agents'
sandbox: Docker's seccomp profile refuses new namespaces, its AppArmor profile refuses mount(),
and the kernel refuses a new /proc in a user namespace while parts of the container's are
masked. bwrap then blames the kernel ("does not allow non-privileged user namespaces"), so when
the sandbox's probe fails the service names what it found here and the option that lifts each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC_SELF = Path("/proc/self")
_SECCOMP_FILTER = "2"  # /proc/self/status `Seccomp:`: 0 none, 1 strict, 2 a filter
_ENFORCED = (" (enforce)", " (kill)")  # AppArmor's modes that refuse


@dataclass(frozen=True, slots=True)
class Confinement:
    """One kind found: what it is, and the `docker run` option that lifts it."""

    what: str
    docker_option: str


SECCOMP = Confinement("a seccomp filter", "--security-opt seccomp=unconfined")
APPARMOR = Confinement("an AppArmor profile", "--security-opt apparmor=unconfined")
PROC_MASKS = Confinement("masks over /proc", "--security-opt systempaths=unconfined")


def found(proc: Path = PROC_SELF) -> list[Confinement]:
    """The confinements of the process whose /proc folder is `proc`, in the order above."""
    kinds = []
    if _read(proc / "status", "Seccomp:") == _SECCOMP_FILTER:
        kinds.append(SECCOMP)
    if _apparmor_enforced(proc):
        kinds.append(APPARMOR)
    if _masks_over_proc(proc):
        kinds.append(PROC_MASKS)
    return kinds


def hint(proc: Path = PROC_SELF) -> str:
    """One clause for the probe's error naming each confinement found, or "" if none."""
    kinds = found(proc)
    if not kinds:
        return ""
    return (
        f"this process runs under {' and '.join(kind.what for kind in kinds)}, as in a "
        f"container: give docker run {' '.join(kind.docker_option for kind in kinds)} "
        "(README: Running it as a service; Kubernetes: deploy/kubernetes/deployment.yaml)"
    )


def _read(path: Path, key: str) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        if line.startswith(key):
            return line[len(key) :].strip()
    return ""


def _apparmor_enforced(proc: Path) -> bool:
    """Whether an AppArmor profile is enforced ("docker-default (enforce)"); the old
    `attr/current` may hold another module's label (SELinux), which never ends so."""
    for path in (proc / "attr" / "apparmor" / "current", proc / "attr" / "current"):
        try:
            label = path.read_text().strip("\0\n ")
        except OSError:
            continue
        if label.endswith(_ENFORCED):
            return True
    return False


def _masks_over_proc(proc: Path) -> bool:
    """Whether something is mounted over a part of /proc (a runtime's masks and read-only
    binds); binfmt_misc, which systemd hosts mount under /proc/sys, hides nothing."""
    try:
        lines = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        mount, _, source = line.partition(" - ")
        fields, fs_type = mount.split(), source.split()[:1]
        point = fields[4] if len(fields) > 4 else ""
        if point.startswith("/proc/") and fs_type not in (["binfmt_misc"], ["autofs"]):
            return True
    return False
