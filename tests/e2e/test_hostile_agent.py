"""A hostile `command` agent (tests/hostile_agent.py) tries every attack of issue 10's items
1-6 and issue 19's network ones against a service run as on these machines (as root, SQLite, a
config file with every secret): each attempt fails, the service stays healthy and the other
type's work is untouched; only the host on its type's egress list answers, through the proxy.
Issue 19's forge items too: a fork's PR named like the session's branch is never the agent's,
and a hostile result file gets a refusal per request while the branch is still pushed.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_hooks.agents.workspace import branch_name
from claude_hooks.config import load_config
from claude_hooks.core.domain import DispatchRequest, Task, TaskKind, TaskState
from claude_hooks.service.runtime import Service
from claude_hooks.web.app import create_app
from tests.agents.test_command_runner import finished
from tests.agents.test_workspace import Forge, git
from tests.conftest import ServiceFactory
from tests.fake_forgejo import FakeForgejo
from tests.messages_standin import MessagesStandin, text, tool_use
from tests.support import wait_until
from tests.web.test_forge_flows import forge_config

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="bubblewrap (bwrap) is not installed here: apt-get install bubblewrap "
    "(.ci/run installs it, so CI runs these tests)",
)

HOSTILE = Path(__file__).parents[1] / "hostile_agent.py"
WEBHOOK_SECRET = "hostile-webhook-secret-7a1"
API_TOKEN = "hostile-api-token-7a2"
DEV_TOKEN = "hostile-dev-forge-token-7a3"
REVIEWER_TOKEN = "hostile-reviewer-forge-token-7a4"
ADMIN_TOKEN = "hostile-admin-forge-token-7a5"
ANTHROPIC_KEY = "sk-ant-hostile-7a6"
SECRETS = (WEBHOOK_SECRET, API_TOKEN, DEV_TOKEN, REVIEWER_TOKEN, ADMIN_TOKEN, ANTHROPIC_KEY)
LOG_LIMIT = 1024 * 1024

# The other type: keeps a secret in its workdir and notes the title of every task it gets.
REVIEWER = (
    "import json, os, sys\n"
    "task = json.load(sys.stdin)\n"
    "open('secret.txt', 'w').write('the reviewer\\'s notes\\n')\n"
    "open('seen.txt', 'a').write(task['payload']['title'] + '\\n')\n"
    "print(sorted(os.listdir('.')))\n"
)


class TokenTrap(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that records every request sent to it."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        trap = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                trap.requests.append(f"{self.path} {self.headers}")
                self.send_response(404)
                self.end_headers()

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class AllowedHost(http.server.ThreadingHTTPServer):
    """A host on the dev type's egress list: answers every GET with a greeting."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"hello from the allowed host, {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


def serving(server: http.server.ThreadingHTTPServer) -> Iterator[Any]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def trap() -> Iterator[TokenTrap]:
    yield from serving(TokenTrap())


@pytest.fixture
def allowed() -> Iterator[AllowedHost]:
    yield from serving(AllowedHost())


def write_config(tmp_path: Path, forge: Forge, egress: list[str] | None = None) -> Path:
    reviewer = tmp_path / "agents" / "reviewer.py"
    reviewer.parent.mkdir()
    reviewer.write_text(REVIEWER)
    path = tmp_path / "etc" / "claude-hooks.toml"
    path.parent.mkdir()
    path.write_text(
        f"""
[server]
data_dir = "{tmp_path / "data"}"
webhook_secret = "{WEBHOOK_SECRET}"
api_token = "{API_TOKEN}"
cancel_grace = 2.0
poll_interval = 0.05
max_log_bytes = {LOG_LIMIT}

[forgejo]
clone_url = "file://{forge.root}"

[types.dev]
login = "dev-bot"
token = "{DEV_TOKEN}"
runner = "command"
command = ["{sys.executable}", "{HOSTILE}"]
comments = false
egress = {json.dumps(egress or [])}

[types.reviewer]
login = "reviewer-bot"
token = "{REVIEWER_TOKEN}"
runner = "command"
command = ["{sys.executable}", "{reviewer}"]
comments = false

[[agents]]
name = "dev-alpha"
type = "dev"

[[agents]]
name = "reviewer-1"
type = "reviewer"
"""
    )
    return path


