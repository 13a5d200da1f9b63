"""The service's side of the forge: one API client per type token, sender permission checks
(cached), and the look-ups the flows need when a webhook leaves something out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx

from claude_hooks.config import Config
from claude_hooks.forge.client import ForgejoClient, PullInfo
from claude_hooks.forge.payloads import Branch, PullRequest, User

log = logging.getLogger(__name__)
LABEL_COLOR = "#d93f0b"  # the escalation label, when the service creates it
TRIGGER_COLOR = "#1d76db"  # labels that assign an agent type (`[types.<t>] labels`)


def _split(repo: str) -> tuple[str, str]:
    owner, _, name = repo.partition("/")
    return owner, name


def pull_model(info: PullInfo) -> PullRequest:
    return PullRequest(
        number=info.number,
        title=info.title,
        body=info.body,
        state=info.state,
        user=User(login=info.user_login),
        merged=info.merged,
        head=Branch(ref=info.head_ref, sha=info.head_sha),
        base=Branch(ref=info.base_ref, sha=""),
        html_url=info.html_url,
    )


class Forge:
    """Forgejo API access for the service; every call is a no-op answer when no URL is set."""

    def __init__(
        self,
        config: Config,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.transport = transport
        self.clock = clock
        self._clients: dict[str | None, ForgejoClient] = {}
        self._permissions: dict[tuple[str, str], tuple[float, bool]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.config.forgejo.url)

    def client(self, agent_type: str | None) -> ForgejoClient:
        """The client with a type's token; `None`: the service's own token for checks."""
        return self._client(agent_type, self.config.forgejo.retries)

    def reader(self) -> ForgejoClient:
        """The service's client that tries once: for look-ups the service can do without for
        a while (repositories' policy files), so a forge that is down costs one attempt."""
        return self._client(None, 0)

    def _client(self, agent_type: str | None, retries: int) -> ForgejoClient:
        key = agent_type if retries == self.config.forgejo.retries else f"{agent_type}/{retries}"
        client = self._clients.get(key)
        if client is None:
            if agent_type is None:
                secret = self.config.forgejo.token or next(
                    (t.token for _, t in sorted(self.config.types.items()) if t.token), None
                )
                label = "forgejo"
            else:
                secret = self.config.types[agent_type].token
                label = agent_type
            client = ForgejoClient(
                self.config.forgejo.url,
                secret.get_secret_value() if secret else None,
                label=label,
                timeout=self.config.forgejo.timeout,
                retries=retries,
                transport=self.transport,
            )
            self._clients[key] = client
        return client

    def prepare(self) -> None:
        """Build the client for permission checks now: its TLS set-up is synchronous and took
        seconds on a busy machine, time a delivery's answer does not have."""
        if self.enabled:
            self.client(None)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def may_trigger(self, repo: str, login: str) -> bool:
        """Whether `login` has write access to `repo` (cached for a few minutes)."""
        if not self.enabled:
            return False
        key = (repo, login.lower())
        now = self.clock()
        cached = self._permissions.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        owner, name = _split(repo)
        allowed = await self.client(None).can_write(owner, name, login)
        self._permissions[key] = (now + self.config.security.permission_cache_seconds, allowed)
        return allowed

    async def find_pull(self, repo: str, number: int) -> PullRequest | None:
        if not self.enabled:
            return None
        owner, name = _split(repo)
        return pull_model(await self.client(None).get_pull(owner, name, number))

    async def find_head(self, repo: str, sha: str) -> int | None:
        if not self.enabled:
            return None
        owner, name = _split(repo)
        found = await self.client(None).pull_for_head(owner, name, sha)
        return found.number if found else None

    async def comment(self, as_type: str, repo: str, number: int, body: str) -> int:
        owner, name = _split(repo)
        return await self.client(as_type).comment(owner, name, number, body)

    async def edit_comment(self, as_type: str, repo: str, comment_id: int, body: str) -> None:
        owner, name = _split(repo)
        await self.client(as_type).edit_comment(owner, name, comment_id, body)

    async def react(self, as_type: str, repo: str, comment_id: int, content: str) -> None:
        owner, name = _split(repo)
        await self.client(as_type).react(owner, name, comment_id, content)

    async def sync_labels(self, repo: str, names: list[str]) -> list[str]:
        """Create those of `names` the repository lacks, with the service's token; the ones
        created."""
        owner, repo_name = _split(repo)
        client = self.client(None)
        created = []
        for name in names:
            if await client.label_id(owner, repo_name, name) is None:
                await client.create_label(owner, repo_name, name, TRIGGER_COLOR)
                created.append(name)
        return created

    async def label(self, as_type: str, repo: str, number: int, name: str) -> None:
        """Put the label `name` on an issue, creating it in the repository if missing."""
        owner, repo_name = _split(repo)
        client = self.client(as_type)
        label_id = await client.label_id(owner, repo_name, name)
        if label_id is None:
            label_id = await client.create_label(owner, repo_name, name, LABEL_COLOR)
        await client.add_labels(owner, repo_name, number, [label_id])
