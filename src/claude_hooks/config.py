"""Settings: `claude-hooks.toml` with `CLAUDE_HOOKS_*` environment overrides, validated at start.

Relative paths in the file (data_dir, a sqlite URL's file, prompts_dir, a command's files)
are relative to the file's folder, so a command finds the same data from any directory.
Environment overrides (`claude_hooks.config_env`) win over the file. Every problem is reported
as one line naming its key or variable.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from claude_hooks.config_env import CONFIG_ENV, environment_overrides, merge
from claude_hooks.errors import ConfigError
from claude_hooks.names import NAME_RULE, valid_name

CONFIG_FILE = "claude-hooks.toml"
MergeStyle = Literal["merge", "rebase", "rebase-merge", "squash", "fast-forward-only"]
# What a new event does to a session key's work of one task kind (`on_new_event`).
NewEventRule = Literal["coalesce", "queue", "supersede"]
TaskKindName = Literal[
    "work_issue", "review_pr", "address_review", "merge_pr", "fix_ci", "answer_mention"
]


def _host_node_name() -> str:
    """The host name as a node name: lower case, the first label, other characters as '-'."""
    name = re.sub(r"[^a-z0-9._-]", "-", socket.gethostname().split(".")[0].lower())
    return name.strip("-._")[:63] or "node"


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size_bytes(text: str) -> int:
    """'512M', '4G', '20GiB' or a number of bytes: powers of 1024, as systemd and Docker read
    them; ValueError says how to write one."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size: write a number of bytes or e.g. 512M, 4G")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def _size(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        size_bytes(value)
    return value


# A size as written ("4G"): kept as text so messages quote it; `size_bytes` reads it.
Size = Annotated[str, BeforeValidator(_size)]


_RANGE = re.compile(r"^\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?$")
MAX_INSTANCES = 1000


class InstanceRange(NamedTuple):
    """`[types.<t>] instances`: the fewest and the most instances the type keeps."""

    low: int
    high: int

    def __str__(self) -> str:
        return f"{self.low}..{self.high}"


def parse_range(value: object) -> InstanceRange:
    """'2..8', '3' or 3 (fixed); ValueError says how to write one."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    found = _RANGE.match(text) if isinstance(text, str) else None
    if found is None:
        raise ValueError("write 'min..max' (e.g. '2..8') or a number of instances (e.g. 3)")
    low = int(found[1])
    high = int(found[2] or low)
    if low < 1:
        raise ValueError(f"the minimum must be at least 1 (got {low}); for none, omit the key")
    if low > high:
        raise ValueError(f"the minimum {low} is above the maximum {high}: write 'min..max'")
    if high > MAX_INSTANCES:
        raise ValueError(f"the maximum {high} is above {MAX_INSTANCES}")
    return InstanceRange(low, high)


def _range(value: Any) -> Any:
    return value if value is None or isinstance(value, InstanceRange) else parse_range(value)


# `instances` as written in the file: a range, or a number meaning that many, fixed.
Instances = Annotated[InstanceRange, BeforeValidator(_range)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("./data")
    database_url: str = ""
    webhook_secret: SecretStr | None = None
    api_token: SecretStr | None = None
    max_body_bytes: int = Field(5 * 1024 * 1024, gt=0)
    read_timeout: float = Field(
        10.0, gt=0, description="seconds a client has to send a request's headers, then its body"
    )
    max_pending_body_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="bytes held at once for webhook bodies not yet verified; beyond: 503",
    )
    max_connections: int = Field(
        0, ge=0, description="open HTTP connections at most; 0: half the soft RLIMIT_NOFILE"
    )
    session_hours: float = Field(12.0, gt=0, description="a dashboard login lasts this long")
    login_failures_per_minute: int = Field(
        5, ge=1, description="failed dashboard logins per remote address before a 429"
    )
    max_attempts: int = Field(3, ge=1, description="starts of one task before it is failed")
    cancel_grace: float = Field(10.0, ge=0, description="seconds between SIGTERM and SIGKILL")
    poll_interval: float = Field(
        0.25, gt=0, le=5, description="seconds between looks for changes made by the CLI"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    answer_deadline: float = Field(
        3.0, gt=0, le=30, description="seconds within which every delivery is answered"
    )
    max_deciding: int = Field(
        16,
        ge=0,
        description="deliveries a node runs through the flows at once; more arriving "
        "together are recorded as pending, answered at once and decided right after, in "
        "arrival order (0: every delivery)",
    )
    pending_retry_min: float = Field(
        5.0, gt=0, description="seconds before the first retry of a pending delivery"
    )
    pending_retry_max: float = Field(
        300.0, gt=0, description="longest wait between retries of a pending delivery"
    )
    max_rejections_per_hour: int = Field(
        1000, ge=0, description="rejected deliveries recorded per hour; the rest only counted"
    )
    retention_days: float = Field(
        90.0,
        ge=0,
        description="days before finished tasks' logs and deliveries' bodies go; 0: keep",
    )
    retention_interval: float = Field(3600.0, gt=0, description="seconds between retention sweeps")
    timezone: str = Field("UTC", description="IANA zone of budget days and months")
    max_worktree_state_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="largest saved worktree state (a git bundle in the database) another node "
        "can resume a session from; a larger one is not saved, with a warning",
    )
    max_log_bytes: int = Field(
        10 * 1024 * 1024, ge=4096, description="a task's log keeps its head and tail within this"
    )
    sandbox_user: str = Field(
        "claude-hooks-agent",
        description="the account sandboxed agents run as when the service runs as root",
    )
    min_free_disk: Size = Field(
        "2G",
        description="free space on the data dir's filesystem below which no agent starts, and "
        "the service's own non-essential writes (task logs beyond their head, worktree states) "
        "stop, leaving room for the delivery spool",
    )
    node: str = Field(
        default_factory=lambda: _host_node_name(),
        description="this node's name among the nodes on one database; default: the host name",
    )
    capacity: int = Field(0, ge=0, description="instances this node holds at most; 0: no limit")
    lease_seconds: float = Field(
        30.0, ge=1, le=3600, description="seconds without a heartbeat before a node is dead"
    )
    advertise_url: str = Field(
        "", description="where other nodes reach this node's API; default: http://host:port"
    )
    database_connect_timeout: float = Field(
        5.0, gt=0, le=300, description="seconds to open a connection to PostgreSQL, at most"
    )
    database_lock_timeout: float = Field(
        2.0,
        gt=0,
        le=300,
        description="seconds a statement waits for a lock (PostgreSQL lock_timeout, SQLite's "
        "busy timeout) before it fails; below server.answer_deadline, so a delivery that "
        "waited in vain is still spooled in time",
    )
    database_statement_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="seconds a PostgreSQL statement may run (statement_timeout)",
    )
    spool_dir: Path | None = Field(
        None,
        description="where deliveries the database cannot take in time are kept until it can; "
        "default: data_dir",
    )
    spool_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="largest delivery spool; beyond it deliveries are answered 503",
    )
    comment_edit_interval: float = Field(
        10.0, ge=0, description="seconds between two edits of one living status comment"
    )
    public_url: str = Field(
        "", description="where people reach the dashboard (links in forge comments); default: none"
    )

    @model_validator(mode="after")
    def _known_zone(self) -> ServerConfig:
        zone_of(self.timezone)
        if not valid_name(self.node):
            raise ValueError(f"server.node {self.node!r}: {NAME_RULE}")
        return self

    @property
    def node_url(self) -> str:
        """The URL other nodes use for this node's API (live logs of its tasks)."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


class ForgejoConfig(_Section):
    url: str = ""
    token: SecretStr | None = Field(
        None, description="token of an account with admin rights, for sender permission checks"
    )
    timeout: float = Field(10.0, gt=0)
    retries: int = Field(3, ge=0, le=10)
    clone_url: str = Field(
        "", description="base URL git clones from (e.g. an SSH or internal URL); default: url"
    )


class FlowsConfig(_Section):
    merge_type: str = Field("boss", description="the type that merges approved agent PRs")
    merge_style: MergeStyle = "merge"
    max_fix_attempts: int = Field(2, ge=0, description="fix_ci tasks per PR head before a human")
    poll_ci: bool = Field(True, description="poll the combined status of agent PRs (Forgejo)")
    ci_poll_interval: float = Field(30.0, gt=0)
    ci_poll_timeout: float = Field(3 * 3600.0, gt=0)
    sweep_interval: float = Field(
        3600.0, ge=0, description="seconds between sweeps of closed issues' workdirs; 0: off"
    )
    max_tasks_per_issue: int = Field(12, ge=1, description="agent tasks per issue before a human")
    max_cost_per_issue_usd: float | None = Field(None, ge=0)
    max_review_rounds: int = Field(3, ge=1, description="changes-requested rounds on one PR")
    escalate_to: str = Field("", description="login or @org/team mentioned when a limit trips")
    escalation_label: str = "needs-human"


class BudgetConfig(_Section):
    daily_usd: float | None = Field(None, ge=0, description="team-wide spend per calendar day")
    monthly_usd: float | None = Field(None, ge=0, description="team-wide spend per month")
    hard: bool = Field(False, description="stop running tasks when a budget is reached")


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


class ReportConfig(_Section):
    """The weekly outcome summary, posted as a comment on an issue the operator names."""

    summary_repository: str = Field(
        "", description="owner/repo to post the weekly outcome summary in; empty: none"
    )
    summary_issue: int = Field(0, ge=0, description="the issue of summary_repository it goes on")
    summary_weekday: Weekday = Field("monday", description="the day it is posted")
    summary_hour: int = Field(9, ge=0, le=23, description="from this hour, in server.timezone")
    summary_as: str = Field(
        "", description="the type whose token posts it; empty: [flows] merge_type"
    )

    @model_validator(mode="after")
    def _named_issue(self) -> ReportConfig:
        if not self.summary_repository:
            return self
        owner, _, name = self.summary_repository.partition("/")
        if not owner or not name or "/" in name:
            raise ValueError(
                f"summary_repository {self.summary_repository!r}: give it as owner/repo"
            )
        if self.summary_issue <= 0:
            raise ValueError(
                "summary_issue: name the issue of summary_repository the summary is posted on"
            )
        return self


class SecurityConfig(_Section):
    allowed_senders: list[str] = Field(default_factory=list)
    permission_cache_seconds: float = Field(300.0, ge=0)


_EGRESS_ENTRY = re.compile(
    r"^(?:\[(?P<ip6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9.-]+))(?::(?P<port>\d{1,5}))?$"
)


class EgressEntry(NamedTuple):
    """One `egress` entry: a host (a name or an IP literal, lower case) and its port, or None
    for ports 80 and 443."""

    host: str
    port: int | None


def parse_egress(entry: str) -> EgressEntry:
    """`pypi.org`, `files.pythonhosted.org:443`, `127.0.0.1:8080`, `[::1]:8080`; ValueError
    naming the entry otherwise (wildcards and URLs are refused: a host names one host)."""
    found = _EGRESS_ENTRY.match(entry.strip())
    port = int(found["port"]) if found and found["port"] else None
    host = (found["ip6"] or found["host"] or "").lower().rstrip(".") if found else ""
    bad_port = port is not None and not 0 < port < 65536
    if not host or host.startswith(("-", ".")) or ".." in host or bad_port:
        raise ValueError(
            f"egress entry {entry!r} is not a host or host:port (e.g. 'pypi.org' or "
            "'files.pythonhosted.org:443'; no wildcards, no scheme)"
        )
    return EgressEntry(host, port)


class PolicyConfig(_Section):
    """`[policy]`: what a repository's own file may set beyond narrowing, and the ceilings
    no repository passes (core/policy.py applies it)."""

    allow: list[
        Literal[
            "setup",
            "egress",
            "merge_style",
            "on_new_event",
            "max_review_rounds",
            "max_tasks_per_issue",
            "max_cost_per_issue_usd",
        ]
    ] = Field(
        default_factory=list,
        description="keys a repository may set beyond narrowing (raising a limit included)",
    )
    allowed_types: list[str] | None = Field(
        None, description="types a repository may run; unset: every type"
    )
    max_running: dict[str, int] = Field(
        default_factory=dict,
        description="tasks running at once per repository, under 'all' and per type",
    )
    daily_budget_usd: float | None = Field(None, ge=0, description="ceiling per repository")
    monthly_budget_usd: float | None = Field(None, ge=0, description="ceiling per repository")
    max_review_rounds: int | None = Field(None, ge=1, description="ceiling when raised")
    max_tasks_per_issue: int | None = Field(None, ge=1, description="ceiling when raised")
    max_cost_per_issue_usd: float | None = Field(None, ge=0, description="ceiling when raised")
    egress: list[str] | None = Field(
        None, description="hosts a repository may add to a type's egress; unset: any"
    )


class VariantConfig(_Section):
    """A prompt or model variant of a type (`[types.<t>] variants`): its share of the
    sessions, and the role and model its sessions run with instead of the type's."""

    name: str
    share: float = Field(gt=0, le=1)
    role: str | None = None
    model: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not valid_name(value):
            raise ValueError(f"variant name {value!r} must be {NAME_RULE}")
        return value


class TypeConfig(_Section):
    login: str | None = None
    token: SecretStr | None = None
    agent_token: SecretStr | None = Field(
        None, description="a token handed to the agents (e.g. read-only); never `token`"
    )
    sandbox: bool = Field(True, description="run the agents in a bubblewrap sandbox")
    runner: Literal["claude", "command", "merge"] = "claude"
    command: list[str] = Field(default_factory=list)
    model: str = "sonnet"
    max_turns: int = Field(200, gt=0)
    max_budget_usd: float = Field(5.0, gt=0)
    timeout: float = Field(3600.0, gt=0)
    workdir: Literal["worktree", "none"] = "worktree"
    comments: Literal["living", "each", "off"] = Field(
        "living",
        description="living: one comment per task, edited as it moves; each: a comment per "
        "step; off: none (true means living, false off)",
    )
    while_running: Literal["steer", "queue"] = Field(
        "steer",
        description="a mention while the session runs: steer reaches the running agent, "
        "queue makes a task after the run",
    )
    labels: list[str] = Field(
        default_factory=list,
        description="labels whose adding to an issue or PR assigns it to this type "
        "(removing one unassigns it), e.g. ['agent:dev']",
    )
    on_new_event: dict[TaskKindName, NewEventRule] = Field(
        default_factory=dict,
        description="per task kind, what a new event does to the key's work: coalesce (a "
        "queued task takes the newer payload), queue (always a new task), supersede (as "
        "coalesce, and a running task of that kind and key is stopped); default supersede "
        "for review_pr and fix_ci when the PR's head moved, coalesce for the rest",
    )
    rebalance: Literal["none", "steal"] = Field(
        "none",
        description="steal: an idle instance with an empty queue takes queued work from a peer",
    )
    instances: Instances | None = Field(
        None,
        description="'min..max' (e.g. '2..8'): the leading node adds instances <type>-auto-N "
        "when work waits and retires them when idle; a number: that many, fixed",
    )
    scale_up_wait: float = Field(
        60.0, gt=0, description="seconds a task waits, every instance busy, before one is added"
    )
    scale_down_idle: float = Field(
        900.0, gt=0, description="seconds an added instance idles before it is retired"
    )
    permission_mode: Literal["default", "acceptEdits", "plan", "bypassPermissions"] = "acceptEdits"
    allowed_tools: list[str] = Field(default_factory=list)
    disallowed_tools: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    role: str = Field(
        "", description="the type's role, appended to Claude Code's system prompt (claude runner)"
    )
    system_prompt: str | None = Field(
        None, description="replaces Claude Code's own system prompt; the role is still appended"
    )
    prompts: dict[
        Literal[
            "system",
            "work_issue",
            "review_pr",
            "address_review",
            "merge_pr",
            "fix_ci",
            "answer_mention",
        ],
        str,
    ] = Field(
        default_factory=dict,
        description="Jinja2 template text by name, overriding prompts_dir and the shipped ones",
    )
    prompts_dir: Path | None = Field(
        None, description="a folder of <name>.md.j2 templates overriding the shipped ones"
    )
    setting_sources: list[Literal["user", "project", "local"]] | None = Field(
        None, description="Claude Code settings files to load; unset: the CLI's default"
    )
    max_api_retries: int = Field(
        2, ge=0, description="CLAUDE_CODE_MAX_RETRIES: API retries before a run fails"
    )
    daily_budget_usd: float | None = Field(None, ge=0)
    monthly_budget_usd: float | None = Field(None, ge=0)
    breaker_failures: int = Field(3, ge=1, description="API failures in a row that pause the type")
    breaker_backoff: float = Field(30.0, gt=0, description="first pause of the breaker, seconds")
    breaker_exit_codes: list[int] = Field(
        default_factory=list, description="command runner exit codes counted as API failures"
    )
    max_processes: int = Field(
        512, ge=1, description="processes and threads one agent holds at once"
    )
    max_memory: Size = Field("4G", description="memory of one agent's processes together")
    max_disk: Size = Field(
        "20G", description="what one agent's workdir (and its session's state) may hold"
    )
    egress: list[str] = Field(
        default_factory=list,
        description="hosts a sandboxed agent may reach through the service's proxy: 'host' "
        "(ports 80 and 443) or 'host:port'; default none",
    )

    variants: list[VariantConfig] = Field(
        default_factory=list,
        description="prompt/model experiments: [{name, share, role, model}]; shares sum to at "
        "most 1, the rest of the sessions run the type's own role and model",
    )
    variant_seed: str = Field(
        "", description="seeds the choice of a session's variant (from its key)"
    )

    @model_validator(mode="after")
    def _variant_shares(self) -> TypeConfig:
        names = [v.name for v in self.variants]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"variants: the name {twice[0]!r} is used twice; names are unique")
        total = sum(v.share for v in self.variants)
        if total > 1 + 1e-9:
            raise ValueError(
                f"variants: the shares sum to {total:g}, over 1; lower them (what they leave "
                "under 1 runs the type's own role and model)"
            )
        return self

    def variant(self, name: str | None) -> VariantConfig | None:
        return next((v for v in self.variants if v.name == name), None)

    @model_validator(mode="after")
    def _egress_entries(self) -> TypeConfig:
        for entry in self.egress:
            parse_egress(entry)
        return self

    @field_validator("comments", mode="before")
    @classmethod
    def _comments_from_bool(cls, value: object) -> object:
        """Files written when `comments` was a bool keep loading."""
        if isinstance(value, bool):
            return "living" if value else "off"
        return value

    @model_validator(mode="after")
    def _command_needs_argv(self) -> TypeConfig:
        if self.runner == "command" and not self.command:
            raise ValueError("runner = 'command' needs a non-empty 'command' argv list")
        if self.runner == "merge":
            self.workdir = "none"  # it merges through the API: no checkout to prepare
        return self


