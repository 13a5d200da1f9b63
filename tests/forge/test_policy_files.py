"""Policy files read from a (fake) forge: which branch, which file, the organisation's
repository, the cache by commit, and `claude-hooks policy check` as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from claude_hooks.config import load_config
from claude_hooks.core.policy import (
    REPOSITORY,
    PolicyFile,
    RepositorySettings,
    TypeSettings,
    effective,
    parse,
)
from claude_hooks.forge.client import ForgejoClient
from claude_hooks.forge.policy_files import PolicyFiles
from tests.fake_forgejo import FakeForgejo

PATH = ".forgejo/claude-hooks.toml"


def set_up(forge: FakeForgejo) -> None:
    forge.add_token("tok-admin", "admin-bot", site_admin=True)
    forge.add_repo("acme", "widget")
    forge.add_repo("acme", ".claude-hooks")


def config_file(tmp_path: Path, forge: FakeForgejo, policy: str = "") -> Path:
    path = tmp_path / "claude-hooks.toml"
    path.write_text(
        f'[forgejo]\nurl = "{forge.base_url}"\ntoken = "tok-admin"\nretries = 0\n'
        "[flows]\nmax_review_rounds = 3\n"
        '[types.dev]\nrunner = "command"\ncommand = ["true"]\n'
        '[types.reviewer]\nrunner = "command"\ncommand = ["true"]\n' + policy
    )
    return path


async def test_the_repository_file_comes_from_the_base_branch_never_the_head(
    fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    set_up(fake_forgejo)
    fake_forgejo.commit_file("acme", ".claude-hooks", PATH, 'instructions = "Be brief."\n')
    fake_forgejo.commit_file("acme", "widget", ".claude-hooks.toml", "max_review_rounds = 1\n")
    # A PR's head branch that tries to loosen the rules it runs under.
    fake_forgejo.commit_file(
        "acme", "widget", ".claude-hooks.toml", "max_review_rounds = 2\n", branch="agent/17"
    )
    config = load_config(config_file(tmp_path, fake_forgejo))
    async with ForgejoClient(fake_forgejo.base_url, "tok-admin", retries=0) as client:
        files = await PolicyFiles(lambda: client).for_repository("acme/widget", "main")
        policy = effective(config, files)
    assert policy.value("max_review_rounds") == 1
    assert policy.settings["instructions"].layer == "organisation"
    assert [f.where.split("@")[0] for f in files] == ["acme/.claude-hooks", "acme/widget"]


async def test_the_first_of_the_three_paths_wins(fake_forgejo: FakeForgejo) -> None:
    set_up(fake_forgejo)
    fake_forgejo.commit_file("acme", "widget", ".claude-hooks.toml", "max_review_rounds = 1\n")
    fake_forgejo.commit_file("acme", "widget", ".gitea/claude-hooks.toml", "test = 'gitea'\n")
    async with ForgejoClient(fake_forgejo.base_url, "tok-admin", retries=0) as client:
        [found] = await PolicyFiles(lambda: client).for_repository("acme/widget")
    assert found.where.endswith(":.gitea/claude-hooks.toml")


async def test_files_are_cached_by_commit_and_a_push_refreshes_them(
    fake_forgejo: FakeForgejo,
) -> None:
    set_up(fake_forgejo)
    fake_forgejo.commit_file("acme", "widget", PATH, "max_review_rounds = 1\n")
    async with ForgejoClient(fake_forgejo.base_url, "tok-admin", retries=0) as client:
        files = PolicyFiles(lambda: client)
        first = await files.for_repository("acme/widget")
        await files.for_repository("acme/widget")
        reads = len(fake_forgejo.requests_to(f"/repos/acme/widget/contents/{PATH}"))
        fake_forgejo.commit_file("acme", "widget", PATH, "max_review_rounds = 2\n")
        cached = await files.for_repository("acme/widget")
        files.forget_branch("acme/widget", "main")  # what a push to main does
        fresh = await files.for_repository("acme/widget")
    assert reads == 1
    assert cached[-1].text == first[-1].text
    assert fresh[-1].text == "max_review_rounds = 2\n"


def policy_check(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "claude_hooks", "policy", "check", *args, "--config", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_policy_check_prints_each_value_and_where_it_came_from(
    fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    set_up(fake_forgejo)
    fake_forgejo.commit_file("acme", ".claude-hooks", PATH, "max_review_rounds = 2\n")
    fake_forgejo.commit_file(
        "acme", "widget", PATH, 'allowed_types = ["reviewer"]\nsetup = ["make deps"]\n'
    )
    path = config_file(tmp_path, fake_forgejo)
    shown = policy_check(path, "acme/widget")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "allowed_types          = ['reviewer']  (repository)" in lines
    assert "max_review_rounds      = 2  (organisation)" in lines
    assert "max_tasks_per_issue    = 12  (service)" in lines
    assert any(line.startswith("clipped: setup: not applied") for line in lines)
    as_json = json.loads(policy_check(path, "acme/widget", "--json").stdout)
    assert as_json["settings"]["max_review_rounds"] == {"value": 2, "from": "organisation"}


def test_policy_check_names_the_line_of_a_broken_file(
    fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    set_up(fake_forgejo)
    sha = fake_forgejo.commit_file("acme", "widget", PATH, "auto_merge = false\nautomerge = 1\n")
    shown = policy_check(config_file(tmp_path, fake_forgejo), "acme/widget", "--ref", sha)
    assert shown.returncode == 1
    assert shown.stderr == (
        f"error: acme/widget@{sha[:10]}:{PATH}:2: unknown key 'automerge' "
        "(see the README's per-repository keys)\n"
    )


def test_policy_check_refuses_a_bad_repository_name(tmp_path: Path) -> None:
    path = tmp_path / "claude-hooks.toml"
    path.write_text('[forgejo]\nurl = "http://127.0.0.1:9"\n')
    shown = policy_check(path, "acme/..")
    assert shown.returncode == 2
    assert shown.stderr.startswith("error: REPO repository '..' may not be")


def test_init_writes_an_example_whose_every_key_is_valid(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "claude_hooks", "init", "--repository", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / PATH).read_text()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    # Only comments; with every key line uncommented it fits the schema and names every key.
    keys = re.compile(r"^# (\[types\.dev\]$|[a-z_]+ = )")
    uncommented = "\n".join(line[2:] if keys.match(line) else line for line in text.splitlines())
    assert parse(PolicyFile(REPOSITORY, "example", text)) == {}
    table = parse(PolicyFile(REPOSITORY, "example", uncommented))
    assert set(table) == set(RepositorySettings.model_fields)
    assert set(table["types"]["dev"]) == set(TypeSettings.model_fields)
