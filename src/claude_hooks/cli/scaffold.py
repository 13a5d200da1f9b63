"""`claude-hooks init`: a commented starting configuration with fresh secrets."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from claude_hooks.errors import InvalidInputError
from claude_hooks.names import NAME_RULE, valid_name

DEFAULT_TEAM = "dev=2,reviewer=1,boss=1"
MERGE_TYPE = "boss"  # flows.merge_type's default: this type merges through the API
MAX_INSTANCES = 100

ROLES = {
    "dev": "You are a developer: you implement issues and open pull requests.",
    "reviewer": "You are a code reviewer: you review pull requests carefully and concretely.",
}


@dataclass(frozen=True, slots=True)
class Scaffold:
    text: str
    webhook_secret: str
    api_token: str
    host: str
    port: int


def parse_team(spec: str) -> dict[str, int]:
    """`dev=2,reviewer=1` as {type: instances}."""
    team: dict[str, int] = {}
    for part in spec.split(","):
        name, equals, count = part.strip().partition("=")
        name = name.strip()
        if not valid_name(name):
            raise InvalidInputError(f"--types: {name!r} is not a valid type name ({NAME_RULE})")
        try:
            instances = int(count) if equals else 1
        except ValueError:
            instances = 0
        if not 1 <= instances <= MAX_INSTANCES:
            raise InvalidInputError(
                f"--types: {part.strip()!r}: give each type 1 to {MAX_INSTANCES} instances, "
                "as in dev=2,reviewer=1"
            )
        if name in team:
            raise InvalidInputError(f"--types: {name!r} is given twice")
        team[name] = instances
    return team


def _type_table(name: str) -> str:
    if name == MERGE_TYPE:
        return (
            f"[types.{name}]\n"
            f'login = "{name}"        # its Forgejo account\n'
            '# token = "…"           # that account\'s access token (it merges through the API)\n'
            'runner = "merge"        # merges approved agent pull requests\n'
        )
    role = ROLES.get(name, f"You are the {name} agent of this team.")
    return (
        f"[types.{name}]\n"
        f'login = "{name}"        # its Forgejo account; work assigned to it goes to this type\n'
        '# token = "…"           # that account\'s access token: the service acts and pushes\n'
        "#                       # with it; it is never given to the agents (see agent_token)\n"
        'runner = "claude"       # Claude Code; "command" runs any program instead\n'
        'model = "sonnet"\n'
        "max_budget_usd = 5.0    # per task\n"
        "timeout = 3600          # seconds per task\n"
        "# max_processes = 512     # one agent's limits (these are the defaults): the first\n"
        '# max_memory = "4G"       # it reaches ends its task\n'
        '# max_disk = "20G"        # its workdir and /tmp\n'
        f'role = "{role}"\n'
        "# Credentials for Claude Code: ANTHROPIC_API_KEY, or CLAUDE_CODE_OAUTH_TOKEN from\n"
        "# `claude setup-token`, in the service's environment (every type), or for this type:\n"
        '# env = { CLAUDE_CODE_OAUTH_TOKEN = "…" }\n'
    )


def render(team: dict[str, int], host: str = "127.0.0.1", port: int = 8080) -> Scaffold:
    webhook_secret = secrets.token_urlsafe(32)
    api_token = secrets.token_urlsafe(32)
    types = "\n".join(_type_table(name) for name in team)
    agents = "\n".join(
        f'[[agents]]\nname = "{name}-{number}"\ntype = "{name}"\n'
        for name, count in team.items()
        for number in range(1, count + 1)
    )
    merging = (
        f'merge_type = "{MERGE_TYPE}"        # the type that merges approved agent pull requests\n'
        if MERGE_TYPE in team
        else f'# merge_type = "{MERGE_TYPE}"    # no type of this team merges approved PRs\n'
    )
    text = f"""# claude-hooks configuration, written by `claude-hooks init`.
# Every key is described in the README's "Configuration" section; any key can also be set
# from the environment (CLAUDE_HOOKS_SERVER__PORT=9000). Relative paths are relative to this
# file's folder. Check it with `claude-hooks doctor`, run it with `claude-hooks serve`.

[server]
host = "{host}"        # an address the forge can reach, e.g. "0.0.0.0"
port = {port}
data_dir = "data"          # database, task logs, workdirs
webhook_secret = "{webhook_secret}"   # the Forgejo webhook's secret
api_token = "{api_token}"        # Bearer token for the API and dashboard

[forgejo]
url = ""                   # your forge, e.g. "https://forge.example.org": permission checks,
                           # comments, merges and the repositories agents work in
# token = "…"              # an admin's token for sender permission checks (default: a type's)

[security]
allowed_senders = []       # logins that may trigger work besides users with write access

[flows]
{merging}
{types}
# Instances: each runs one task at a time. Add more later with `claude-hooks agents add`.
{agents}"""
    return Scaffold(text, webhook_secret, api_token, host, port)


def webhook_settings(scaffold: Scaffold) -> list[str]:
    """What to paste into the forge's webhook form."""
    where = scaffold.host if scaffold.host not in ("0.0.0.0", "::") else "<this host>"
    lines = [
        "Forgejo webhook (repository or organisation settings → Webhooks → Add webhook → Forgejo):",
        f"  Target URL:    http://{where}:{scaffold.port}/webhook",
        "  HTTP method:   POST",
        "  POST content type: application/json",
        f"  Secret:        {scaffold.webhook_secret}",
        "  Trigger on:    All events",
        "  Branch filter: *",
    ]
    if where == "127.0.0.1":
        lines.append(
            "  (server.host is 127.0.0.1: only a forge on this machine can reach it; "
            "set host to an address the forge can reach)"
        )
    return lines
