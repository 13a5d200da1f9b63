"""Where an agent works: one directory per session key, the same for every instance of a type.

With `workdir = "worktree"` that directory is a git worktree of a cached clone of the repository
(`<data_dir>/mirrors/<owner>/<repo>.git`, bare, fetched before every task) on the branch
`<type>/<number>-<slug>`; with `workdir = "none"` it is a plain directory. Stable paths let any
instance resume a Claude session where it left off (its transcripts are keyed by directory).

The type's Forgejo token reaches git only through the environment of the git processes
(`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_0`/`GIT_CONFIG_VALUE_0`): never argv, a URL or .git/config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from claude_hooks.config import TypeConfig
from claude_hooks.domain import Task, TaskKind
from claude_hooks.errors import ClaudeHooksError

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
SLUG_LENGTH = 40
GIT_TIMEOUT = 600.0
_PR_KINDS = (TaskKind.REVIEW_PR, TaskKind.MERGE_PR)
_PASSED_TO_GIT = ("PATH", "HOME", "USER", "LOGNAME", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
_FETCH_REFSPECS = (
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/pull/*/head:refs/remotes/origin/pr/*",
)

RemoteUrl = Callable[[str], str]


class WorkspaceError(ClaudeHooksError):
    """A workdir could not be prepared or removed (git failed, the remote has no branch...)."""


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
    """

    def __init__(
        self,
        data_dir: Path,
        forgejo_url: str = "",
        remote_url: RemoteUrl | None = None,
        git: str = "git",
        git_timeout: float = GIT_TIMEOUT,
    ) -> None:
        self.root = data_dir / "workdirs"
        self.mirrors = data_dir / "mirrors"
        self.forgejo_url = forgejo_url.rstrip("/")
        self._remote_url = remote_url
        self.git = git
        self.git_timeout = git_timeout
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

    # preparing

    async def prepare(self, task: Task, type_config: TypeConfig) -> Path:
        """The task's workdir, ready: a worktree fetched up to date, or a plain directory."""
        path = self.workdir(task.session_key)
        if type_config.workdir == "none":
            path.mkdir(parents=True, exist_ok=True)
            return path
        token = type_config.token.get_secret_value() if type_config.token is not None else None
        git = _Git(self.git, self.git_timeout, token)
        async with self._lock(task.repo):
            mirror = await self._update_mirror(git, task.repo)
            await self._ensure_worktree(git, mirror, path, task)
        return path

    def _lock(self, repo: str) -> asyncio.Lock:
        lock = self._locks.get(repo)
        if lock is None:
            lock = self._locks[repo] = asyncio.Lock()
        return lock

    async def _update_mirror(self, git: _Git, repo: str) -> Path:
        mirror = self.mirror(repo)
        url = self.remote_url(repo)
        if not (mirror / "HEAD").is_file():
            await self._create_mirror(git, mirror, url)
            return mirror
        await git.run("-C", mirror, "remote", "set-url", "origin", url)
        await git.run("-C", mirror, "fetch", "--prune", "--quiet", "origin", network=True)
        if not await git.ok("-C", mirror, "rev-parse", "--verify", "--quiet", "origin/HEAD"):
            await git.ok("-C", mirror, "remote", "set-head", "origin", "--auto", network=True)
        return mirror

    async def _create_mirror(self, git: _Git, mirror: Path, url: str) -> None:
        """Clone into a side folder and rename it, so a failed clone leaves nothing half-made."""
        partial = mirror.with_name(mirror.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            await git.run("init", "--bare", "--quiet", partial)
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

    async def _ensure_worktree(self, git: _Git, mirror: Path, path: Path, task: Task) -> None:
        found = _found(path)
        if found == "git":
            top = await git.output("-C", path, "rev-parse", "--show-toplevel")
            if top.strip() == str(path):
                return
        if found != "absent":
            log.warning("workdir %s is not a usable git worktree: making it anew", path)
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        await git.run("-C", mirror, "worktree", "prune")
        local = await self._branches(git, mirror, "refs/heads", task)
        if local:
            await git.run("-C", mirror, "worktree", "add", "--quiet", path, local[0])
            return
        remote = await self._branches(git, mirror, "refs/remotes/origin", task)
        if remote:
            # Pushed from another host's workdir: carry on from it.
            await git.run(
                "-C",
                mirror,
                "worktree",
                "add",
                "--quiet",
                "--track",
                "-b",
                remote[0],
                path,
                f"origin/{remote[0]}",
            )
            return
        branch = branch_name(task.type, task.number, task.payload.get("title"))
        if not await git.ok("check-ref-format", "--branch", branch):
            raise WorkspaceError(f"cannot make a branch named {branch!r} for {task.session_key}")
        start = await self._start_point(git, mirror, task)
        await git.run(
            "-C", mirror, "worktree", "add", "--quiet", "--no-track", "-b", branch, path, start
        )

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

    # cleaning up

    async def cleanup(self, session_key: str) -> bool:
        """Remove a session key's workdir and its branch; False if there was none.

        For closed issues: uncommitted work and unpushed commits of that workdir are dropped.
        """
        path = self.workdir(session_key)
        if not path.exists():
            return False
        try:
            _, repo, _ = split_key(session_key)
        except ValueError:
            repo = ""
        mirror = self.mirror(repo) if repo else None
        git = _Git(self.git, self.git_timeout, None)
        async with self._lock(repo):
            branch = ""
            if (path / ".git").is_file():
                branch = (await git.output("-C", path, "branch", "--show-current")).strip()
            shutil.rmtree(path)
            if mirror is not None and (mirror / "HEAD").is_file():
                await git.run("-C", mirror, "worktree", "prune")
                if branch:
                    await git.ok("-C", mirror, "branch", "--quiet", "-D", branch)
        _remove_empty_parents(path.parent, self.root)
        return True


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


class _Git:
    """git subprocesses with a clean environment; the token only in the environment."""

    def __init__(self, git: str, timeout: float, token: str | None) -> None:
        self.git = git
        self.timeout = timeout
        self.token = token

    def _env(self, network: bool) -> dict[str, str]:
        env = {name: os.environ[name] for name in _PASSED_TO_GIT if name in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(
            LC_ALL="C",
            GIT_TERMINAL_PROMPT="0",
            GIT_ASKPASS="",
            SSH_ASKPASS="",
            GCM_INTERACTIVE="never",
        )
        if network and self.token:
            env.update(
                GIT_CONFIG_COUNT="1",
                GIT_CONFIG_KEY_0="http.extraHeader",
                GIT_CONFIG_VALUE_0=f"Authorization: token {self.token}",
            )
        return env

    def _redact(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    async def _exec(self, args: tuple[str | Path, ...], network: bool) -> tuple[int, str, str]:
        argv = [self.git, *(str(a) for a in args)]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(network),
            )
        except OSError as exc:
            raise WorkspaceError(f"cannot run {self.git!r}: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(process.communicate(), self.timeout)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            if isinstance(exc, TimeoutError):
                raise WorkspaceError(
                    f"git {_verb(args)} took longer than {self.timeout:g} s"
                ) from None
            raise
        code = process.returncode
        assert code is not None
        return code, out.decode(errors="replace"), self._redact(err.decode(errors="replace"))

    async def run(self, *args: str | Path, network: bool = False) -> str:
        code, out, err = await self._exec(args, network)
        if code != 0:
            raise WorkspaceError(f"git {_verb(args)} failed (exit {code}): {err.strip()}")
        return out

    async def output(self, *args: str | Path) -> str:
        code, out, _ = await self._exec(args, False)
        return out if code == 0 else ""

    async def ok(self, *args: str | Path, network: bool = False) -> bool:
        code, _, _ = await self._exec(args, network)
        return code == 0


def _verb(args: tuple[str | Path, ...]) -> str:
    """`("-C", path, "fetch", ...)` -> "fetch ..." (no paths of the data dir in messages)."""
    words = [str(a) for a in args]
    if words[:1] == ["-C"]:
        words = words[2:]
    return " ".join(words[:2])
