"""A session's worktree moves between nodes: saved by one data dir, restored in another,
through the database (each backend), with real git repositories."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from claude_hooks.agents import sandbox
from claude_hooks.agents.runners.base import RunContext, RunResult
from claude_hooks.agents.workspace import Workspaces, current_branch
from claude_hooks.agents.worktree_state import INDEX_REF, MAX_LISTING_BYTES, WORKTREE_REF
from claude_hooks.config import TypeConfig
from claude_hooks.core.domain import TaskState
from claude_hooks.service.runtime import Service
from claude_hooks.store.sql import SqlStore
from claude_hooks.store.worktree_states import WorktreeState
from tests.agents.test_workspace import CONFIG, TOKEN, Forge, git, make_task
from tests.cluster.test_sessions_across_nodes import deliver, finished
from tests.conftest import ServiceFactory
from tests.support import make_config


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(database_url)
    yield opened
    await opened.close()


@pytest.fixture
def forge(tmp_path: Path) -> Forge:
    made = Forge(tmp_path / "forge")
    made.create()
    return made


def node(tmp_path: Path, name: str, forge: Forge, store: SqlStore, limit: int = 0) -> Workspaces:
    extra = {"max_state_bytes": limit} if limit else {}
    return Workspaces(
        tmp_path / name, remote_url=forge.url, states=store.worktree_states, node=name, **extra
    )


def status(path: Path) -> str:
    return git("status", "--porcelain=v1", "--untracked-files=all", cwd=path)


async def test_uncommitted_and_untracked_work_moves_to_another_node(
    tmp_path: Path, forge: Forge, store: SqlStore
) -> None:
    a, b = node(tmp_path, "a", forge, store), node(tmp_path, "b", forge, store)
    task = make_task()
    here = await a.prepare(task, CONFIG)
    (here / ".gitignore").write_text("build/\n")
    git("add", ".gitignore", cwd=here)
    git("commit", "--quiet", "-m", "ignore build", cwd=here)  # committed, pushed by deliver
    (here / "README.md").write_text("# widget\nstaged line\n")
    git("add", "README.md", cwd=here)  # staged
    (here / "README.md").write_text("# widget\nstaged line\nunstaged line\n")  # and more
    (here / "notes").mkdir()
    (here / "notes" / "todo.txt").write_text("untracked\n")
    (here / "build").mkdir()
    (here / "build" / "out.bin").write_bytes(b"ignored")
    git("rm", "--quiet", "--cached", ".gitignore", cwd=here)  # staged deletion, file kept
    head = git("rev-parse", "HEAD", cwd=here)
    before = status(here)

    result = await a.deliver(task, CONFIG, None, RunResult(succeeded=True))
    assert result.details["pushed"] == current_branch(here)
    assert isinstance(result.details["worktree_state_bytes"], int)

    there = await b.prepare(make_task(), CONFIG)
    assert there != here
    assert current_branch(there) == current_branch(here)
    assert git("rev-parse", "HEAD", cwd=there) == head
    assert status(there) == before
    assert (there / "README.md").read_text() == "# widget\nstaged line\nunstaged line\n"
    assert git("show", ":README.md", cwd=there) == "# widget\nstaged line"
    assert (there / "notes" / "todo.txt").read_text() == "untracked\n"
    assert not (there / "build").exists(), "ignored files stay behind"
    assert git("for-each-ref", "refs/claude-hooks", cwd=there) == ""

    # B works on and saves; A's copy is now older and is replaced on its next prepare.
    (there / "notes" / "todo.txt").write_text("done by b\n")
    await b.deliver(task, CONFIG, None, RunResult(succeeded=True))
    back = await a.prepare(make_task(), CONFIG)
    assert (back / "notes" / "todo.txt").read_text() == "done by b\n"
    # A copy at the saved state stays as it is (nothing is restored over local files).
    (back / "scratch.txt").write_text("local\n")
    await a.prepare(make_task(), CONFIG)
    assert (back / "scratch.txt").read_text() == "local\n"


async def test_a_state_over_the_limit_is_not_saved_and_says_so(
    tmp_path: Path, forge: Forge, store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    a = node(tmp_path, "a", forge, store, limit=1024)
    b = node(tmp_path, "b", forge, store)
    task = make_task()
    here = await a.prepare(task, CONFIG)
    (here / "big.bin").write_bytes(os.urandom(16384))  # does not compress
    with caplog.at_level(logging.WARNING, logger="claude_hooks.agents.workspace"):
        result = await a.deliver(task, CONFIG, None, RunResult(succeeded=True))
    assert "worktree_state_bytes" not in result.details
    assert "larger than server.max_worktree_state_bytes (1024)" in caplog.text
    assert await store.worktree_states.get_state(task.session_key) is None
    there = await b.prepare(make_task(), CONFIG)
    assert not (there / "big.bin").exists()
    assert current_branch(there) == current_branch(here)


class HalfDone:
    """Leaves a file in the workdir, then works until cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def run(self, ctx: RunContext) -> RunResult:
        (ctx.workdir / "half-done.txt").write_text("half\n")
        self.started.set()
        await asyncio.sleep(60)
        return RunResult(succeeded=True)


