"""What confines the service's process, read from /proc folders laid out as a container's and
a plain host's are (the real replay, around bwrap: tests/cli/test_unit_sandbox.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_hooks.agents import confinement
from claude_hooks.agents.confinement import APPARMOR, PROC_MASKS, SECCOMP

ROOT_MOUNT = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw"
PROC_MOUNT = "23 22 0:5 / /proc rw,nosuid - proc proc rw"
# What Docker lays over a container's /proc (moby's defaults): /dev/null on files, tmpfs on
# folders, read-only binds.
DOCKER_MASKS = [
    "30 23 0:6 /null /proc/kcore rw,nosuid - devtmpfs udev rw",
    "31 23 0:40 / /proc/acpi ro,relatime - tmpfs tmpfs ro",
    "32 23 0:5 /sys /proc/sys ro,relatime - proc proc rw",
]
# systemd mounts this under /proc/sys on most hosts: it hides nothing.
BINFMT = "40 32 0:41 / /proc/sys/fs/binfmt_misc rw,relatime - binfmt_misc binfmt_misc rw"


def proc_folder(
    tmp_path: Path, seccomp: str, mounts: list[str], apparmor: str | None = None
) -> Path:
    proc = tmp_path / "proc"
    (proc / "attr").mkdir(parents=True)
    (proc / "status").write_text(f"Name:\tclaude-hooks\nSeccomp:\t{seccomp}\nSeccomp_filters:\t1\n")
    (proc / "mountinfo").write_text("\n".join(mounts) + "\n")
    if apparmor is not None:
        (proc / "attr" / "current").write_text(apparmor + "\n")
    return proc


def test_a_docker_container_with_its_defaults_has_all_three(tmp_path: Path) -> None:
    proc = proc_folder(
        tmp_path, "2", [ROOT_MOUNT, PROC_MOUNT, *DOCKER_MASKS], "docker-default (enforce)"
    )
    assert confinement.found(proc) == [SECCOMP, APPARMOR, PROC_MASKS]
    assert confinement.hint(proc) == (
        "this process runs under a seccomp filter and an AppArmor profile and masks over "
        "/proc, as in a container: give docker run --security-opt seccomp=unconfined "
        "--security-opt apparmor=unconfined --security-opt systempaths=unconfined "
        "(README: Running it as a service; Kubernetes: deploy/kubernetes/deployment.yaml)"
    )


def test_a_plain_host_has_none_and_gets_no_hint(tmp_path: Path) -> None:
    proc = proc_folder(tmp_path, "0", [ROOT_MOUNT, PROC_MOUNT, BINFMT], "unconfined")
    assert confinement.found(proc) == []
    assert confinement.hint(proc) == ""


@pytest.mark.parametrize(
    ("label", "enforced"),
    [
        ("docker-default (enforce)", True),
        ("cri-containerd.apparmor.d (enforce)", True),
        ("some-profile (complain)", False),  # logs, refuses nothing
        ("unconfined", False),
        ("system_u:system_r:container_t:s0:c1,c2", False),  # SELinux's label, not AppArmor's
    ],
)
def test_only_an_enforced_apparmor_profile_counts(
    tmp_path: Path, label: str, enforced: bool
) -> None:
    proc = proc_folder(tmp_path, "0", [ROOT_MOUNT, PROC_MOUNT], label)
    assert (APPARMOR in confinement.found(proc)) is enforced


def test_apparmor_s_own_attribute_folder_is_read_first(tmp_path: Path) -> None:
    proc = proc_folder(tmp_path, "0", [ROOT_MOUNT], "system_u:system_r:container_t:s0")
    (proc / "attr" / "apparmor").mkdir()
    (proc / "attr" / "apparmor" / "current").write_text("docker-default (enforce)\n")
    assert confinement.found(proc) == [APPARMOR]


def test_unreadable_files_mean_nothing_found(tmp_path: Path) -> None:
    assert confinement.found(tmp_path / "no-such-proc") == []
