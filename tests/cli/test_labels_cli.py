"""`claude-hooks labels sync REPO` against a fake Forgejo on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fake_forgejo import FakeForgejo


def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "claude_hooks", *args, "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def write_config(tmp_path: Path, url: str, labels: str = '["agent:dev"]') -> Path:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nwebhook_secret = "s"\napi_token = "t"\n'
        f'[forgejo]\nurl = "{url}"\ntoken = "tok-admin"\nretries = 0\n'
        f'[types.dev]\nlogin = "dev-bot"\nrunner = "command"\ncommand = ["true"]\n'
        f"labels = {labels}\n"
        '[types.reviewer]\nrunner = "command"\ncommand = ["true"]\nlabels = ["agent:review"]\n'
    )
    return path


def test_labels_sync_creates_the_missing_labels_once(
    tmp_path: Path, fake_forgejo: FakeForgejo
) -> None:
    fake_forgejo.add_token("tok-admin", "admin-bot", site_admin=True)
    fake_forgejo.add_repo("acme", "widget", collaborators={"admin-bot": "admin"})
    fake_forgejo.repos[("acme", "widget")].labels[7] = "agent:review"
    config = write_config(tmp_path, fake_forgejo.base_url)
    first = cli("labels", "sync", "acme/widget", config=config)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["agent:dev: created", "agent:review: already there"]
    assert sorted(fake_forgejo.repos[("acme", "widget")].labels.values()) == [
        "agent:dev",
        "agent:review",
    ]
    again = cli("labels", "sync", "acme/widget", config=config)
    assert again.stdout.splitlines() == ["agent:dev: already there", "agent:review: already there"]


def test_labels_sync_names_what_is_wrong(tmp_path: Path, fake_forgejo: FakeForgejo) -> None:
    fake_forgejo.add_token("tok-admin", "admin-bot", site_admin=True)
    config = write_config(tmp_path, fake_forgejo.base_url)
    bad = cli("labels", "sync", "widget", config=config)
    assert bad.returncode == 2
    assert "error: repository 'widget': must be '<owner>/<repository>'" in bad.stderr
    missing = cli("labels", "sync", "acme/nothing", config=config)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    none = write_config(tmp_path, fake_forgejo.base_url, labels="[]")
    (tmp_path / "c.toml").write_text(none.read_text().replace('labels = ["agent:review"]\n', ""))
    nothing = cli("labels", "sync", "acme/widget", config=none)
    assert nothing.returncode == 2 and "no agent type has labels" in nothing.stderr
