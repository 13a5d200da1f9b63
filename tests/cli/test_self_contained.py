"""The repository stands on its own: a copy with nothing beside it collects every test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def repository_files() -> list[str]:
    """Tracked files plus new ones git does not ignore: what a clone of this change holds."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def test_a_lone_copy_collects_every_test(tmp_path: Path) -> None:
    alone = tmp_path / "deep" / "clone"
    for name in repository_files():
        target = alone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    here = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    there = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=alone,
        capture_output=True,
        text=True,
    )
    assert there.returncode == 0, there.stdout[-3000:] + there.stderr[-3000:]
    ids = [line for line in there.stdout.splitlines() if "::" in line]
    assert len(ids) > 100
    assert ids == [line for line in here.stdout.splitlines() if "::" in line]


def test_no_file_reads_outside_the_repository() -> None:
    beside = "shared"  # the folder of reference material that sits beside a checkout
    needles = (f"../{beside}", f'"{beside}"', "parents[3]")  # tests sit two folders deep
    offenders = [
        name
        for name in repository_files()
        if name.endswith((".py", ".toml", ".cfg", ".ini")) or name in ("Makefile", ".ci/run")
        if name != "tests/cli/test_self_contained.py"
        and any(needle in (ROOT / name).read_text(errors="replace") for needle in needles)
    ]
    assert offenders == []