async def run_task(
    service: Service, agent_type: str, kind: TaskKind, payload: dict[str, Any]
) -> Task:
    request = DispatchRequest.for_type(agent_type, kind, "acme/widget", 17, payload)
    task_id = await service.pool.dispatch_by_type(agent_type, request)
    return await finished(service, task_id, timeout=90)


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def sudo_git(path: Path, *args: str) -> str:
    """git as the test's root in a workdir that belongs to the agents' account."""
    return git("-c", "safe.directory=*", *args, cwd=path)


async def test_a_hostile_agent_reaches_nothing_of_the_service_or_the_other_types(
    start_service: ServiceFactory,
    tmp_path: Path,
    trap: TokenTrap,
    allowed: AllowedHost,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("CLAUDE_HOOKS_FORGEJO__TOKEN", ADMIN_TOKEN)
    forge = Forge(tmp_path / "forge")
    forge_repo = forge.create()
    main_before = git("rev-parse", "refs/heads/main", cwd=forge_repo)
    config_path = write_config(tmp_path, forge, [f"127.0.0.1:{allowed.server_address[1]}"])
    config_text = config_path.read_bytes()
    service: Service = await start_service(load_config(config_path))
    data_dir = service.config.data_dir.resolve()

    # The other type works first: its workdir holds its notes.
    review = await run_task(service, "reviewer", TaskKind.REVIEW_PR, {"title": "First review"})
    assert review.state is TaskState.SUCCEEDED, review.error
    reviewer_dir = service.pool.workspaces.workdir("reviewer:acme/widget:17")
    assert (reviewer_dir / "secret.txt").is_file()

    hook_marker = tmp_path / "hook-ran"
    daemon_marker = f"hostile-daemon-{uuid.uuid4()}"
    target = {
        "service_pid": os.getpid(),
        "data_dir": str(data_dir),
        "config": str(config_path),
        "database": str(data_dir / "claude-hooks.db"),
        "other_workdir": str(reviewer_dir),
        "mirror": str(service.pool.workspaces.mirror("acme/widget")),
        "clone_url": f"file://{forge.root}/acme/widget.git",
        "attacker_url": trap.url,
        "service_port": trap.server_address[1],  # a port on the host's loopback
        "allowed_url": f"{allowed.url}listed",
        "hook_marker": str(hook_marker),
        "daemon_marker": daemon_marker,
        "log_megabytes": 300,
    }
    attack = await run_task(
        service, "dev", TaskKind.WORK_ISSUE, {"title": "Add the feature", "target": target}
    )
    assert attack.state is TaskState.SUCCEEDED, attack.error
    dev_dir = service.pool.workspaces.workdir("dev:acme/widget:17")
    report: dict[str, Any] = json.loads((dev_dir / "report.json").read_text())

    # 1. No secret: not in its environment, the service's /proc, the config or the database.
    assert report["uid"] != 0, "a sandboxed agent never runs as root"
    assert "FORGEJO_TOKEN" not in report["env"]
    seen = json.dumps(report)
    for secret in SECRETS:
        assert secret not in seen
    for name in (
        "read_config",
        "read_database",
        "update_database",
        "read_logs",
        "read_claude_state",
        "read_other_workdir",
        "service_environ",
        "service_cmdline",
    ):
        assert report[name]["ok"] is False, (name, report[name])
    listing = report["list_data_dir"]
    assert not listing["ok"] or "claude-hooks.db" not in listing["got"], listing

    # 2. No write outside its workdir.
    for name in ("write_other_workdir", "append_config", "write_system", "write_mirror_config"):
        assert report[name]["ok"] is False, (name, report[name])
    assert not (reviewer_dir / "planted.txt").exists()
    assert config_path.read_bytes() == config_text
    stored = await service.store.get_task(review.id)
    assert stored is not None
    assert stored.payload == {"title": "First review"}

    # 3. The service is not frozen.
    assert report["stop_service"]["ok"] is False
    assert state_of(os.getpid()) != "T"

    # 5. Nothing it started outlives the task: not a grandchild, not a setsid'd daemon.
    assert report["daemons"]["ok"] is True
    await wait_until(lambda: not processes_with(daemon_marker), timeout=5)

    # Issue 19: its network is its own loopback. The database's port and socket, a port on the
    # host's loopback (the service's, another node's), directly or through the proxy, and a host
    # not on its list are refused; the host on its list answers through the proxy.
    for name in ("database_port", "database_socket", "service_port"):
        assert report[name]["ok"] is False, (name, report[name])
    assert "Connection refused" in report["database_port"]["error"]
    assert "No such file or directory" in report["database_socket"]["error"]
    assert "403" in report["service_port_by_proxy"]["error"], report["service_port_by_proxy"]
    for n in range(3):
        assert "403" in report[f"unlisted_{n}"]["error"], report[f"unlisted_{n}"]
    assert report["listed"] == {"ok": True, "got": "hello from the allowed host, /listed"}
    assert report["env"]["HTTPS_PROXY"] == report["env"]["http_proxy"] == "http://127.0.0.1:3128"
    transport = httpx.ASGITransport(app=create_app(service))
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        view = (await client.get(f"/api/tasks/{attack.id}", headers=headers)).json()
        page = (await client.get(f"/tasks/{attack.id}", headers=headers)).text
        metrics = (await client.get("/metrics", headers=headers)).text
    trap_port = trap.server_address[1]
    assert view["egress_blocked"] == [
        {"host": "127.0.0.1", "port": trap_port, "count": 1},
        {"host": "evil.example", "port": 443, "count": 3},
    ]
    assert "evil.example:443</span> ×3" in page  # noqa: RUF001
    assert 'claude_hooks_egress_blocked_total{type="dev"} 4.0' in metrics

    # 6. 300 MB of output: the log keeps its head and tail within the ceiling.
    log = service.pool.log_path(attack.id)
    assert log.stat().st_size < LOG_LIMIT + 200
    assert b"bytes of output dropped here" in log.read_bytes()

    # 4. Its poisoned repository (insteadOf, hooks, includes) turned nothing against the
    # service: its session branch alone was pushed, by the service; no hook ran, no token left.
    assert report["poison_git"]["ok"] is True
    branch = report["commit"]["got"].strip()
    assert branch.startswith("dev/17-")
    assert git("log", "-1", "--format=%s", branch, cwd=forge_repo) == "Add the feature"
    assert git("rev-parse", "refs/heads/main", cwd=forge_repo) == main_before

    # ... and the other type's next task, on the same repository, runs as it should.
    again = await run_task(service, "reviewer", TaskKind.REVIEW_PR, {"title": "Second review"})
    assert again.state is TaskState.SUCCEEDED, again.error
    assert (reviewer_dir / "seen.txt").read_text() == "First review\nSecond review\n"
    assert not hook_marker.exists(), "a hook planted by the agent ran"
    assert trap.requests == [], "git was sent to the attacker's URL"
    assert "planted.txt" not in sudo_git(reviewer_dir, "status", "--porcelain")


async def test_a_cancelled_sandbox_ends_every_process_in_it(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    marker = f"hostile-sleeper-{uuid.uuid4()}"
    agent = tmp_path / "agents" / "stubborn.py"
    agent.parent.mkdir()
    agent.write_text(
        "import signal, subprocess, sys, time\n"
        "def polite(*_):\n"
        "    open('terminated', 'w').write('yes')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, polite)\n"
        f"sleeper = [sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}]\n"
        "subprocess.Popen(sleeper, start_new_session=True)\n"
        "subprocess.Popen(sleeper)\n"
        "print('working', flush=True)\n"
        "time.sleep(300)\n"
    )
    service: Service = await start_service(
        types={
            "dev": {"runner": "command", "command": [sys.executable, str(agent)], "workdir": "none"}
        },
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    request = DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", 17, {})
    task_id = await service.pool.dispatch_by_type("dev", request)
    log = service.pool.log_path(task_id)
    await wait_until(lambda: log.exists() and "working" in log.read_text(), timeout=10)
    await wait_until(lambda: len(processes_with(marker)) == 2)
    await service.commands.cancel(task_id)
    task = await finished(service, task_id)
    assert task.state is TaskState.CANCELLED
    workdir = service.pool.workspaces.workdir("dev:acme/widget:17")
    assert (workdir / "terminated").read_text() == "yes", "SIGTERM reached the agent"
    await wait_until(lambda: not processes_with(marker))


async def test_an_unconfined_type_is_announced(
    start_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    service: Service = await start_service(
        types={"dev": {"runner": "command", "command": ["true"], "sandbox": False}},
    )
    assert "type 'dev' runs its agents WITHOUT a sandbox" in caplog.text
    transport = httpx.ASGITransport(app=create_app(service))
    headers = {"Authorization": "Bearer test-token"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        page = await client.get("/", headers=headers)
    assert page.status_code == 200
    assert "Agents without a sandbox</b>: dev" in page.text


def test_serve_refuses_a_sandboxed_type_without_bubblewrap(tmp_path: Path) -> None:
    config = tmp_path / "claude-hooks.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nwebhook_secret = "s"\napi_token = "t"\n'
        'port = 0\n[types.dev]\nrunner = "command"\ncommand = ["true"]\nworkdir = "none"\n'
    )
    cli = Path(sys.executable).with_name("claude-hooks")
    done = subprocess.run(
        [str(cli), "serve", "--config", str(config)],
        env={"PATH": str(tmp_path / "no-bwrap-here"), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot sandbox the agents of dev: bubblewrap (bwrap)")
    assert "apt-get install bubblewrap" in lines[-1]
    assert "sandbox = false" in lines[-1]


async def test_a_hostile_claude_agent_reaches_nothing_either(
    start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real Claude Code CLI, driven by a stand-in Messages API, runs the same attacks
    through its Bash tool; the tool's output goes back to the API, where the test reads it."""
    monkeypatch.setenv("CLAUDE_HOOKS_FORGEJO__TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    with MessagesStandin() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        path = tmp_path / "etc" / "claude-hooks.toml"
        path.parent.mkdir()
        path.write_text(
            f'[server]\ndata_dir = "{tmp_path / "data"}"\nwebhook_secret = "{WEBHOOK_SECRET}"\n'
            f'api_token = "{API_TOKEN}"\n'
            f'[types.dev]\nrunner = "claude"\nworkdir = "none"\ntoken = "{DEV_TOKEN}"\n'
            'comments = false\nenv = { DISABLE_TELEMETRY = "1" }\n'
            f'[types.reviewer]\nrunner = "claude"\ntoken = "{REVIEWER_TOKEN}"\n'
            '[[agents]]\nname = "dev-alpha"\ntype = "dev"\n'
        )
        service: Service = await start_service(load_config(path))
        data_dir = service.config.data_dir.resolve()
        attacks = "; ".join(
            [
                "echo UID=$(id -u)",
                f"cat {path}",
                f"cat {data_dir}/claude-hooks.db",
                f"ls {data_dir} {data_dir}/logs {data_dir}/claude/sessions",
                f"cat /proc/{os.getpid()}/environ",
                f"kill -STOP {os.getpid()} && echo STOPPED",
                "echo x >> /etc/hostile && echo WROTE",
                "env",
            ]
        )
        api.script(
            tool_use("Bash", {"command": f"({attacks}) 2>&1", "description": "attack"}),
            text("done"),
        )
        task = await run_task(service, "dev", TaskKind.WORK_ISSUE, {"title": "Attack"})
        assert task.state is TaskState.SUCCEEDED, task.error
        seen = api.message_requests()[-1].last_user_text()
    assert "UID=" in seen
    assert "UID=0\n" not in seen, "the agent runs as root"
    for secret in (WEBHOOK_SECRET, API_TOKEN, DEV_TOKEN, REVIEWER_TOKEN, ADMIN_TOKEN):
        assert secret not in seen
    assert "claude-hooks.db" not in seen.replace(f"{data_dir}/claude-hooks.db", "")
    assert "STOPPED" not in seen
    assert "WROTE" not in seen
    assert "No such file or directory" in seen
    assert state_of(os.getpid()) != "T"


async def test_the_claude_cli_reaches_its_api_through_the_service_which_holds_the_key(
    start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real CLI, sandboxed, with its Bash tool reading every environment in its sandbox:
    it holds the task's token, never the key (nor a second credential of the service's); the
    stand-in API receives the real key from the service, and the proxy's meter matches the
    usage the run reports."""
    oauth = "sk-ant-oat01-hostile-7a7"
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", oauth)
    with MessagesStandin() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        service: Service = await start_service(
            types={"dev": {"runner": "claude", "workdir": "none", "comments": False}},
            agents=[{"name": "dev-alpha", "type": "dev"}],
        )
        every_environ = (
            "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; echo; done; echo SCANNED"
        )
        api.script(
            tool_use("Bash", {"command": every_environ, "description": "environments"}),
            text("done"),
        )
        task = await run_task(service, "dev", TaskKind.WORK_ISSUE, {"title": "Look around"})
        assert task.state is TaskState.SUCCEEDED, task.error
        requests = api.message_requests()
        seen = requests[-1].last_user_text()
    assert "SCANNED" in seen
    assert ANTHROPIC_KEY not in seen and oauth not in seen
    assert "ANTHROPIC_API_KEY=claude-hooks-task-" in seen
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:3128" in seen
    assert "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1" in seen
    assert requests and all(r.headers.get("x-api-key") == ANTHROPIC_KEY for r in requests)

    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        view = (
            await client.get(
                f"/api/tasks/{task.id}", headers={"Authorization": "Bearer test-token"}
            )
        ).json()
    metered = view["metered"]
    results = [
        json.loads(line)
        for line in service.pool.log_path(task.id).read_text().splitlines()
        if '"type": "result"' in line
    ]
    usage = results[-1]["usage"]
    assert metered["requests"] == len(api.message_requests()) == 2
    for name in ("input_tokens", "output_tokens"):
        assert metered[name] == usage[name], (name, metered, usage)


async def test_the_proxy_ends_a_claude_task_whose_answer_passes_its_budget(
    start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real CLI, a $1 budget, and an answer of 1M Sonnet input tokens ($3) that then
    stalls: the CLI's own check would come after the answer, which never ends; the proxy stops
    it at its first event and the task ends with the reason, long before its timeout."""
    with MessagesStandin() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        service: Service = await start_service(
            types={
                "dev": {
                    "runner": "claude",
                    "workdir": "none",
                    "comments": False,
                    "max_budget_usd": 1.0,
                    "timeout": 120,
                }
            },
            agents=[{"name": "dev-alpha", "type": "dev"}],
        )
        api.script(replace(text("an expensive answer"), input_tokens=1_000_000, stall=True))
        began = time.monotonic()
        task = await run_task(service, "dev", TaskKind.WORK_ISSUE, {"title": "Spend it all"})
        took = time.monotonic() - began
    assert task.state is TaskState.FAILED
    assert task.error is not None and task.error.startswith(
        "budget $1 (max_budget_usd) reached: $3.00 metered by the proxy"
    ), task.error
    assert took < 60, f"{took:.0f} s"
    assert len(api.message_requests()) == 1


@pytest.mark.parametrize("comments", ["living", "each"])
async def test_the_final_comment_names_the_hosts_the_agent_was_refused(
    start_service: ServiceFactory, tmp_path: Path, fake_forgejo: FakeForgejo, comments: str
) -> None:
    agent = (
        "import urllib.request\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        urllib.request.urlopen('https://evil.example/', timeout=10)\n"
        "    except OSError as exc:\n"
        "        print(exc)\n"
    )
    dev = {"login": "dev-bot", "token": "tok-dev", "runner": "command", "workdir": "none"}
    dev["command"], dev["comments"] = [sys.executable, "-c", agent], comments
    # Each edit of the living comment at once: the throttle is the living-comment tests'.
    server = {"comment_edit_interval": 0}
    config = forge_config(tmp_path, fake_forgejo, types={"dev": dev}, server=server)
    service: Service = await start_service(config)
    task = await run_task(service, "dev", TaskKind.WORK_ISSUE, {"title": "Fetch"})
    assert task.state is TaskState.SUCCEEDED, task.error
    blocked = "Egress blocked: evil.example:443 ×2"  # noqa: RUF001
    # The task's last word: the living comment edited to its end, or the finished comment.
    await wait_until(lambda: any(c.body.endswith(blocked) for c in fake_forgejo.comments))


async def test_a_running_task_shows_what_it_was_refused(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    agent = (
        "import os, time, urllib.request\n"
        "try:\n"
        "    urllib.request.urlopen('http://evil.example/', timeout=10)\n"
        "except OSError as exc:\n"
        "    print(exc, flush=True)\n"
        "while not os.path.exists('go'):\n"
        "    time.sleep(0.05)\n"
    )
    service: Service = await start_service(
        types={
            "dev": {
                "runner": "command",
                "command": [sys.executable, "-c", agent],
                "workdir": "none",
            }
        },
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    request = DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", 17, {})
    task_id = await service.pool.dispatch_by_type("dev", request)
    transport = httpx.ASGITransport(app=create_app(service))
    headers = {"Authorization": "Bearer test-token"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def view() -> dict[str, Any]:
            answer = await client.get(f"/api/tasks/{task_id}", headers=headers)
            return dict(answer.json())

        seen: dict[str, Any] = {}

        async def refused_while_running() -> bool:
            seen.update(await view())
            return bool(seen["egress_blocked"])

        await wait_until(refused_while_running, timeout=30)
        assert seen["state"] == "running"
        assert seen["egress_blocked"] == [{"host": "evil.example", "port": 80, "count": 1}]
        (service.pool.workspaces.workdir("dev:acme/widget:17") / "go").write_text("")
        task = await finished(service, task_id)
    assert task.state is TaskState.SUCCEEDED, task.error


# Issue 19: a stranger's pull request, and result files built to make the service raise.


async def forge_service(
    start_service: ServiceFactory, tmp_path: Path, fake_forgejo: FakeForgejo
) -> tuple[Service, Forge]:
    """A sandboxed `command` dev on a worktree, its forge tools acting on the fake forge."""
    fake_forgejo.add_token(DEV_TOKEN, "dev-bot")
    fake_forgejo.add_repo("acme", "widget", collaborators={"dev-bot": "write"})
    fake_forgejo.add_issue("acme", "widget", number=17, title="Retries", user="alice")
    forge = Forge(tmp_path / "forge")
    forge.create()
    service: Service = await start_service(
        forgejo={"url": fake_forgejo.base_url, "clone_url": f"file://{forge.root}"},
        types={
            "dev": {
                "login": "dev-bot",
                "token": DEV_TOKEN,
                "runner": "command",
                "command": [sys.executable, str(HOSTILE)],
                "comments": False,
            }
        },
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    return service, forge


async def test_a_pr_from_a_fork_with_the_session_branch_is_never_the_agents(
    start_service: ServiceFactory, tmp_path: Path, fake_forgejo: FakeForgejo
) -> None:
    service, forge = await forge_service(start_service, tmp_path, fake_forgejo)
    branch = branch_name("dev", 17, "Retries")
    fork = fake_forgejo.add_pull(
        "acme", "widget", head_sha="f" * 40, head_ref=branch, head_repo="mallory/widget",
        title="Mallory's PR", user="mallory",
    )  # fmt: skip
    requests = [
        {"tool": "read_pull_request"},
        {"tool": "open_pull_request", "title": "Retries, done"},
        {"tool": "comment", "number": fork.number, "body": "spam"},
        {"tool": "open_pull_request", "title": "Retries, done again"},
    ]
    payload = {"title": "Retries", "target": {"result_file": json.dumps({"forge": requests})}}
    task = await run_task(service, "dev", TaskKind.WORK_ISSUE, payload)
    assert task.state is TaskState.SUCCEEDED, task.error
    assert fork.title == "Mallory's PR"
    assert fake_forgejo.requests_to(f"/repos/acme/widget/pulls/{fork.number}", "PATCH") == []
    assert fake_forgejo.comments == []
    log = service.pool.log_path(task.id).read_text()
    assert "this task has no pull request yet" in log
    assert f"#{fork.number} is not this task's issue or pull request" in log
    repo = fake_forgejo.repos[("acme", "widget")]
    own = [i for i in repo.issues.values() if i.pull is not None and i.number != fork.number]
    assert [(i.title, i.user, i.pull.head_ref) for i in own if i.pull] == [
        ("Retries, done again", "dev-bot", branch)
    ]
    assert git("rev-parse", f"refs/heads/{branch}", cwd=Path(forge.url("acme/widget")))


HOSTILE_REQUESTS = [
    {"tool": "submit_review", "event": "COMMENT", "body": "x", "comments": 5},
    {"tool": "comment", "body": "deep", "extra": [[[[["too deep"]]]]]},
    {"tool": ["not", "a", "name"]},
    "not a request",
    {"tool": "x" * 100_000},
    {"tool": "comment", "body": {"not": "text"}},
]


@pytest.mark.parametrize(
    ("content", "refusals"),
    [
        ("[" * 200_000, 1),
        ('{"forge": ' + "[" * 200_000 + "]" * 200_000 + "}", 1),
        ('{"forge": {"tool": "comment"}}', 1),
        ('{"forge": [{"tool": "comment", "body": NaN}]}', 1),
        (json.dumps({"forge": HOSTILE_REQUESTS}), len(HOSTILE_REQUESTS)),
    ],
    ids=["brackets", "deep-list", "not-a-list", "nan", "hostile-requests"],
)
async def test_a_hostile_result_file_is_refused_and_the_push_still_made(
    start_service: ServiceFactory,
    tmp_path: Path,
    fake_forgejo: FakeForgejo,
    content: str,
    refusals: int,
) -> None:
    service, forge = await forge_service(start_service, tmp_path, fake_forgejo)
    payload = {"title": "Retries", "pr_number": 20, "target": {"result_file": content}}
    task = await run_task(service, "dev", TaskKind.WORK_ISSUE, payload)
    assert task.state is TaskState.SUCCEEDED, task.error
    outcomes = [
        json.loads(line.removeprefix("[claude-hooks] forge: "))
        for line in service.pool.log_path(task.id).read_text().splitlines()
        if line.startswith("[claude-hooks] forge: ")
    ]
    assert len(outcomes) == refusals
    for outcome in outcomes:
        assert "refused" in outcome or outcome["answer"].startswith("refused: "), outcome
    assert fake_forgejo.comments == [] and fake_forgejo.reviews == []
    pushed = git("log", "-1", "--format=%s", branch_name("dev", 17, "Retries"),
                 cwd=Path(forge.url("acme/widget")))  # fmt: skip
    assert pushed == "Add the feature"
