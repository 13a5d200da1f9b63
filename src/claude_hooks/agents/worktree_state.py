"""A workdir's exact state as git objects, to move a session between nodes.

`capture` runs in the agent's repository, as the agent in its sandbox (like every git the
service runs there): it records the checked-out commit (`head`), a commit whose tree is the
index and one whose tree is the work tree with its uncommitted and untracked files (ignored
files are left out, as `git add -A` does), both children of `head`, and bundles the two
(`refs/claude-hooks/index`, `refs/claude-hooks/worktree`) without what the forge's branches
already hold. `apply` runs in a fresh repository the service cloned (so its config is the
service's): it fetches the bundle (as the service: git stores the objects compressed, as
they came, so this writes about the bundle's size), checks the two commits against the
state recorded with them, and measures what checking them out would write: a bundle of a few
kilobytes can hold gigabytes of zeros, or a tree that names one subtree a billion times.
Within the limit, the files are written and the index put back by git run as the agent, in
its sandbox, as every git in an agent's repository.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from claude_hooks.agents.sandbox import Sandbox
from claude_hooks.errors import ClaudeHooksError

# A listing of a tree (`git ls-tree -r`) longer than this is refused: it is a tree of more
# than ~500,000 entries, most likely one that names a subtree many times (a "tree bomb").
MAX_LISTING_BYTES = 64 * 1024**2

WORKTREE_REF = "refs/claude-hooks/worktree"
INDEX_REF = "refs/claude-hooks/index"
_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
_IDENTITY = {
    "GIT_AUTHOR_NAME": "claude-hooks",
    "GIT_AUTHOR_EMAIL": "claude-hooks@localhost",
    "GIT_COMMITTER_NAME": "claude-hooks",
    "GIT_COMMITTER_EMAIL": "claude-hooks@localhost",
}


class Git(Protocol):
    """The hardened git the workspaces run (`workspace._Git`): declared here, so this module
    needs nothing from the one that uses it."""

    async def in_workdir(
        self,
        path: Path,
        args: tuple[str, ...],
        sandbox: Sandbox | None,
        readable: list[Path] | None = None,
        out: IO[bytes] | None = None,
        limit: int = 0,
        env: dict[str, str] | None = None,
        writable: list[Path] | None = None,
    ) -> str: ...

    async def run(self, *args: str | Path, network: bool = False, local: bool = False) -> str: ...

    async def ok(self, *args: str | Path, network: bool = False) -> bool: ...

    async def capped(self, *args: str | Path, limit: int) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Captured:
    branch: str | None
    head: str
    worktree: str
    index_commit: str


def _sha(text: str, what: str) -> str:
    value = text.strip()
    if not _SHA.fullmatch(value):
        raise ClaudeHooksError(f"git gave {value[:80]!r} as the {what}, not a commit id")
    return value


async def capture(
    git: Git, path: Path, sandbox: Sandbox | None, scratch: Path, bundle: Path, limit: int
) -> Captured | None:
    """Write the workdir's state to `bundle`; None if it has no commit to start from.

    `scratch` is an empty folder the agent may write (the temporary index goes there).
    """

    async def run(*args: str, index: bool = False) -> str:
        env = {**_IDENTITY, **({"GIT_INDEX_FILE": str(scratch / "index")} if index else {})}
        return await git.in_workdir(path, args, sandbox, env=env, writable=[scratch])

    try:
        head = _sha(await run("rev-parse", "--verify", "--quiet", "HEAD^{commit}"), "HEAD")
    except ClaudeHooksError:
        return None
    try:
        ref = (await run("symbolic-ref", "--quiet", "HEAD")).strip()
    except ClaudeHooksError:
        ref = ""  # detached
    branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
    try:
        index_tree = (await run("write-tree")).strip()
    except ClaudeHooksError:
        index_tree = f"{head}^{{tree}}"  # a merge in progress: its conflicts are not kept
    await run("read-tree", head, index=True)
    await run("add", "--all", index=True)
    files_tree = (await run("write-tree", index=True)).strip()
    index_commit = _sha(
        await run("commit-tree", index_tree, "-p", head, "-m", "claude-hooks: index"), "index"
    )
    worktree = _sha(
        await run("commit-tree", files_tree, "-p", head, "-m", "claude-hooks: work tree"),
        "work tree",
    )
    await run("update-ref", INDEX_REF, index_commit)
    await run("update-ref", WORKTREE_REF, worktree)
    args = ("bundle", "create", "--quiet", "-", WORKTREE_REF, INDEX_REF, "--not", "--remotes")
    with bundle.open("wb") as out:  # OutputTooLargeError past `limit`
        await git.in_workdir(path, args, sandbox, out=out, limit=limit)
    return Captured(branch, head, worktree, index_commit)


async def apply(
    git: Git, repo: Path, bundle: Path, state: Captured, sandbox: Sandbox | None, limit: int
) -> None:
    """Make the fresh clone `repo` the captured state: HEAD (on its branch), index, files.

    Refused (ClaudeHooksError, saying why) when its files come to more than `limit` bytes
    (the type's `max_disk`); then nothing of it is checked out.
    """
    await git.run(
        "-C", repo, "-c", "transfer.fsckObjects=true", "fetch", "--quiet", "--no-tags", bundle,
        f"{WORKTREE_REF}:{WORKTREE_REF}", f"{INDEX_REF}:{INDEX_REF}", local=True,
    )  # fmt: skip
    for ref, expected in ((WORKTREE_REF, state.worktree), (INDEX_REF, state.index_commit)):
        found = (await git.run("-C", repo, "rev-parse", "--verify", f"{ref}^{{commit}}")).strip()
        parent = (await git.run("-C", repo, "rev-parse", "--verify", f"{ref}^1")).strip()
        if found != expected or parent != state.head:
            raise ClaudeHooksError(f"the saved bundle's {ref} is not the state recorded with it")
    if state.branch is not None:
        if not await git.ok("check-ref-format", "--branch", state.branch):
            raise ClaudeHooksError(
                f"the saved state's branch {state.branch!r} is not a branch name"
            )
        await git.run("-C", repo, "update-ref", f"refs/heads/{state.branch}", state.head)
        await git.run("-C", repo, "symbolic-ref", "HEAD", f"refs/heads/{state.branch}")
    else:
        await git.run("-C", repo, "update-ref", "--no-deref", "HEAD", state.head)
    files = await _files_bytes(git, repo, state.worktree)
    if files > limit:
        raise ClaudeHooksError(
            f"the saved state's files come to {files} bytes, more than the type's max_disk "
            f"({limit} bytes)"
        )
    await _listing(git, repo, state.index_commit)  # an index of a tree bomb is refused too
    if sandbox is not None:
        sandbox.give(repo)

    async def run(*args: str) -> None:
        await git.in_workdir(repo, args, sandbox)

    await run("read-tree", "-u", "--reset", state.worktree)
    await run("read-tree", state.index_commit)
    for ref in (WORKTREE_REF, INDEX_REF):
        await run("update-ref", "-d", ref)


async def _listing(git: Git, repo: Path, tree: str, sizes: bool = False) -> list[list[str]]:
    """The entries of `tree`, recursively: [mode, type, object, (size,) path] each."""
    args: list[str | Path] = ["-C", repo, "ls-tree", "-r", "-z", *(["-l"] if sizes else []), tree]
    raw = await git.capped(*args, limit=MAX_LISTING_BYTES)
    if raw is None:
        raise ClaudeHooksError(
            f"the saved state's tree lists more than {MAX_LISTING_BYTES} bytes of entries"
        )
    entries = []
    for entry in raw.decode("utf-8", "surrogateescape").split("\0"):
        if entry:
            meta, _, path = entry.partition("\t")
            entries.append([*meta.split(), path])
    return entries


async def _files_bytes(git: Git, repo: Path, tree: str) -> int:
    """The bytes of the files of `tree` once checked out (a link counts its target's length)."""
    entries = await _listing(git, repo, tree, sizes=True)
    return sum(int(entry[3]) for entry in entries if entry[1] == "blob")
