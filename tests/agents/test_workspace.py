"""Workdirs against real git: a local bare repository stands in for the forge's remote."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from claude_hooks.agents.workspace import (
    WorkspaceError,
    Workspaces,
    branch_name,
    current_branch,
    key_path,
    slug,
    split_key,
)
from claude_hooks.config import TypeConfig
from claude_hooks.core.domain import Task, TaskKind, TaskState, new_task_id, session_key

IDENTITY = {
    "GIT_AUTHOR_NAME": "Forge User",
    "GIT_AUTHOR_EMAIL": "user@forge.example.org",
    "GIT_COMMITTER_NAME": "Forge User",
    "GIT_COMMITTER_EMAIL": "user@forge.example.org",
}
TOKEN = "forgejo-secret-token-4711"


def git(*args: str | Path, cwd: Path | None = None, input: str | None = None) -> str:
    done = subprocess.run(
        ["git", *(str(a) for a in args)],
        cwd=cwd,
        input=input,
        env={**os.environ, **IDENTITY},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


class Forge:
    """Bare repositories under `root/<owner>/<repo>.git`, and a clone to push from."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def url(self, repo: str) -> str:
        return str(self.root / f"{repo}.git")

    def create(self, repo: str = "acme/widget", empty: bool = False) -> Path:
        bare = Path(self.url(repo))
        git("init", "--bare", "--quiet", "--initial-branch=main", bare)
        if not empty:
            self.commit(repo, "README.md", "# widget\n", "Initial commit")
        return bare

    def _clone(self, repo: str) -> Path:
        clone = self.root / "clones" / repo
        if not clone.exists():
            git("clone", "--quiet", self.url(repo), clone)
        return clone

    def commit(
        self, repo: str, name: str, text: str, message: str, ref: str = "refs/heads/main"
    ) -> str:
        """Commit a file on top of main and push it to `ref`; returns the commit."""
        clone = self._clone(repo)
        git("checkout", "--quiet", "-B", "work", cwd=clone)
        if git("ls-remote", "origin", "refs/heads/main", cwd=clone):
            git("fetch", "--quiet", "origin", cwd=clone)
            git("reset", "--quiet", "--hard", "origin/main", cwd=clone)
        (clone / name).write_text(text)
        git("add", name, cwd=clone)
        git("commit", "--quiet", "-m", message, cwd=clone)
        git("push", "--quiet", "--force", "origin", f"HEAD:{ref}", cwd=clone)
        return git("rev-parse", "HEAD", cwd=clone)


def make_task(
    kind: TaskKind = TaskKind.WORK_ISSUE,
    number: int = 17,
    payload: dict[str, Any] | None = None,
    agent_type: str = "dev",
    repo: str = "acme/widget",
) -> Task:
    return Task(
        id=new_task_id(),
        type=agent_type,
        agent=f"{agent_type}-alpha",
        kind=kind,
        session_key=session_key(agent_type, repo, number),
        repo=repo,
        number=number,
        state=TaskState.RUNNING,
        seq=1,
        enqueued_at=time.time(),
        payload={"title": "Widget crashes on empty input!"} if payload is None else payload,
    )


@pytest.fixture
def forge(tmp_path: Path) -> Forge:
    made = Forge(tmp_path / "forge")
    made.create()
    return made


@pytest.fixture
def workspaces(tmp_path: Path, forge: Forge) -> Workspaces:
    return Workspaces(tmp_path / "data", remote_url=forge.url)


CONFIG = TypeConfig(token=TOKEN)


def all_text_under(folder: Path) -> str:
    texts = []
    for path in folder.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(texts)


# preparing


async def test_a_first_task_gets_a_repository_of_its_own_on_its_branch(
    workspaces: Workspaces, forge: Forge, tmp_path: Path
) -> None:
    task = make_task()
    path = await workspaces.prepare(task, CONFIG)

    assert path == workspaces.workdir(task.session_key)
    assert path == (tmp_path / "data" / "workdirs" / "dev" / "acme" / "widget" / "17").resolve()
    assert (path / "README.md").read_text() == "# widget\n"
    assert current_branch(path) == "dev/17-widget-crashes-on-empty-input"
    assert git("rev-parse", "HEAD", cwd=path) == git(
        "rev-parse", "refs/heads/main", cwd=Path(forge.url("acme/widget"))
    )
    mirror = workspaces.mirror("acme/widget")
    assert mirror == (tmp_path / "data" / "mirrors" / "acme" / "widget.git").resolve()
    assert git("rev-parse", "--is-bare-repository", cwd=mirror) == "true"
    assert TOKEN not in all_text_under(mirror)
    assert TOKEN not in all_text_under(path / ".git")
    # Its own repository: nothing the agent does to its config or hooks reaches the mirror.
    assert (path / ".git").is_dir()
    assert git("config", "remote.origin.url", cwd=path) == forge.url("acme/widget")


