"""The Messages API as a sandboxed `claude` agent reaches it: through the service, which holds
the key.

The CLI in the sandbox gets `ANTHROPIC_BASE_URL` pointing at its egress bridge and, in the
variable that held the real credential, a token made for the task: worthless anywhere else,
since only the task's own proxy socket accepts it and the socket is gone when the task ends.
The proxy checks it, puts the real credential in its place, forwards to the real base URL (the
type's or the service's `ANTHROPIC_BASE_URL`, else Anthropic's) and meters the usage each
response reports, streamed or not. Response headers pass unchanged, so the CLI still sees a
subscription's usage-limit reset (`anthropic-ratelimit-unified-*`) and tells the breaker.

The meter prices what it counts (`core.prices`) and holds the task to the type's
`max_budget_usd` as the answers stream: once the task's cost passes it, the answer under way
goes no further, and every later request is refused (the CLI's own check comes only between
turns, after an answer has been paid for whole).
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from claude_hooks.core.prices import cost_usd

DEFAULT_BASE_URL = "https://api.anthropic.com"
TOKEN_PREFIX = "claude-hooks-task-"
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
# How each credential variable is sent: Claude Code's own mapping.
_HEADER = {
    "ANTHROPIC_API_KEY": "x-api-key",
    "ANTHROPIC_AUTH_TOKEN": "authorization",
    "CLAUDE_CODE_OAUTH_TOKEN": "authorization",
}


@dataclass(frozen=True, slots=True)
class Credential:
    variable: str
    value: str

    def header(self) -> tuple[str, str]:
        name = _HEADER[self.variable]
        return (name, self.value if name == "x-api-key" else f"Bearer {self.value}")


@dataclass
class Meter:
    """The Messages API usage relayed for one task: requests and tokens, by model too."""

    requests: int = 0
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USAGE_FIELDS, 0))
    models: dict[str, dict[str, int]] = field(default_factory=dict)
    cost_usd: float = 0.0

    def add(self, model: str | None, usage: Mapping[str, Any]) -> None:
        self.requests += 1
        self.cost_usd += cost_usd(model, usage)
        per_model = self.models.setdefault(model or "unknown", dict.fromkeys(USAGE_FIELDS, 0))
        for name in USAGE_FIELDS:
            value = usage.get(name)
            if isinstance(value, int) and value > 0:
                self.totals[name] += value
                per_model[name] += value

    def summary(self) -> dict[str, Any] | None:
        if self.requests == 0:
            return None
        return {
            "requests": self.requests,
            **self.totals,
            "cost_usd": round(self.cost_usd, 6),
            "models": self.models,
        }


class ResponseUsage:
    """Reads one response's usage as it streams by: server-sent events (`message_start` has the
    input side, `message_delta` the final output count) or one JSON document."""

    def __init__(self, content_type: str) -> None:
        self.streamed = content_type.startswith("text/event-stream")
        self.buffer = bytearray()
        self.model: str | None = None
        self.usage: dict[str, Any] = {}

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        if not self.streamed:
            return
        *lines, rest = self.buffer.split(b"\n")
        self.buffer = bytearray(rest)
        for line in lines:
            # Only the two events that carry usage are parsed, not the many content deltas.
            if line.startswith(b"data:") and (
                b'"message_start"' in line or b'"message_delta"' in line
            ):
                self._event(bytes(line[5:]))

    def finish(self) -> tuple[str | None, dict[str, Any]] | None:
        """(model, usage) of a complete answer, None if it had none (an error, a count)."""
        if not self.streamed:
            self._document(bytes(self.buffer))
        return (self.model, self.usage) if self.usage else None

    def _event(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            self._document_object(event["message"])
        elif event.get("type") == "message_delta" and isinstance(event.get("usage"), dict):
            self.usage.update(event["usage"])

    def _document(self, body: bytes) -> None:
        try:
            document = json.loads(body)
        except ValueError:
            return
        if isinstance(document, dict) and document.get("type") == "message":
            self._document_object(document)

    def _document_object(self, message: dict[str, Any]) -> None:
        if isinstance(message.get("model"), str):
            self.model = message["model"]
        if isinstance(message.get("usage"), dict):
            self.usage.update(message["usage"])


class Relay:
    """One task's relay: its token, the real credential and where requests go."""

    def __init__(self, credential: Credential, base_url: str, budget_usd: float) -> None:
        self.credential = credential
        self.base_url = base_url.rstrip("/")
        self.token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.meter = Meter()
        self.budget_usd = budget_usd
        self.spent: str | None = None  # why no more is relayed, once the budget is passed

    def over_budget(self, answer: ResponseUsage | None = None) -> str | None:
        """Why the task may have no more (its metered cost, with the `answer` under way,
        has passed its budget), else None."""
        if self.spent is None:
            spent = self.meter.cost_usd
            if answer is not None and answer.usage:
                spent += cost_usd(answer.model, answer.usage)
            if spent > self.budget_usd:
                self.spent = (
                    f"budget ${self.budget_usd:g} (max_budget_usd) reached: "
                    f"${spent:.2f} metered by the proxy"
                )
        return self.spent

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """The request carries this task's token (as `x-api-key` or a bearer token)."""
        given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    def agent_variables(self, bridge_url: str) -> dict[str, str]:
        """What the CLI gets in place of the credential and the base URL."""
        return {"ANTHROPIC_BASE_URL": bridge_url, self.credential.variable: self.token}
