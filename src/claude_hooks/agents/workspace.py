"""Where an agent works: one directory per session key, the same for every instance of a type.

With `workdir = "worktree"` that directory is a git repository of its own, cloned from the
service's cache of the repository (`<data_dir>/mirrors/<owner>/<repo>.git`, bare, fetched
before every task) on the branch `<type>/<number>-<slug>`; with `workdir = "none"` it is a
plain directory. Stable paths let any instance resume a Claude session where it left off.

The agent may do what it likes to its own repository (config, hooks, refs): the service never
runs git with a configuration the agent can write. It clones a new workdir into a fresh
repository; a workdir that exists is brought up to date, and its commits are taken back as a
bundle, by git running in the agent's sandbox as the agent. The service then fetches the
bundle into the mirror and pushes the session's branch itself, with the type's token.

Every git the service runs is hardened (`_Git`): no system or global config, no hooks, no
fsmonitor, and a protocol allow-list (https; http only when the forge's URL is http; file
only for a `file://` clone URL and the service's own local copies). The type's token reaches
git only through the environment of the network commands: never argv, a URL or a config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import re
import shlex
import shutil
import signal
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import quote

from claude_hooks.agents import resources
from claude_hooks.agents.run_result import RunResult
from claude_hooks.agents.sandbox import Sandbox
from claude_hooks.agents.worktree_state import Captured, apply, capture
from claude_hooks.config import TypeConfig, size_bytes
from claude_hooks.core.domain import Task, TaskKind
from claude_hooks.errors import ClaudeHooksError
from claude_hooks.store.worktree_states import WorktreeState, WorktreeStateStore

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
SLUG_LENGTH = 40
GIT_TIMEOUT = 600.0
_PR_KINDS = (TaskKind.REVIEW_PR, TaskKind.MERGE_PR)
_PASSED_TO_GIT = ("PATH", "HOME", "USER", "LOGNAME", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
MAX_BUNDLE_BYTES = 2 * 1024**3
MAX_STATE_BYTES = 64 * 1024**2
_WORKDIR_REFSPEC = "+refs/remotes/origin/*:refs/remotes/origin/*"
_FETCH_REFSPECS = (
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/pull/*/head:refs/remotes/origin/pr/*",
)

RemoteUrl = Callable[[str], str]


class WorkspaceError(ClaudeHooksError):
    """A workdir could not be prepared or removed (git failed, the remote has no branch...)."""


class OutputTooLargeError(WorkspaceError):
    """git wrote more than the limit set for it (a bundle)."""


def key_path(session_key: str) -> Path:
    """`dev:acme/widget:17` -> `dev/acme/widget/17`, each part made safe for a file name.

    Injective: anything outside `[A-Za-z0-9._-]` (`%` included), a leading or trailing dot and
    an empty part are percent-encoded, so two names never share a directory."""
    return Path(*(_file_name(part) for part in re.split(r"[:/]", session_key)))


def _file_name(part: str) -> str:
    encoded = _UNSAFE.sub(lambda match: quote(match.group(), safe=""), part)
    if not encoded:
        return "%00"
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if encoded.endswith("."):
        encoded = encoded[:-1] + "%2E"
    return encoded


def slug(title: object, limit: int = SLUG_LENGTH) -> str:
    """`"Fix: the Widget's crash!"` -> `fix-the-widget-s-crash`; "" when nothing is left."""
    if not isinstance(title, str):
        return ""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    text = _NOT_SLUG.sub("-", ascii_title.lower()).strip("-")
    return text[:limit].rstrip("-")


def branch_name(agent_type: str, number: int, title: object) -> str:
    tail = slug(title)
    return f"{agent_type}/{number}-{tail}" if tail else f"{agent_type}/{number}"


def current_branch(workdir: Path) -> str | None:
    """The branch checked out in a git work tree (read from its files), or None."""
    dot_git = workdir / ".git"
    try:
        if dot_git.is_file():
            pointer = dot_git.read_text().strip()
            if not pointer.startswith("gitdir:"):
                return None
            gitdir = workdir / pointer.removeprefix("gitdir:").strip()
        else:
            gitdir = dot_git
        head = (gitdir / "HEAD").read_text().strip()
    except OSError:
        return None
    prefix = "ref: refs/heads/"
    return head.removeprefix(prefix) if head.startswith(prefix) else None


def split_key(session_key: str) -> tuple[str, str, int]:
    """`dev:acme/widget:17` -> ("dev", "acme/widget", 17); ValueError if it is not a key."""
    agent_type, _, rest = session_key.partition(":")
    repo, _, number = rest.rpartition(":")
    if not agent_type or "/" not in repo or not number.isdigit():
        raise ValueError(f"not a session key: {session_key!r}")
    return agent_type, repo, int(number)


class Workspaces:
    """Workdirs under `<data_dir>/workdirs`, repository caches under `<data_dir>/mirrors`.

    `remote_url(repo)` gives the URL to clone (default `<forgejo_url>/<owner>/<repo>.git`);
    tests point it at a local bare repository.

    `states` (set when nodes share the database): after every run the session's worktree
    state is saved there (`deliver`), and `prepare` restores it when this node's copy is
    missing or older; `<data_dir>/worktree-states/<key>` holds the state this copy is at.
    """

    def __init__(
        self,
        data_dir: Path,
        forgejo_url: str = "",
        remote_url: RemoteUrl | None = None,
        git: str = "git",
        git_timeout: float = GIT_TIMEOUT,
        max_bundle_bytes: int = MAX_BUNDLE_BYTES,
        states: WorktreeStateStore | None = None,
        max_state_bytes: int = MAX_STATE_BYTES,
        node: str | None = None,
        room: Callable[[], bool] | None = None,
    ) -> None:
        self.root = data_dir / "workdirs"
        self.room = room  # False while the disk is short: worktree states are not saved
        self.mirrors = data_dir / "mirrors"
        self.bundles = data_dir / "bundles"
        self.forgejo_url = forgejo_url.rstrip("/")
        self._remote_url = remote_url
        self.git = git
        self.git_timeout = git_timeout
        self.max_bundle_bytes = max_bundle_bytes
        self.states = states
        self.max_state_bytes = max_state_bytes
        self.node = node
        self.markers = data_dir / "worktree-states"
        self._locks: dict[str, asyncio.Lock] = {}

    def workdir(self, session_key: str) -> Path:
        return (self.root / key_path(session_key)).resolve()

    def mirror(self, repo: str) -> Path:
        owner, _, name = repo.partition("/")
        return (self.mirrors / key_path(owner) / f"{key_path(name)}.git").resolve()

    def remote_url(self, repo: str) -> str:
        if self._remote_url is not None:
            return self._remote_url(repo)
        if not self.forgejo_url:
            raise WorkspaceError(
                f"cannot clone {repo}: [forgejo] url is not set, so there is no remote to clone"
            )
        return f"{self.forgejo_url}/{repo}.git"

    def session_keys(self) -> list[str]:
        """The session keys that have a workdir (`<type>/<owner>/<repo>/<number>` folders)."""
        if not self.root.is_dir():
            return []
        return sorted(
            f"{path.parts[-4]}:{path.parts[-3]}/{path.parts[-2]}:{path.parts[-1]}"
            for path in self.root.glob("*/*/*/*")
            if path.is_dir() and path.name.isdigit()
        )

    def _git(self, type_config: TypeConfig | None, url: str = "") -> _Git:
        token = None
        if type_config is not None and type_config.token is not None:
            token = type_config.token.get_secret_value()
        return _Git(self.git, self.git_timeout, token, network_protocols(url))

    # preparing

    async def prepare(
        self, task: Task, type_config: TypeConfig, sandbox: Sandbox | None = None
    ) -> Path:
        """The task's workdir, ready: a repository up to date, or a plain directory."""
        path = self.workdir(task.session_key)
        if type_config.workdir == "none":
            path.mkdir(parents=True, exist_ok=True)
            if sandbox is not None:
                sandbox.give(path)
            return path
        url = self.remote_url(task.repo)
        git = self._git(type_config, url)
        async with self._lock(task.repo):
            mirror = await self._update_mirror(git, task.repo, url)
            branch = await self._session_branch(git, mirror, task)
            restored = await self._restore(
                git, mirror, path, task, branch, url, sandbox, size_bytes(type_config.max_disk)
            )
            if restored:
                pass
            elif _found(path) == "git":
                if sandbox is not None:
                    sandbox.give(path)  # another instance's account may have it
                await self._refresh(git, mirror, path, sandbox)
                return path
            else:
                if path.exists():
                    log.warning("workdir %s is not a git repository: making it anew", path)
                    shutil.rmtree(path)
                await self._clone(git, mirror, path, branch, url)
        if sandbox is not None:
            sandbox.give(path)
        return path

    def _lock(self, repo: str) -> asyncio.Lock:
        lock = self._locks.get(repo)
        if lock is None:
            lock = self._locks[repo] = asyncio.Lock()
        return lock

    async def _update_mirror(self, git: _Git, repo: str, url: str) -> Path:
        mirror = self.mirror(repo)
        if not (mirror / "HEAD").is_file():
            await self._create_mirror(git, mirror, url)
            return mirror
        await git.run("-C", mirror, "remote", "set-url", "origin", url)
        await git.run("-C", mirror, "fetch", "--prune", "--quiet", "origin", network=True)
        if not await git.ok("-C", mirror, "rev-parse", "--verify", "--quiet", "origin/HEAD"):
            await git.ok("-C", mirror, "remote", "set-head", "origin", "--auto", network=True)
        return mirror

    async def _create_mirror(self, git: _Git, mirror: Path, url: str) -> None:
        """Clone into a side folder and rename it, so a failed clone leaves nothing half-made.

        Its files are world-readable (`--shared=0644`): sandboxed agents fetch from it, bound
        read-only, while the data dir above it stays private.
        """
        partial = mirror.with_name(mirror.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            await git.run("init", "--bare", "--quiet", "--shared=0644", partial)
            await git.run("-C", partial, "remote", "add", "origin", url)
            await git.run("-C", partial, "config", "--unset-all", "remote.origin.fetch")
            for refspec in _FETCH_REFSPECS:
                await git.run("-C", partial, "config", "--add", "remote.origin.fetch", refspec)
            await git.run("-C", partial, "fetch", "--prune", "--quiet", "origin", network=True)
            # An empty repository has no HEAD to follow yet: `_start_point` says so.
            await git.ok("-C", partial, "remote", "set-head", "origin", "--auto", network=True)
            partial.rename(mirror)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    async def _session_branch(self, git: _Git, mirror: Path, task: Task) -> str:
        """The session's branch in the mirror: kept, taken up from the remote, or made."""
        local = await self._branches(git, mirror, "refs/heads", task)
        if local:
            return local[0]
        remote = await self._branches(git, mirror, "refs/remotes/origin", task)
        if remote:
            # Pushed from another host's workdir: carry on from it.
            await git.run("-C", mirror, "branch", "--no-track", remote[0], f"origin/{remote[0]}")
            return remote[0]
        branch = branch_name(task.type, task.number, task.payload.get("title"))
        if not await git.ok("check-ref-format", "--branch", branch):
            raise WorkspaceError(f"cannot make a branch named {branch!r} for {task.session_key}")
        start = await self._start_point(git, mirror, task)
        await git.run("-C", mirror, "branch", "--no-track", branch, start)
        return branch

    async def _clone(self, git: _Git, mirror: Path, path: Path, branch: str, url: str) -> None:
        """A fresh repository (so its config is the service's) with the mirror's branches."""
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            await git.run("init", "--quiet", f"--initial-branch={branch}", partial)
            await git.run(
                "-C", partial, "fetch", "--quiet", "--no-tags", "--update-head-ok", mirror,
                _WORKDIR_REFSPEC, f"+refs/heads/{branch}:refs/heads/{branch}", local=True,
            )  # fmt: skip
            await git.run("-C", partial, "reset", "--hard", "--quiet", "HEAD")
            await git.run("-C", partial, "remote", "add", "origin", url)
            if await git.ok("-C", partial, "rev-parse", "--verify", "--quiet", f"origin/{branch}"):
                await git.run("-C", partial, "branch", f"--set-upstream-to=origin/{branch}")
            partial.rename(path)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    async def _refresh(self, git: _Git, mirror: Path, path: Path, sandbox: Sandbox | None) -> None:
        """Bring the workdir's `origin/*` up to the mirror's, as the agent, in its sandbox."""
        # The mirror belongs to the service: its upload-pack must trust it (git run by the
        # agent's account would refuse it as of "dubious ownership").
        trusted = shlex.quote(f"safe.directory={mirror}")
        upload_pack = f"--upload-pack=git -c {trusted} upload-pack"
        args = (
            "fetch",
            "--quiet",
            "--no-tags",
            "--prune",
            upload_pack,
            str(mirror),
            _WORKDIR_REFSPEC,
        )
        await git.in_workdir(path, args, sandbox, readable=[mirror])

    async def _branches(self, git: _Git, mirror: Path, prefix: str, task: Task) -> list[str]:
        """Branches `<type>/<number>` or `<type>/<number>-*` under a ref prefix."""
        base = f"{prefix}/{task.type}/{task.number}"
        out = await git.run(
            "-C",
            mirror,
            "for-each-ref",
            f"--format=%(refname:lstrip={prefix.count('/') + 1})",
            "--sort=refname",
            base,
            f"{base}-*",
        )
        wanted = f"{task.type}/{task.number}"
        return [b for b in out.split() if b == wanted or b.startswith(f"{wanted}-")]

    async def _start_point(self, git: _Git, mirror: Path, task: Task) -> str:
        """A pull request's head for the PR kinds, else the remote's default branch."""
        candidates: list[str] = []
        head_sha = task.payload.get("head_sha")
        if isinstance(head_sha, str) and re.fullmatch(r"[0-9a-fA-F]{7,64}", head_sha):
            candidates.append(head_sha)
        if task.kind in _PR_KINDS:
            pr_number = task.payload.get("pr_number") or task.number
            candidates.append(f"refs/remotes/origin/pr/{pr_number}")
        candidates.append("refs/remotes/origin/HEAD")
        for candidate in candidates:
            if await git.ok(
                "-C", mirror, "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"
            ):
                return candidate
        raise WorkspaceError(f"{task.repo} has no branch to start from (is the repository empty?)")

    async def session_branch(self, task: Task) -> str | None:
        """The session's branch, once a task of it has prepared its workdir."""
        mirror = self.mirror(task.repo)
        if not (mirror / "HEAD").is_file():
            return None
        found = await self._branches(self._git(None), mirror, "refs/heads", task)
        return found[0] if found else None

    async def default_branch(self, repo: str) -> str:
        """The remote's default branch, as the mirror last saw it ("main" if unknown)."""
        head = await self._git(None).output(
            "-C", self.mirror(repo), "symbolic-ref", "--quiet", "refs/remotes/origin/HEAD"
        )
        return head.strip().removeprefix("refs/remotes/origin/") or "main"

    # moving between nodes

    def _marker(self, session_key: str) -> Path:
        return self.markers / key_path(session_key)

    def _marked(self, session_key: str) -> str | None:
        """The saved state this node's copy of the workdir is at, if known."""
        try:
            return self._marker(session_key).read_text().strip() or None
        except OSError:
            return None

    def _mark(self, session_key: str, worktree: str | None) -> None:
        marker = self._marker(session_key)
        if worktree is None:
            marker.unlink(missing_ok=True)
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(worktree + "\n")

    async def _restore(
        self,
        git: _Git,
        mirror: Path,
        path: Path,
        task: Task,
        branch: str,
        url: str,
        sandbox: Sandbox | None,
        max_disk: int,
    ) -> bool:
        """Replace this node's copy by the saved state when it is missing or older; False
        when there is nothing newer to restore, or it cannot be (then the copy stays).
        Its files, at most the type's `max_disk`, are written by git in the agent's sandbox."""
        key = task.session_key
        if self.states is None:
            return False
        saved = await self.states.saved_worktree(key)
        if saved is None or saved == self._marked(key):
            return False
        state = await self.states.get_state(key)
        if state is None:
            return False
        self.bundles.mkdir(mode=0o700, parents=True, exist_ok=True)
        bundle = self.bundles / f"{task.id}.restore.bundle"
        restored = path.with_name(path.name + ".restored")
        shutil.rmtree(restored, ignore_errors=True)
        captured = Captured(state.branch, state.head, state.worktree, state.index_commit)
        try:
            bundle.write_bytes(state.bundle)
            await self._clone(git, mirror, restored, branch, url)
            await apply(git, restored, bundle, captured, sandbox, max_disk)
        except ClaudeHooksError as exc:
            shutil.rmtree(restored, ignore_errors=True)
            fallback = "its branch" if _found(path) == "absent" else "this node's copy"
            log.warning(
                "cannot restore the worktree of %s saved by node %s (%s): continuing from %s",
                key, state.node, exc, fallback,
            )  # fmt: skip
            return False
        finally:
            bundle.unlink(missing_ok=True)
        if _found(path) != "absent":
            shutil.rmtree(path)
        restored.rename(path)
        self._mark(key, state.worktree)
        log.info("restored the worktree of %s saved by node %s", key, state.node)
        return True

    async def save_state(
        self, task: Task, type_config: TypeConfig, sandbox: Sandbox | None
    ) -> int | None:
        """Save the workdir's exact state for the next node; the bundle's size, or None if
        nothing was saved. A state larger than `max_state_bytes` is not kept (a warning says
        so): another node then continues from the pushed branch."""
        key = task.session_key
        path = self.workdir(key)
        if self.states is None or type_config.workdir != "worktree" or _found(path) != "git":
            return None
        if self.room is not None and not self.room():
            log.warning(
                "the worktree state of %s is not saved: the disk is below server.min_free_disk",
                key,
            )
            await self.states.forget_state(key)  # an older state must not be restored
            self._mark(key, None)
            return None
        self.bundles.mkdir(mode=0o700, parents=True, exist_ok=True)
        scratch = self.bundles / f"{task.id}.state"
        bundle = self.bundles / f"{task.id}.state.bundle"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if sandbox is not None:
            sandbox.give(scratch)
        try:
            git = self._git(None)
            captured = await capture(git, path, sandbox, scratch, bundle, self.max_state_bytes)
            data = bundle.read_bytes() if captured is not None else b""
        except OutputTooLargeError:
            log.warning(
                "the worktree state of %s is larger than server.max_worktree_state_bytes "
                "(%d): not saved, so another node continues from its pushed branch; raise "
                "the limit or keep large files out of the repository (.gitignore)",
                key, self.max_state_bytes,
            )  # fmt: skip
            captured = None
        except ClaudeHooksError as exc:
            log.warning("cannot save the worktree state of %s: %s", key, exc)
            captured = None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            bundle.unlink(missing_ok=True)
        try:
            if captured is None:
                # A state older than this copy must not be restored elsewhere.
                await self.states.forget_state(key)
                self._mark(key, None)
                return None
            state = WorktreeState(
                key, captured.branch, captured.head, captured.worktree, captured.index_commit,
                data, self.node, time.time(),
            )  # fmt: skip
            await self.states.put_state(state)
        except Exception as exc:
            if resources.exhausted(exc):
                raise
            log.exception("cannot store the worktree state of %s", key)
            return None
        self._mark(key, captured.worktree)
        return len(data)

    # delivering

    async def deliver(
        self, task: Task, type_config: TypeConfig, sandbox: Sandbox | None, result: RunResult
    ) -> RunResult:
        """After a run: push the session's branch if the agent committed to it, and save the
        workdir's state for the next node (when nodes share the database).

        A push that fails turns the task's result into a failure that says why.
        """
        if type_config.workdir != "worktree" or _found(self.workdir(task.session_key)) != "git":
            return result
        try:
            pushed = await self.push_session(task, type_config, sandbox)
        except WorkspaceError as exc:
            result = dataclasses.replace(
                result,
                succeeded=False,
                error=f"{result.error + '; ' if result.error else ''}"
                f"the session's commits were not pushed: {exc}",
            )
            pushed = None
        saved = await self.save_state(task, type_config, sandbox)
        extra: dict[str, object] = {"pushed": pushed} if pushed else {}
        if saved is not None:
            extra["worktree_state_bytes"] = saved
        if extra:
            return dataclasses.replace(result, details={**result.details, **extra})
        return result

    async def push_session(
        self, task: Task, type_config: TypeConfig, sandbox: Sandbox | None
    ) -> str | None:
        """Take the session branch's commits from the workdir and push them to the forge.

        Only the session's own branch (`<type>/<number>-…`) is taken, as a bundle written by
        git in the agent's sandbox; the service checks it while fetching it into the mirror
        and pushes with the type's token. Returns the branch pushed, or None if nothing new.
        """
        path = self.workdir(task.session_key)
        if _found(path) != "git":
            return None
        url = self.remote_url(task.repo)
        git = self._git(type_config, url)
        mirror = self.mirror(task.repo)
        async with self._lock(task.repo):
            branches = await self._branches(git, mirror, "refs/heads", task)
            if not branches:
                return None
            branch = branches[0]
            bundle = await self._take_bundle(git, path, branch, sandbox, task.id)
            try:
                await git.run(
                    "-C", mirror, "-c", "transfer.fsckObjects=true", "fetch", "--quiet",
                    "--no-tags", bundle, f"+refs/heads/{branch}:refs/heads/{branch}", local=True,
                )  # fmt: skip
            finally:
                bundle.unlink(missing_ok=True)
            ahead = await git.run(
                "-C", mirror, "rev-list", "--count", f"refs/heads/{branch}", "--not", "--remotes"
            )
            if int(ahead.strip() or 0) == 0:
                return None
            await git.run(
                "-C", mirror, "push", "--quiet", "origin",
                f"refs/heads/{branch}:refs/heads/{branch}", network=True,
            )  # fmt: skip
        log.info("pushed %s of %s for %s", branch, task.repo, task.session_key)
        return branch

    async def _take_bundle(
        self, git: _Git, path: Path, branch: str, sandbox: Sandbox | None, name: str
    ) -> Path:
        self.bundles.mkdir(mode=0o700, parents=True, exist_ok=True)
        bundle = self.bundles / f"{name}.bundle"
        args = ("bundle", "create", "--quiet", "-", f"refs/heads/{branch}")
        with bundle.open("wb") as out:
            try:
                await git.in_workdir(path, args, sandbox, out=out, limit=self.max_bundle_bytes)
            except WorkspaceError as exc:
                bundle.unlink(missing_ok=True)
                raise WorkspaceError(
                    f"cannot read the branch {branch!r} in the workdir: {exc}"
                ) from None
        return bundle

    # cleaning up

    async def cleanup(self, session_key: str) -> bool:
        """Remove a session key's workdir and its branch in the mirror; False if there was none.

        For closed issues: uncommitted work and unpushed commits of that workdir are dropped.
        """
        path = self.workdir(session_key)
        if self.states is not None:
            await self.states.forget_state(session_key)
        self._mark(session_key, None)
        if not path.exists():
            return False
        try:
            agent_type, repo, number = split_key(session_key)
        except ValueError:
            agent_type, repo, number = "", "", 0
        mirror = self.mirror(repo) if repo else None
        git = self._git(None)
        async with self._lock(repo):
            shutil.rmtree(path)
            if mirror is not None and (mirror / "HEAD").is_file():
                for prefix in (
                    f"refs/heads/{agent_type}/{number}",
                    f"refs/heads/{agent_type}/{number}-*",
                ):
                    out = await git.output(
                        "-C", mirror, "for-each-ref", "--format=%(refname)", prefix
                    )
                    for ref in out.split():
                        await git.ok("-C", mirror, "update-ref", "-d", ref)
        _remove_empty_parents(path.parent, self.root)
        return True


def network_protocols(url: str) -> tuple[str, ...]:
    """The protocols git may use to reach the forge: https, plus http or file only when the
    clone URL itself is one (insteadOf cannot send the token elsewhere)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    allowed = ["https"]
    if scheme in ("http", "file"):
        allowed.append(scheme)
    elif url.startswith("/"):
        allowed.append("file")
    return tuple(allowed)


def _found(path: Path) -> str:
    """ "absent", "git" (it has a .git entry) or "other"."""
    if not path.exists():
        return "absent"
    return "git" if (path / ".git").exists() else "other"


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _hardening(protocols: tuple[str, ...]) -> list[str]:
    """`-c` options of every git the service runs: nothing from the repository may run code
    in the service or send its token elsewhere."""
    args = [
        "-c", "core.hooksPath=/dev/null",
        "-c", "core.fsmonitor=false",
        "-c", "core.sshCommand=false",
        "-c", "credential.helper=",
        "-c", "gc.auto=0",
        "-c", "maintenance.auto=false",
        "-c", "safe.directory=*",
        "-c", "protocol.allow=never",
    ]  # fmt: skip
    for protocol in protocols:
        args += ["-c", f"protocol.{protocol}.allow=always"]
    return args


class _Git:
    """Hardened git subprocesses with a clean environment; the token only in the environment."""

    def __init__(
        self, git: str, timeout: float, token: str | None, protocols: tuple[str, ...] = ("https",)
    ) -> None:
        self.git = git
        self.timeout = timeout
        self.token = token
        self.protocols = protocols

    def _env(self, network: bool) -> dict[str, str]:
        env = {name: os.environ[name] for name in _PASSED_TO_GIT if name in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(
            LC_ALL="C",
            GIT_TERMINAL_PROMPT="0",
            GIT_ASKPASS="",
            SSH_ASKPASS="",
            GCM_INTERACTIVE="never",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL="/dev/null",
            GIT_PROTOCOL_FROM_USER="0",
        )
        if network and self.token:
            env.update(
                GIT_CONFIG_COUNT="1",
                GIT_CONFIG_KEY_0="http.extraHeader",
                GIT_CONFIG_VALUE_0=f"Authorization: token {self.token}",
            )
        return env

    def _argv(self, args: tuple[str | Path, ...], local: bool) -> list[str]:
        protocols = ("file",) if local else self.protocols
        return [self.git, *_hardening(protocols), *(str(a) for a in args)]

    def _redact(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    async def _exec(
        self,
        argv: list[str],
        env: dict[str, str],
        verb: str,
        out: IO[bytes] | None = None,
        limit: int = 0,
        cwd: Path | None = None,
    ) -> tuple[int, str, str]:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise WorkspaceError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        assert process.stdout is not None
        assert process.stderr is not None
        reader: asyncio.Task[bytes] | None = None
        try:
            if out is None:
                stdout, err = await asyncio.wait_for(process.communicate(), self.timeout)
            else:
                stdout = b""
                reader = asyncio.create_task(process.stderr.read())
                await asyncio.wait_for(_copy_capped(process.stdout, out, limit, verb), self.timeout)
                err = await reader
                await process.wait()
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            await asyncio.shield(_reap(process))
            if isinstance(exc, TimeoutError):
                raise WorkspaceError(f"git {verb} took longer than {self.timeout:g} s") from None
            raise
        code = process.returncode
        assert code is not None
        return code, stdout.decode(errors="replace"), self._redact(err.decode(errors="replace"))

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
    ) -> str:
        """git in an agent's repository: in its sandbox as the agent when it has one."""
        argv = self._argv(args, local=True)
        full_env = {**self._env(network=False), **(env or {})}
        if sandbox is not None:
            full_env["HOME"] = "/tmp"
            argv = sandbox.wrap(argv, path, writable=writable or [], readable=readable or [])
        code, stdout, err = await self._exec(argv, full_env, _verb(args), out, limit, cwd=path)
        if code != 0:
            raise WorkspaceError(f"git {_verb(args)} failed (exit {code}): {err.strip()}")
        return stdout

    async def run(self, *args: str | Path, network: bool = False, local: bool = False) -> str:
        code, out, err = await self._exec(self._argv(args, local), self._env(network), _verb(args))
        if code != 0:
            raise WorkspaceError(f"git {_verb(args)} failed (exit {code}): {err.strip()}")
        return out

    async def capped(self, *args: str | Path, limit: int) -> bytes | None:
        """The output of a local git command; None if it is longer than `limit` bytes."""
        out = io.BytesIO()
        try:
            code, _, err = await self._exec(
                self._argv(args, local=True), self._env(False), _verb(args), out, limit
            )
        except OutputTooLargeError:
            return None
        if code != 0:
            raise WorkspaceError(f"git {_verb(args)} failed (exit {code}): {err.strip()}")
        return out.getvalue()

    async def output(self, *args: str | Path) -> str:
        code, out, _ = await self._exec(self._argv(args, False), self._env(False), _verb(args))
        return out if code == 0 else ""

    async def ok(self, *args: str | Path, network: bool = False) -> bool:
        code, _, _ = await self._exec(self._argv(args, False), self._env(network), _verb(args))
        return code == 0


async def _reap(process: asyncio.subprocess.Process) -> None:
    """After a kill: read both pipes to their end (a stopped reader leaves a pipe paused,
    its end never seen, its transport open), then wait for the process."""
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                while await stream.read(65536):
                    pass
    await process.wait()


async def _copy_capped(stream: asyncio.StreamReader, out: IO[bytes], limit: int, verb: str) -> None:
    written = 0
    while chunk := await stream.read(65536):
        written += len(chunk)
        if limit and written > limit:
            raise OutputTooLargeError(f"git {verb} wrote more than {limit} bytes")
        out.write(chunk)


def _verb(args: tuple[str | Path, ...]) -> str:
    """`("-C", path, "fetch", ...)` -> "fetch ..." (no paths of the data dir in messages)."""
    words = [str(a) for a in args]
    if words[:1] == ["-C"]:
        words = words[2:]
    return " ".join(words[:2])
