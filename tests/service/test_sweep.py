"""Workdirs of closed issues go: at once on the close event, or by the sweep asking the forge."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from claude_hooks.agents.workspace import Workspaces
from claude_hooks.config import Config, load_config
from claude_hooks.service.runtime import Service
from claude_hooks.store.sql import SqlStore
from claude_hooks.web.app import create_app
from tests.agents.test_workspace import Forge, make_task
from tests.conftest import ServiceFactory
from tests.fake_forgejo import FakeForgejo
from tests.support import fixture, forgejo_headers, instance_idle, make_config, wait_until


def worktree_config(tmp_path: Path, **overrides: Any) -> Config:
    forge = Forge(tmp_path / "forge")
    forge.create()
    return make_config(
        tmp_path,
        security={"allowed_senders": ["alice"]},
        types={
            "dev": {
                "login": "dev-bot",
                "runner": "command",
                "command": ["true"],
                "workdir": "worktree",
                "comments": False,
            }
        },
        agents=[{"name": "dev-alpha", "type": "dev"}],
        **{"forgejo": {"clone_url": f"file://{forge.root}"}, **overrides},
    )


async def test_closing_the_issue_removes_its_worktree(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    service: Service = await start_service(worktree_config(tmp_path))
    workdir = service.pool.workspaces.workdir("dev:acme/widget:17")
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        body, headers = fixture("issues_assigned_dev")
        assert (await client.post("/webhook", content=body, headers=headers)).status_code == 202
        await wait_until(lambda: (workdir / ".git").is_dir(), timeout=20)
        await wait_until(lambda: instance_idle(service.store, "dev-alpha"), timeout=20)

        data = json.loads(fixture("issues_opened")[0])
        data["action"] = "closed"
        data["issue"]["state"] = "closed"
        closed = json.dumps(data).encode()
        answer = await client.post(
            "/webhook", content=closed, headers=forgejo_headers("issues", closed, "close-17")
        )
        assert answer.status_code == 200
        assert "closed" in answer.json()["reason"]
        await wait_until(lambda: service.sweeper.removed == ["dev:acme/widget:17"], 10)
        assert not workdir.exists()


async def test_cli_sweep_asks_the_forge(fake_forgejo: FakeForgejo, tmp_path: Path) -> None:
    fake_forgejo.add_token("tok-admin", "admin-bot", site_admin=True)
    fake_forgejo.add_repo("acme", "widget")
    fake_forgejo.add_issue("acme", "widget", number=17, state="closed")
    fake_forgejo.add_issue("acme", "widget", number=30, state="open")
    forge = Forge(tmp_path / "forge")
    forge.create()
    config_file = tmp_path / "claude-hooks.toml"
    config_file.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[forgejo]\nurl = "{fake_forgejo.base_url}"\ntoken = "tok-admin"\n'
        f'clone_url = "file://{forge.root}"\n'
        '[types.dev]\nlogin = "dev-bot"\n'
    )

    config = load_config(config_file)
    await (await SqlStore.open(config.database_url)).close()  # as the service that made them
    workspaces = Workspaces(config.data_dir, forgejo_url=f"file://{forge.root}")
    for number in (17, 30):
        await workspaces.prepare(make_task(number=number), config.types["dev"])
    listed = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "claude_hooks",
            "workdirs",
            "list",
            "--json",
            "-c",
            str(config_file),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert [row["session_key"] for row in json.loads(listed.stdout)] == [
        "dev:acme/widget:17",
        "dev:acme/widget:30",
    ]
    swept = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "claude_hooks", "workdirs", "sweep", "-c", str(config_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert swept.returncode == 0, swept.stderr
    assert "removed 1 workdir(s): dev:acme/widget:17" in swept.stdout
    assert not workspaces.workdir("dev:acme/widget:17").exists()
    assert workspaces.workdir("dev:acme/widget:30").exists()