async def test_the_next_task_fetches_and_keeps_the_same_worktree(
    workspaces: Workspaces, forge: Forge
) -> None:
    path = await workspaces.prepare(make_task(), CONFIG)
    (path / "notes.txt").write_text("work in progress\n")
    newer = forge.commit("acme/widget", "CHANGELOG.md", "v2\n", "Upstream change")

    renamed = make_task(TaskKind.ADDRESS_REVIEW, payload={"title": "A new title"})
    again = await workspaces.prepare(renamed, CONFIG)

    assert again == path
    assert current_branch(path) == "dev/17-widget-crashes-on-empty-input", "no rename"
    assert (path / "notes.txt").read_text() == "work in progress\n"
    mirror = workspaces.mirror("acme/widget")
    assert git("rev-parse", "refs/remotes/origin/main", cwd=mirror) == newer


async def test_a_review_starts_at_the_pull_requests_head(
    workspaces: Workspaces, forge: Forge
) -> None:
    head = forge.commit("acme/widget", "fix.py", "print(1)\n", "Fix", ref="refs/pull/18/head")
    task = make_task(TaskKind.REVIEW_PR, 18, {"title": "Fix the crash"}, agent_type="reviewer")
    path = await workspaces.prepare(task, CONFIG)
    assert git("rev-parse", "HEAD", cwd=path) == head
    assert current_branch(path) == "reviewer/18-fix-the-crash"

    by_sha = make_task(TaskKind.MERGE_PR, 18, {"head_sha": head}, agent_type="boss")
    assert git("rev-parse", "HEAD", cwd=await workspaces.prepare(by_sha, CONFIG)) == head


async def test_a_branch_pushed_from_elsewhere_is_taken_up(
    workspaces: Workspaces, forge: Forge
) -> None:
    pushed = forge.commit(
        "acme/widget", "wip.txt", "wip\n", "WIP", ref="refs/heads/dev/17-older-title"
    )
    path = await workspaces.prepare(make_task(), CONFIG)
    assert current_branch(path) == "dev/17-older-title"
    assert git("rev-parse", "HEAD", cwd=path) == pushed
    assert git("rev-parse", "--abbrev-ref", "@{upstream}", cwd=path) == "origin/dev/17-older-title"


async def test_different_keys_of_one_repository_prepare_at_once(workspaces: Workspaces) -> None:
    tasks = [make_task(number=n, payload={"title": f"issue {n}"}) for n in (1, 2, 3)]
    paths = await asyncio.gather(*(workspaces.prepare(t, CONFIG) for t in tasks))
    assert [current_branch(p) for p in paths] == ["dev/1-issue-1", "dev/2-issue-2", "dev/3-issue-3"]
    assert workspaces.session_keys() == [t.session_key for t in tasks]


async def test_a_directory_that_is_not_a_worktree_is_made_anew(workspaces: Workspaces) -> None:
    task = make_task()
    stray = workspaces.workdir(task.session_key)
    stray.mkdir(parents=True)
    (stray / "junk").write_text("left over\n")
    path = await workspaces.prepare(task, CONFIG)
    assert not (path / "junk").exists()
    assert current_branch(path) == "dev/17-widget-crashes-on-empty-input"


async def test_workdir_none_is_a_plain_directory(workspaces: Workspaces) -> None:
    path = await workspaces.prepare(make_task(), TypeConfig(workdir="none"))
    assert path.is_dir()
    assert list(path.iterdir()) == []
    assert not workspaces.mirrors.exists()


async def test_the_token_reaches_git_only_through_its_environment(
    tmp_path: Path, forge: Forge
) -> None:
    trace = tmp_path / "git-trace.log"
    wrapper = tmp_path / "git-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'printf "ARGV %s\\n" "$*" >> "{trace}"\n'
        f'printf "HEADER %s | %s\\n" "$*" "${{GIT_CONFIG_VALUE_0-}}" >> "{trace}"\n'
        'exec git "$@"\n'
    )
    wrapper.chmod(0o755)
    workspaces = Workspaces(tmp_path / "data", remote_url=forge.url, git=str(wrapper))
    task = make_task()
    await workspaces.prepare(task, CONFIG)
    await workspaces.prepare(task, CONFIG)

    lines = trace.read_text().splitlines()
    assert all(TOKEN not in line for line in lines if line.startswith("ARGV"))
    headers = [line for line in lines if line.startswith("HEADER")]
    fetches = [line for line in headers if " fetch --prune --quiet origin" in line]
    assert len(fetches) == 2
    assert all(line.endswith(f"Authorization: token {TOKEN}") for line in fetches)
    local = [line for line in headers if " origin" not in line]
    assert local, "local git commands ran too"
    assert all(TOKEN not in line for line in local), "only commands that talk to the remote"