class AgentSeed(_Section):
    name: str
    type: str


class Config(_Section):
    """The whole configuration; `load_config` builds it from a file and the environment."""

    server: ServerConfig = Field(default_factory=ServerConfig)  # type: ignore[arg-type]
    forgejo: ForgejoConfig = Field(default_factory=ForgejoConfig)  # type: ignore[arg-type]
    security: SecurityConfig = Field(default_factory=SecurityConfig)  # type: ignore[arg-type]
    flows: FlowsConfig = Field(default_factory=FlowsConfig)  # type: ignore[arg-type]
    budget: BudgetConfig = Field(default_factory=BudgetConfig)  # type: ignore[arg-type]
    policy: PolicyConfig = Field(default_factory=PolicyConfig)  # type: ignore[arg-type]
    report: ReportConfig = Field(default_factory=ReportConfig)  # type: ignore[arg-type]
    types: dict[str, TypeConfig] = Field(default_factory=dict)
    agents: list[AgentSeed] = Field(default_factory=list)
    # The file the configuration was read from: hidden from sandboxed agents.
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from, if any."""
        return self._source

    @model_validator(mode="after")
    def _names_and_types(self) -> Config:
        for name in self.types:
            if not valid_name(name):
                raise ValueError(f"types.{name}: a type name must be {NAME_RULE}")
        secrets = {t.token.get_secret_value() for t in self.types.values() if t.token}
        if self.forgejo.token is not None:
            secrets.add(self.forgejo.token.get_secret_value())
        for name, type_config in self.types.items():
            given = type_config.agent_token
            if given is not None and given.get_secret_value() in secrets:
                raise ValueError(
                    f"types.{name}.agent_token: it is one of the service's own tokens; "
                    "give agents a separate (e.g. read-only) token, or none"
                )
        for name in [*(self.policy.allowed_types or ()), *self.policy.max_running]:
            if name != "all" and name not in self.types:
                raise ValueError(f"policy: {name!r} is not a type (no [types.{name}] table)")
        for name, type_config in self.types.items():
            span = type_config.instances
            if span is not None and not valid_name(f"{name}-auto-{span.high}"):
                raise ValueError(
                    f"types.{name}.instances: the names of added instances ({name}-auto-N) "
                    f"would be too long; give the type a shorter name ({NAME_RULE})"
                )
        poster = self.report.summary_as or self.flows.merge_type
        if self.report.summary_repository and poster not in self.types:
            key = "report.summary_as" if self.report.summary_as else "flows.merge_type"
            raise ValueError(
                f"{key}: {poster!r} posts the weekly summary but is not a type "
                f"(no [types.{poster}] table); set report.summary_as to a configured type"
            )
        for seed in self.agents:
            if not valid_name(seed.name):
                raise ValueError(f"agents: {seed.name!r} is not a valid name ({NAME_RULE})")
            if seed.type not in self.types:
                raise ValueError(
                    f"agents: {seed.name!r} has type {seed.type!r}, "
                    f"which has no [types.{seed.type}] table"
                )
        return self

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def database_url(self) -> str:
        if self.server.database_url:
            return self.server.database_url
        return f"sqlite:///{(self.server.data_dir / 'claude-hooks.db').resolve()}"

    @property
    def spool_dir(self) -> Path:
        """Where undelivered deliveries wait for the database (see `service.spool`)."""
        return self.server.spool_dir or self.server.data_dir

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file, when the database is one."""
        found = _SQLITE_URL.match(self.database_url)
        if found is None or found["path"] in ("", ":memory:"):
            return None
        return Path(found["path"])

    def login_of(self, agent_type: str) -> str:
        return self.types[agent_type].login or agent_type

    def type_of_login(self, login: str) -> str | None:
        """The agent type whose Forgejo account this is (logins compare case-insensitively)."""
        wanted = login.lower()
        for name in self.types:
            if self.login_of(name).lower() == wanted:
                return name
        return None


