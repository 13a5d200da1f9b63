"""The environment an agent process gets: built from parts, never inherited whole.

Only what the agent's type needs reaches it: never the webhook secret, the API token, or any
type's Forgejo `token` (the service acts on the forge for the agents). A type's `agent_token`,
if set, is the only forge token an agent gets. The Anthropic credentials and Claude Code
settings reach only the `claude` runner, which needs them; in a sandbox, the egress session
(`claude_hooks.agents.egress`) then swaps the credential for the task's token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from claude_hooks.config import TypeConfig
from claude_hooks.core.domain import Task

_PASSED_NAMES = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "SHELL")
_PASSED_PREFIXES = ("LC_",)
_CLAUDE_PREFIXES = ("ANTHROPIC_", "CLAUDE_CODE_")


def task_variables(task: Task) -> dict[str, str]:
    return {
        "CLAUDE_HOOKS_TASK_ID": task.id,
        "CLAUDE_HOOKS_AGENT": task.agent,
        "CLAUDE_HOOKS_TYPE": task.type,
        "CLAUDE_HOOKS_KIND": task.kind.value,
        "CLAUDE_HOOKS_SESSION_KEY": task.session_key,
        "CLAUDE_HOOKS_REPO": task.repo,
        "CLAUDE_HOOKS_NUMBER": str(task.number),
        "CLAUDE_HOOKS_ATTEMPT": str(task.attempts),
    }


def inherited(parent: Mapping[str, str], runner: str) -> dict[str, str]:
    """What an agent keeps of the service's environment: the Claude credentials and settings
    only for the `claude` runner, which needs them."""
    prefixes = _PASSED_PREFIXES + (_CLAUDE_PREFIXES if runner == "claude" else ())
    return {
        name: value
        for name, value in parent.items()
        if name in _PASSED_NAMES or name.startswith(prefixes)
    }


def agent_environment(
    task: Task,
    type_config: TypeConfig,
    forgejo_url: str,
    parent: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = inherited(os.environ if parent is None else parent, type_config.runner)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    login = type_config.login or task.type
    host = urlsplit(forgejo_url).hostname or "claude-hooks.invalid"
    # Commits carry the type's account unless its `env` says otherwise.
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"] = login
        env[f"GIT_{role}_EMAIL"] = f"{login}@noreply.{host}"
    if forgejo_url:
        env["FORGEJO_URL"] = forgejo_url
    if type_config.agent_token is not None:
        env["FORGEJO_TOKEN"] = type_config.agent_token.get_secret_value()
    env.update(task_variables(task))
    env.update(type_config.env)
    return env