async def test_git_failures_are_clear_and_leave_nothing_half_made(tmp_path: Path) -> None:
    workspaces = Workspaces(tmp_path / "data", remote_url=lambda repo: str(tmp_path / "nowhere"))
    with pytest.raises(WorkspaceError, match=r"git fetch --prune failed \(exit \d+\)") as caught:
        await workspaces.prepare(make_task(), CONFIG)
    assert TOKEN not in str(caught.value)
    assert list(workspaces.mirrors.rglob("*.git*")) == []


async def test_an_empty_repository_has_nothing_to_start_from(tmp_path: Path) -> None:
    forge = Forge(tmp_path / "forge")
    forge.create("acme/empty", empty=True)
    workspaces = Workspaces(tmp_path / "data", remote_url=forge.url)
    with pytest.raises(WorkspaceError, match="acme/empty has no branch to start from"):
        await workspaces.prepare(make_task(repo="acme/empty"), CONFIG)


async def test_without_a_forge_url_there_is_no_remote(tmp_path: Path) -> None:
    assert Workspaces(tmp_path, forgejo_url="https://forge.example.org/").remote_url(
        "acme/widget"
    ) == ("https://forge.example.org/acme/widget.git")
    with pytest.raises(WorkspaceError, match=r"\[forgejo\] url is not set"):
        await Workspaces(tmp_path).prepare(make_task(), CONFIG)


# cleaning up


async def test_cleanup_removes_the_worktree_and_its_branch(workspaces: Workspaces) -> None:
    task = make_task()
    path = await workspaces.prepare(task, CONFIG)
    other = await workspaces.prepare(make_task(number=5, payload={}), CONFIG)
    mirror = workspaces.mirror("acme/widget")

    assert await workspaces.cleanup(task.session_key) is True
    assert not path.exists()
    assert str(path) not in git("worktree", "list", cwd=mirror)
    assert git("branch", "--list", "dev/17-*", cwd=mirror) == ""
    assert current_branch(other) == "dev/5"
    assert await workspaces.cleanup(task.session_key) is False

    again = await workspaces.prepare(task, CONFIG)
    assert again == path
    assert current_branch(path) == "dev/17-widget-crashes-on-empty-input"


async def test_cleanup_of_a_plain_directory(workspaces: Workspaces) -> None:
    task = make_task()
    path = await workspaces.prepare(task, TypeConfig(workdir="none"))
    (path / "file").write_text("x")
    assert await workspaces.cleanup(task.session_key) is True
    assert not path.exists()
    assert list(workspaces.root.iterdir()) == [], "empty parents go too"


# names


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Widget crashes on empty input!", "widget-crashes-on-empty-input"),
        ("  Ünïcödé — tïtle  ", "unicode-title"),
        ("../../etc/passwd; rm -rf /", "etc-passwd-rm-rf"),
        ("x" * 80, "x" * 40),
        ("", ""),
        (None, ""),
        (42, ""),
    ],
)
def test_slug(title: object, expected: str) -> None:
    assert slug(title) == expected


def test_names() -> None:
    assert branch_name("dev", 17, "Fix it") == "dev/17-fix-it"
    assert branch_name("dev", 17, "!!!") == "dev/17"
    assert key_path("dev:acme/widget:17") == Path("dev/acme/widget/17")
    assert key_path("dev:../x:1") == Path("dev/%2E%2E/x/1")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("dev:acme/widget.:1", "dev:acme/widget:1"),
        ("dev:acme/.widget:1", "dev:acme/widget:1"),
        ("dev:acme/wid get:1", "dev:acme/wid_get:1"),
        ("dev:acme/wid%20get:1", "dev:acme/wid get:1"),
        ("dev:acme/%2Ewidget:1", "dev:acme/.widget:1"),
    ],
)
def test_key_paths_are_injective(one: str, other: str) -> None:
    """Two names never share a workdir, even names the forge would refuse."""
    assert key_path(one) != key_path(other)
    assert all(part not in (".", "..", "") for part in key_path(one).parts)
    assert split_key("dev:acme/widget:17") == ("dev", "acme/widget", 17)
    with pytest.raises(ValueError, match="not a session key"):
        split_key("nonsense")


def test_current_branch_of_other_folders(tmp_path: Path) -> None:
    assert current_branch(tmp_path) is None
    git("init", "--quiet", "--initial-branch=trunk", tmp_path / "plain")
    assert current_branch(tmp_path / "plain") == "trunk"