async def test_a_cancelled_run_saves_its_worktree_too(
    tmp_path: Path, forge: Forge, pg_url: str, start_service: ServiceFactory
) -> None:
    runner = HalfDone()
    config = make_config(
        tmp_path,
        server={"database_url": pg_url, "node": "a"},
        forgejo={"clone_url": f"file://{forge.root}"},
        security={"allowed_senders": ["alice"]},
        types={"dev": {"login": "dev-bot", "runner": "command", "command": ["true"]}},
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    service: Service = await start_service(config, runner=runner)
    task_id = await deliver(service, "issues_assigned_dev")
    await asyncio.wait_for(runner.started.wait(), 30)
    await service.commands.cancel(task_id)
    assert (await finished(service, task_id)).state is TaskState.CANCELLED

    b = node(tmp_path, "b", forge, service.store)
    there = await b.prepare(make_task(), CONFIG)
    assert (there / "half-done.txt").read_text() == "half\n"


# Issue 19 item 6: a saved state is untrusted (anything that writes the database made it).


def bytes_under(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() or p.is_symlink())


async def test_a_small_state_that_would_expand_past_max_disk_is_refused(
    tmp_path: Path, forge: Forge, store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = node(tmp_path, "a", forge, store), node(tmp_path, "b", forge, store)
    small_disk = TypeConfig(token=TOKEN, max_disk="1M")
    task = make_task()
    here = await a.prepare(task, CONFIG)
    (here / "zeros.bin").write_bytes(bytes(16 * 1024 * 1024))
    (here / "notes.txt").write_text("small\n")
    result = await a.deliver(task, CONFIG, None, RunResult(succeeded=True))
    saved = result.details["worktree_state_bytes"]
    assert isinstance(saved, int) and saved < 64 * 1024  # 16 MiB of zeros compress well

    with caplog.at_level(logging.WARNING, logger="claude_hooks.agents.workspace"):
        there = await b.prepare(make_task(), small_disk)
    files = 16 * 1024 * 1024 + len("small\n") + len("# widget\n")
    assert (
        f"the saved state's files come to {files} bytes, more than the type's max_disk "
        "(1048576 bytes)" in caplog.text
    )
    assert "continuing from its branch" in caplog.text
    assert not (there / "zeros.bin").exists() and not (there / "notes.txt").exists()
    assert current_branch(there) == current_branch(here)
    assert bytes_under(tmp_path / "b") < 1024 * 1024, "nothing expanded anywhere else"


async def test_a_state_whose_tree_names_a_subtree_a_billion_times_is_refused(
    tmp_path: Path, forge: Forge, store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A "tree bomb" of a few kilobytes: 10 entries a level, 9 levels of the same tree."""
    repo = tmp_path / "bomb"
    git("clone", "--quiet", forge.url("acme/widget"), repo)
    head = git("rev-parse", "HEAD", cwd=repo)
    tree = git("mktree", cwd=repo, input="".join(
        f"100644 blob {git('hash-object', '-w', '--stdin', cwd=repo, input='x')}\tf{i}\n"
        for i in range(10)
    ))  # fmt: skip
    for _ in range(8):
        tree = git(
            "mktree", cwd=repo, input="".join(f"040000 tree {tree}\td{i}\n" for i in range(10))
        )
    worktree = git("commit-tree", tree, "-p", head, "-m", "bomb", cwd=repo)
    index = git("commit-tree", f"{head}^{{tree}}", "-p", head, "-m", "index", cwd=repo)
    git("update-ref", WORKTREE_REF, worktree, cwd=repo)
    git("update-ref", INDEX_REF, index, cwd=repo)
    bundle = tmp_path / "bomb.bundle"
    git("bundle", "create", "--quiet", bundle, WORKTREE_REF, INDEX_REF, "--not", "--remotes",
        cwd=repo)  # fmt: skip
    assert bundle.stat().st_size < 16 * 1024
    key = make_task().session_key
    await store.worktree_states.put_state(
        WorktreeState(key, None, head, worktree, index, bundle.read_bytes(), "evil", time.time())
    )

    b = node(tmp_path, "b", forge, store)
    with caplog.at_level(logging.WARNING, logger="claude_hooks.agents.workspace"):
        there = await b.prepare(make_task(), CONFIG)
    assert f"tree lists more than {MAX_LISTING_BYTES} bytes of entries" in caplog.text
    assert sorted(p.name for p in there.iterdir()) == [".git", "README.md"]
    assert bytes_under(tmp_path / "b") < 1024 * 1024


@pytest.mark.skipif(shutil.which("bwrap") is None or os.geteuid() != 0, reason="needs bwrap, root")
async def test_a_restored_state_is_written_by_the_agent_in_its_sandbox(
    tmp_path: Path, forge: Forge, store: SqlStore
) -> None:
    a = node(tmp_path, "a", forge, store)
    b = node(tmp_path, "b", forge, store)
    agents = sandbox.build(sandbox.find_bwrap(), "claude-hooks-agent", [tmp_path / "b"])
    assert agents.account is not None
    task = make_task()
    here = await a.prepare(task, CONFIG)
    (here / "notes.txt").write_text("moved\n")
    await a.deliver(task, CONFIG, None, RunResult(succeeded=True))

    there = await b.prepare(make_task(), CONFIG, agents)
    assert (there / "notes.txt").read_text() == "moved\n"
    assert (there / "notes.txt").stat().st_uid == agents.account.uid
    assert (there / ".git" / "index").stat().st_uid == agents.account.uid