def zone_of(name: str) -> ZoneInfo:
    """The time zone of budget periods; ValueError names a zone that does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin')"
        ) from None


def _describe(error: Mapping[str, Any], variables: Mapping[tuple[str, ...], str]) -> str:
    loc = tuple(str(part) for part in error.get("loc", ()))
    location = ".".join(loc)
    for length in range(len(loc), 0, -1):
        if loc[:length] in variables:
            location = f"{variables[loc[:length]]} ({location})"
            break
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        return f"{location}: unknown key (check its spelling against the README)"
    if error.get("type") == "missing":
        return f"{location}: required key is missing"
    given = error.get("input")
    if location and isinstance(given, str | int | float | bool):
        return f"{location}: {message} (got {given!r})"
    return f"{location}: {message}" if location else message


def config_path(explicit: Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """The file to read: --config, else $CLAUDE_HOOKS_CONFIG, else ./claude-hooks.toml."""
    environ = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    default = Path(CONFIG_FILE)
    if default.exists():
        return default
    raise ConfigError(
        f"no configuration file: looked for --config, ${CONFIG_ENV} and "
        f"{str(default.absolute())!r}; make one with 'claude-hooks init' "
        "(or pass --config PATH)"
    )


# `sqlite:///relative/file.db` (three slashes: relative; four: absolute), with any driver.
_SQLITE_URL = re.compile(r"^(?P<scheme>sqlite(\+\w+)?:///)(?P<path>[^?]*)(?P<query>\?.*)?$")


def _beside(base: Path, value: Any) -> Any:
    """A relative path string made absolute against `base`; anything else as it was."""
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        return str(base / value)
    if isinstance(value, str):
        return str(Path(value).expanduser())
    return value


def _command_beside(base: Path, argv: Any) -> Any:
    """The program, if it is a path (`agents/run.sh`), and arguments naming files that exist
    beside the file, made absolute: agents run in their workdir, not where the service starts."""
    if not isinstance(argv, list):
        return argv
    resolved: list[Any] = []
    for index, arg in enumerate(argv):
        if isinstance(arg, str) and arg and not Path(arg).is_absolute():
            # A bare program (`python3`) is looked up on PATH; a bare argument naming a file
            # beside the config (`sleep_agent.py`) is that file, as one with a `/` is.
            there = base / arg
            if ("/" in arg and (index == 0 or there.exists())) or (index > 0 and there.is_file()):
                arg = str(there)
        resolved.append(arg)
    return resolved


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """The file's relative paths, made absolute against its folder (`base`)."""
    server = data.setdefault("server", {})
    if isinstance(server, dict):
        server["data_dir"] = _beside(base, server.get("data_dir", "data"))
        if server.get("spool_dir"):
            server["spool_dir"] = _beside(base, server["spool_dir"])
        url = server.get("database_url")
        found = _SQLITE_URL.match(url) if isinstance(url, str) else None
        if found and found["path"] not in ("", ":memory:"):
            path = _beside(base, found["path"])
            server["database_url"] = f"{found['scheme']}{path}{found['query'] or ''}"
    types = data.get("types")
    for table in types.values() if isinstance(types, dict) else ():
        if isinstance(table, dict):
            if "prompts_dir" in table:
                table["prompts_dir"] = _beside(base, table["prompts_dir"])
            if "command" in table:
                table["command"] = _command_beside(base, table["command"])
    return data


