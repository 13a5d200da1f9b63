"""Settings: `claude-hooks.toml` with `CLAUDE_HOOKS_*` environment overrides, validated at start.

Environment names follow the TOML path with `__` between levels, e.g.
`CLAUDE_HOOKS_SERVER__PORT=9000` or `CLAUDE_HOOKS_TYPES__DEV__TOKEN=...`; environment values
win over the file. Every problem is reported as one line naming its key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from claude_hooks.domain import NAME_RULE, valid_name
from claude_hooks.errors import ConfigError

CONFIG_ENV = "CLAUDE_HOOKS_CONFIG"
ENV_PREFIX = "CLAUDE_HOOKS_"


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
    max_attempts: int = Field(3, ge=1, description="starts of one task before it is failed")
    cancel_grace: float = Field(10.0, ge=0, description="seconds between SIGTERM and SIGKILL")
    poll_interval: float = Field(
        0.25, gt=0, le=5, description="seconds between looks for changes made by the CLI"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_log_bytes: int = Field(
        10 * 1024 * 1024, ge=4096, description="a task's log keeps its head and tail within this"
    )
    sandbox_user: str = Field(
        "claude-hooks-agent",
        description="the account sandboxed agents run as when the service runs as root",
    )


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
    merge_style: Literal["merge", "rebase", "rebase-merge", "squash", "fast-forward-only"] = "merge"
    max_fix_attempts: int = Field(2, ge=0, description="fix_ci tasks per PR head before a human")
    poll_ci: bool = Field(True, description="poll the combined status of agent PRs (Forgejo)")
    ci_poll_interval: float = Field(30.0, gt=0)
    ci_poll_timeout: float = Field(3 * 3600.0, gt=0)
    sweep_interval: float = Field(
        3600.0, ge=0, description="seconds between sweeps of closed issues' workdirs; 0: off"
    )


class SecurityConfig(_Section):
    allowed_senders: list[str] = Field(default_factory=list)
    permission_cache_seconds: float = Field(300.0, ge=0)


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
    comments: bool = True
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


class Config(BaseSettings):
    """The whole configuration; `load_config` builds it from a file and the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    server: ServerConfig = Field(default_factory=ServerConfig)  # type: ignore[arg-type]
    forgejo: ForgejoConfig = Field(default_factory=ForgejoConfig)  # type: ignore[arg-type]
    security: SecurityConfig = Field(default_factory=SecurityConfig)  # type: ignore[arg-type]
    flows: FlowsConfig = Field(default_factory=FlowsConfig)  # type: ignore[arg-type]
    types: dict[str, TypeConfig] = Field(default_factory=dict)
    agents: list[AgentSeed] = Field(default_factory=list)
    # The file the configuration was read from: hidden from sandboxed agents.
    _source: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

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
    def source(self) -> Path | None:
        return self._source

    @source.setter
    def source(self, path: Path | None) -> None:
        self._source = path.resolve() if path is not None else None

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def database_url(self) -> str:
        if self.server.database_url:
            return self.server.database_url
        return f"sqlite:///{(self.server.data_dir / 'claude-hooks.db').resolve()}"

    def login_of(self, agent_type: str) -> str:
        return self.types[agent_type].login or agent_type

    def type_of_login(self, login: str) -> str | None:
        """The agent type whose Forgejo account this is (logins compare case-insensitively)."""
        wanted = login.lower()
        for name in self.types:
            if self.login_of(name).lower() == wanted:
                return name
        return None


def _describe(error: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()))
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


def config_path(explicit: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    environ = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    default = Path("claude-hooks.toml")
    return default if default.exists() else None


def load_config(path: Path | None) -> Config:
    """Read the TOML file (if any) and the environment; ConfigError says every problem."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    try:
        config = Config(**data)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        where = f" in {str(path)!r}" if path is not None else ""
        raise ConfigError(f"invalid configuration{where}: " + "; ".join(lines)) from None
    config.source = path
    return config
