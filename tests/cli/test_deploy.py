"""deploy/: the systemd unit passes systemd's check; the Dockerfile needs only this repository."""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "claude-hooks.service"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
INSTALLED = "/opt/claude-hooks/bin/claude-hooks"


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify checks that ExecStart exists: point it at this checkout's console script.
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} serve" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED, str(Path(sys.executable).parent / "claude-hooks")))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for hardening in ("ProtectSystem=strict", "NoNewPrivileges=yes", "User=claude-hooks"):
        assert f"\n{hardening}\n" in text


def _instructions(path: Path) -> list[list[str]]:
    """The Dockerfile's instructions as argv lists, continuation lines joined."""
    joined = path.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def test_the_dockerfile_builds_from_the_repository_alone() -> None:
    instructions = _instructions(DOCKERFILE)
    assert instructions[0][0] == "FROM"
    assert instructions[0][1].startswith("python:3.11-slim")
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied: list[str] = []
    for argv in instructions:
        if argv[0] in ("COPY", "ADD"):
            assert not any(arg.startswith("--from") for arg in argv), argv
            assert argv[0] == "COPY", "ADD could fetch from outside the repository"
            copied += argv[1:-1]
    assert copied
    for source in copied:
        assert not Path(source).is_absolute() and ".." not in Path(source).parts, source
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not here"
        assert source.rstrip("/") not in ignored, f"{source} is excluded by .dockerignore"
    # `pip install .` needs the project file, the readme it names and the package.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", project["readme"], "src"} <= set(copied)


def test_the_image_and_make_install_the_locked_versions_with_their_hashes() -> None:
    """What ships is what was tested: the locks pin every package with its files' hashes."""
    installs = [
        argv for argv in _instructions(DOCKERFILE) if argv[0] == "RUN" and "install" in argv
    ]
    assert any("--require-hashes" in argv and "requirements/run.lock" in argv for argv in installs)
    makefile = (ROOT / "Makefile").read_text()
    for lock in ("run", "dev"):
        assert f"--require-hashes -r requirements/{lock}.lock" in makefile
        text = (ROOT / "requirements" / f"{lock}.lock").read_text()
        pinned = re.findall(
            r"^([a-z0-9-]+)==\S+ \\\n(?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+",
            text,
            flags=re.MULTILINE,
        )
        assert len(pinned) == len(re.findall(r"^\S+==", text, flags=re.MULTILINE)) > 40
        names = set(pinned)
        assert {"claude-agent-sdk", "fastapi", "sqlalchemy", "psycopg-binary"} <= names
        assert lock == "run" or {"pytest", "pytest-xdist", "pip-tools"} <= names


def _docker_run(text: str) -> list[str]:
    """The documented `docker run -d` command of `text` (a README or the Dockerfile's
    comment: the service's, not a one-off `init`), continuation lines joined, as an argv."""
    joined = re.sub(r"\\\n#?\s*", " ", text)
    line = next(line for line in joined.splitlines() if "docker run -d" in line)
    argv = shlex.split(line.lstrip("# "))
    return argv[argv.index("docker") :]


def test_the_image_has_bubblewrap_and_the_documented_run_gives_it_what_it_needs() -> None:
    installs = [argv for argv in _instructions(DOCKERFILE) if argv[0] == "RUN"]
    assert any("apt-get" in argv and "bubblewrap" in argv for argv in installs)
    documented = _docker_run(DOCKERFILE.read_text())
    assert _docker_run((ROOT / "README.md").read_text()) == documented
    options = set(itertools.pairwise(documented))
    # bwrap's namespaces and mounts, refused by Docker's default seccomp and AppArmor
    # profiles, and its own /proc, refused while Docker's masks lie over the container's.
    for needed in ("seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"):
        assert ("--security-opt", needed) in options, needed
    # `init` writes the configuration 0600 for its user: the service must run as that user.
    assert ("--user", "$(id -u):$(id -g)") in options
    # A stop requeues the running agents' tasks after saving their workdirs: the unit's time.
    stop = re.search(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(), flags=re.MULTILINE)
    assert stop is not None and ("--stop-timeout", stop[1]) in options
    assert ("-v", "$PWD/claude-hooks.toml:/etc/claude-hooks/claude-hooks.toml:ro") in options
    for flag, value in options:
        if flag == "-v" and value.startswith("$PWD/data:"):
            break
    else:
        raise AssertionError("the data dir must be a folder of the same user, not a volume")


def test_the_image_check_runs_the_documented_command() -> None:
    """deploy/check-image.sh (run by hand: it needs Docker) checks the README's command, not
    a cousin of it: the same argv but for the host port and the tag it may be given."""
    script = (ROOT / "deploy" / "check-image.sh").read_text()
    assert script.startswith("#!/bin/sh\n") and "\nset -eu\n" in script
    assert (ROOT / "deploy" / "check-image.sh").stat().st_mode & 0o111
    run = (
        script.replace("container=$(docker run", "docker run")
        .replace('"$port:8080"', "8080:8080")
        .replace('"$image")', "claude-hooks")
    )
    assert _docker_run(run) == _docker_run(DOCKERFILE.read_text())
    assert "docker build -f deploy/Dockerfile -t" in script
