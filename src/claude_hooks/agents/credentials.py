"""Which Anthropic credentials the claude runner's CLI gets: decided here, for doctor and serve too.

The CLI runs with the agent environment (`agent_env.inherited` plus the type's `env`) and with
a `CLAUDE_CONFIG_DIR` of its own per session key, made fresh, so neither `~/.claude` nor a
stored login is ever read. It takes, in Claude Code's order: a cloud provider
(`CLAUDE_CODE_USE_BEDROCK`, `_VERTEX`), `ANTHROPIC_AUTH_TOKEN`, `ANTHROPIC_API_KEY`, then
`CLAUDE_CODE_OAUTH_TOKEN` (from `claude setup-token`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from claude_hooks.agents.environment import inherited
from claude_hooks.config import TypeConfig

PROVIDER_SWITCHES = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX")
CREDENTIAL_VARIABLES = ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN")
HOW_TO = (
    "set ANTHROPIC_API_KEY, or CLAUDE_CODE_OAUTH_TOKEN from 'claude setup-token', in the "
    "service's environment (every claude type) or in [types.<type>] env (that type)"
)


@dataclass(frozen=True, slots=True)
class Credential:
    what: str  # the variable
    source: str  # where it comes from, in the user's words


def claude_credential(
    agent_type: str,
    type_config: TypeConfig,
    parent: Mapping[str, str] | None = None,
) -> Credential | None:
    """The credential the claude runner's CLI uses for this type, or None if it has none."""
    parent = os.environ if parent is None else parent
    env = {**inherited(parent, type_config.runner), **type_config.env}

    def source(name: str) -> str:
        if type_config.env.get(name):
            return f"types.{agent_type}.env"
        return "the service's environment"

    for name in PROVIDER_SWITCHES:
        if env.get(name, "").strip() not in ("", "0", "false"):
            return Credential(name, source(name))
    for name in CREDENTIAL_VARIABLES:
        if env.get(name, "").strip():
            return Credential(name, source(name))
    return None