def read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(path)!r} does not exist: make one with "
            f"'claude-hooks init --path {path}'"
        ) from None
    except PermissionError:
        raise ConfigError(_unreadable(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def _unreadable(path: Path) -> str:
    """Whose the file is and what to do: `init` writes it 0600 for the user who ran it, and a
    service run as another user (a container's, a unit's) cannot read it."""
    user = os.getuid()
    try:
        info = path.stat()
        whose = f" (it is uid {info.st_uid}'s, mode {stat.S_IMODE(info.st_mode):04o})"
    except OSError:
        whose = ""
    return (
        f"config file {str(path)!r} cannot be read by uid {user}{whose}: run claude-hooks as "
        f'the file\'s owner (in a container: docker run --user "$(id -u):$(id -g)") or let '
        f"uid {user} read it"
    )


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file and the environment; ConfigError says every problem."""
    environ = os.environ if environ is None else environ
    data = resolve_paths(read_file(path), path.resolve().parent)
    overrides, variables = environment_overrides(environ, data, Config)
    try:
        config = Config(**merge(data, overrides))
    except ValidationError as exc:
        lines = [_describe(error, variables) for error in exc.errors()]
        raise ConfigError(f"invalid configuration in {str(path)!r}: " + "; ".join(lines)) from None
    # A relative path from the environment is relative to where the command runs.
    config.server.data_dir = config.server.data_dir.absolute()
    config._source = path.resolve()
    return config
