"""Reading repositories' policy files from the forge, by commit.

A repository's file is read from its default branch for issue work and from a pull request's
base branch for PR work — never from a PR's head, so a PR cannot change the rules it runs
under. Files are cached by commit sha (a commit's file never changes); which commit a branch
is at is cached for `BRANCH_SECONDS` and forgotten when a push to that branch arrives, so a
push to the default branch takes effect at once.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable

from claude_hooks.core.policy import (
    FILE_PATHS,
    ORGANISATION,
    ORGANISATION_REPOSITORY,
    REPOSITORY,
    Layer,
    PolicyFile,
)
from claude_hooks.forge.client import ForgejoClient, ForgejoError, ForgejoNotFound

log = logging.getLogger(__name__)
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
BRANCH_SECONDS = 60.0
CACHED_FILES = 1024


class PolicyFiles:
    """The organisation's and the repository's files for one repository at one branch."""

    def __init__(
        self, client: Callable[[], ForgejoClient], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._clock = clock
        self._heads: dict[tuple[str, str], tuple[float, str]] = {}
        self._defaults: dict[str, str] = {}
        self._files: OrderedDict[tuple[str, str], PolicyFile | None] = OrderedDict()

    async def for_repository(self, repo: str, branch: str | None = None) -> list[PolicyFile]:
        """The organisation's file then the repository's (each if it has one), `branch` being
        the PR's base branch (or a commit's full sha), None for the default branch. The
        organisation's own file is read from its repository's default branch."""
        owner, _, name = repo.partition("/")
        files: list[PolicyFile] = []
        if name != ORGANISATION_REPOSITORY:
            organisation = await self._file(
                f"{owner}/{ORGANISATION_REPOSITORY}", None, ORGANISATION
            )
            if organisation is not None:
                files.append(organisation)
        own = await self._file(repo, branch, REPOSITORY)
        if own is not None:
            files.append(own)
        return files

    def forget_branch(self, repo: str, branch: str) -> None:
        """A push moved `branch`: its next read asks the forge which commit it is at."""
        self._heads.pop((repo, branch), None)

    async def _file(self, repo: str, branch: str | None, layer: Layer) -> PolicyFile | None:
        owner, _, name = repo.partition("/")
        client = self._client()
        try:
            if branch is None:
                branch = self._defaults.get(repo) or await client.default_branch(owner, name)
                self._defaults[repo] = branch
            sha = await self._head(client, repo, branch)
        except ForgejoNotFound:
            return None  # no organisation repository, or no such branch: no file
        key = (repo, sha)
        if key in self._files:
            self._files.move_to_end(key)
            return self._files[key]
        found: PolicyFile | None = None
        for path in FILE_PATHS:
            text = await client.file_at(owner, name, path, sha)
            if text is not None:
                found = PolicyFile(layer, f"{repo}@{sha[:10]}:{path}", text)
                break
        self._files[key] = found
        while len(self._files) > CACHED_FILES:
            self._files.popitem(last=False)
        return found

    async def _head(self, client: ForgejoClient, repo: str, branch: str) -> str:
        if _COMMIT.fullmatch(branch):
            return branch  # a commit asked for by its sha (`policy check --ref`)
        now = self._clock()
        cached = self._heads.get((repo, branch))
        if cached is not None and cached[0] > now:
            return cached[1]
        owner, _, name = repo.partition("/")
        try:
            sha = await client.branch_commit(owner, name, branch)
        except ForgejoNotFound:
            raise
        except ForgejoError as exc:
            if cached is None:
                raise
            log.warning("%s: using the policy of %s at %s: %s", repo, branch, cached[1][:10], exc)
            return cached[1]  # the forge is down: the last commit seen still holds
        self._heads[(repo, branch)] = (now + BRANCH_SECONDS, sha)
        return sha
