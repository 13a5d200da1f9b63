"""Per-repository policy: the file a repository (and its organisation) keeps next to its code,
merged over the service's settings and clipped to what the service allows.

Three layers, later ones winning key by key: the service's configuration, the organisation's
file (`<owner>/.claude-hooks`), the repository's file. Tables merge key by key (`types.dev`,
`max_running`); a list or a value replaces the one below. The service's `[policy]` has the last
word: without it a repository may only narrow (`allowed_types`, `auto_merge = false`, lower
limits) and add text (`instructions`, `test`, `labels`); `setup`, `egress`, `merge_style`,
`on_new_event` and raising a limit need `[policy] allow`, and nothing passes the ceilings
`[policy]` sets. What is clipped is kept as a note, so the repository is told why.

A file that does not parse, or names a key this schema does not have, makes the whole policy
fail closed (`PolicyError`, naming the file, the line and the key): a typo must never mean
"anything goes". Pure: the files' texts come from the caller.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from claude_hooks.config import Config, MergeStyle, NewEventRule, PolicyConfig, TaskKindName
from claude_hooks.core.decision import Decision, ForgeComment, PolicyFault
from claude_hooks.errors import ClaudeHooksError

FILE_PATHS = (".forgejo/claude-hooks.toml", ".gitea/claude-hooks.toml", ".claude-hooks.toml")
"""Where a repository's file is looked for, in this order; the first found is used."""

ORGANISATION_REPOSITORY = ".claude-hooks"
"""The repository of an owner whose file applies to every repository of that owner."""

Layer = Literal["service", "organisation", "repository"]
SERVICE: Layer = "service"
ORGANISATION: Layer = "organisation"
REPOSITORY: Layer = "repository"

RAISABLE_LIMITS = ("max_review_rounds", "max_tasks_per_issue", "max_cost_per_issue_usd")


# What a new event does when neither the service nor a repository says: a review or a CI fix
# of a PR whose head moved is stopped for the new one; any other kind coalesces.
DEFAULT_NEW_EVENT: dict[str, NewEventRule] = {"review_pr": "supersede", "fix_ci": "supersede"}


@dataclass(frozen=True, slots=True)
class IssueLimits:
    """The per-issue lifecycle limits the loop guard applies to one repository's issues."""

    max_review_rounds: int
    max_tasks_per_issue: int
    max_cost_per_issue_usd: float | None


class PolicyError(ClaudeHooksError):
    """A repository's policy file cannot be used; its work fails closed until it is fixed.
    `file`: the broken file (its `sha` tells one version from the next)."""

    def __init__(self, problems: Sequence[str], file: PolicyFile | None = None) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)
        self.file = file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TypeSettings(_Strict):
    instructions: str | None = None
    labels: list[str] | None = None
    egress: list[str] | None = None
    on_new_event: dict[TaskKindName, NewEventRule] | None = None


class RepositorySettings(_Strict):
    """The schema of `.forgejo/claude-hooks.toml`: every key optional, no other key."""

    allowed_types: list[str] | None = None
    instructions: str | None = None
    setup: list[str] | None = None
    test: str | None = None
    auto_merge: bool | None = None
    max_review_rounds: int | None = Field(None, ge=1)
    merge_style: MergeStyle | None = None
    max_tasks_per_issue: int | None = Field(None, ge=1)
    max_cost_per_issue_usd: float | None = Field(None, ge=0)
    daily_budget_usd: float | None = Field(None, ge=0)
    monthly_budget_usd: float | None = Field(None, ge=0)
    max_running: dict[str, int] | None = None
    types: dict[str, TypeSettings] | None = None


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """One file as read from the forge: which layer, where from (repository, commit, path)."""

    layer: Layer
    where: str
    text: str

    @property
    def sha(self) -> str:
        """The file's git blob sha: the same text is the same file, on any branch or commit."""
        data = self.text.encode()
        return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class Setting:
    value: Any
    layer: Layer


@dataclass(frozen=True)
class Policy:
    """The effective policy of one repository: each key's value and the layer it came from,
    and a note for each thing the repository asked for and did not get."""

    settings: Mapping[str, Setting]
    notes: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def value(self, key: str) -> Any:
        found = self.settings.get(key)
        return None if found is None else found.value

    @property
    def allowed_types(self) -> tuple[str, ...]:
        return tuple(self.value("allowed_types"))

    @property
    def auto_merge(self) -> bool:
        return bool(self.value("auto_merge"))

    def type_allowed(self, agent_type: str) -> bool:
        return agent_type in self.allowed_types

    def instructions_for(self, agent_type: str) -> str:
        """The repository's text for every prompt, then the type's own, joined."""
        parts = (self.value("instructions"), self.value(f"types.{agent_type}.instructions"))
        return "\n\n".join(p for p in parts if p)

    def labels_of(self, agent_type: str) -> tuple[str, ...]:
        """The labels the repository adds to the type's own as triggers."""
        return tuple(self.value(f"types.{agent_type}.labels") or ())

    def on_new_event(self, agent_type: str, kind: str) -> NewEventRule:
        """What a new event of `kind` for the type does to the key's work (`DEFAULT_NEW_EVENT`
        where neither the service nor the repository says)."""
        rules = self.value(f"types.{agent_type}.on_new_event") or {}
        rule: NewEventRule = rules.get(kind) or DEFAULT_NEW_EVENT.get(kind, "coalesce")
        return rule

    def issue_limits(self) -> IssueLimits:
        """The loop guard's limits: the repository's where set (clipped), else the service's."""
        return IssueLimits(
            int(self.value("max_review_rounds")),
            int(self.value("max_tasks_per_issue")),
            self.value("max_cost_per_issue_usd"),
        )

    def max_running(self) -> dict[str, int]:
        """Tasks running at once in this repository, per type and under `all`."""
        prefix = "max_running."
        return {
            key.removeprefix(prefix): int(s.value)
            for key, s in self.settings.items()
            if key.startswith(prefix) and s.value is not None
        }

    def lines(self) -> list[str]:
        """`key = value  (layer)`, one per setting, for `policy check`."""
        width = max((len(key) for key in self.settings), default=0)
        return [
            f"{key.ljust(width)} = {_show(s.value)}  ({s.layer})"
            for key, s in sorted(self.settings.items())
        ]


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def parse(file: PolicyFile) -> dict[str, Any]:
    """The file's table, checked against the schema; PolicyError names file, line and key."""
    try:
        data = tomllib.loads(file.text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"{file.where}: not valid TOML: {exc}"], file) from None
    try:
        RepositorySettings.model_validate(data)
    except ValidationError as exc:
        raise PolicyError([_problem(file, error) for error in exc.errors()], file) from None
    return data


def _problem(file: PolicyFile, error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    key = ".".join(loc)
    line = _line_of(file.text, loc)
    where = f"{file.where}:{line}" if line else file.where
    if error.get("type") == "extra_forbidden":
        return f"{where}: unknown key {key!r} (see the README's per-repository keys)"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {key}: {message}"


def _line_of(text: str, loc: Sequence[str]) -> int | None:
    """The line that sets the first known part of `loc`, best effort: a `[types.x]` header or
    a `key =` line (dotted keys and inline tables included)."""
    lines = text.splitlines()
    for depth in range(len(loc), 0, -1):
        parts = loc[:depth]
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, parts)) + r"\s*\]")
        assignment = re.compile(r"^\s*" + r"\s*\.\s*".join(map(re.escape, parts)) + r"\s*=")
        leaf = re.compile(r"(^|[{,\s])" + re.escape(parts[-1]) + r"\s*=")
        for number, line in enumerate(lines, 1):
            if header.match(line) or assignment.match(line):
                return number
        for number, line in enumerate(lines, 1):
            if leaf.search(line.split("#", 1)[0]):
                return number
    return None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and key != "on_new_event":
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


@dataclass
class _Clipper:
    """Applies the service's word to the merged files' values, one key at a time."""

    config: Config
    policy: PolicyConfig
    settings: dict[str, Setting]
    notes: list[str] = field(default_factory=list)

    def allowed(self, key: str) -> bool:
        return key in self.policy.allow

    def refuse(self, key: str, why: str) -> None:
        self.notes.append(f"{key}: {why}")

    def offer(self, key: str, value: Any, layer: Layer) -> None:
        name = key.split(".")[0]
        if name == "types" and key.split(".")[1] not in self.config.types:
            self.refuse(key, f"not applied: {key.split('.')[1]!r} is not a type of this service")
            return
        if name in ("instructions", "test") or key.endswith((".instructions", ".labels")):
            self.settings[key] = Setting(value, layer)
        elif name == "allowed_types":
            self._allowed_types(value, layer)
        elif name == "auto_merge":
            if value is False or self.settings[key].value is True:
                self.settings[key] = Setting(value, layer)
        elif name in RAISABLE_LIMITS:
            self._limit(key, value, layer)
        elif name in ("daily_budget_usd", "monthly_budget_usd") or name == "max_running":
            self._ceiling(key, value, layer)
        elif name in ("setup", "merge_style") or key.endswith(".on_new_event"):
            gate = "on_new_event" if key.endswith(".on_new_event") else name
            if not self.allowed(gate):
                self.refuse(key, f"not applied: the service's [policy] allow lacks {gate!r}")
            elif gate == "on_new_event":
                # Kind by kind over the service's rules for the type.
                below = self.settings.get(key)
                merged = {**(below.value if below is not None else {}), **value}
                self.settings[key] = Setting(merged, layer)
            else:
                self.settings[key] = Setting(value, layer)
        elif key.endswith(".egress"):
            self._egress(key, value, layer)

    def _allowed_types(self, value: tuple[str, ...], layer: Layer) -> None:
        ceiling = self.settings["allowed_types"].value
        unknown = [t for t in value if t not in ceiling]
        if unknown:
            self.refuse(
                "allowed_types",
                f"{', '.join(unknown)} left out: not a type this service lets repositories run",
            )
        self.settings["allowed_types"] = Setting(tuple(t for t in value if t in ceiling), layer)

    def _limit(self, key: str, value: float, layer: Layer) -> None:
        service = self.settings[key].value
        if service is not None and value > service and not self.allowed(key):
            self.refuse(key, f"{value} clipped to {service}: raising it needs [policy] allow")
            return
        ceiling = getattr(self.policy, key)
        if ceiling is not None and value > ceiling:
            self.refuse(key, f"{value} clipped to the service's ceiling {ceiling}")
            value = ceiling
        self.settings[key] = Setting(value, layer)

    def _ceiling(self, key: str, value: float, layer: Layer) -> None:
        current = self.settings.get(key)
        ceiling = current.value if current is not None and current.layer == SERVICE else None
        if ceiling is not None and value > ceiling:
            self.refuse(key, f"{value} clipped to the service's ceiling {ceiling}")
            return
        if key.startswith("max_running.") and key != "max_running.all":
            agent_type = key.removeprefix("max_running.")
            if agent_type not in self.config.types:
                self.refuse(key, f"not applied: {agent_type!r} is not a type of this service")
                return
        self.settings[key] = Setting(value, layer)

    def _egress(self, key: str, hosts: tuple[str, ...], layer: Layer) -> None:
        if not self.allowed("egress"):
            self.refuse(key, "not applied: the service's [policy] allow lacks 'egress'")
            return
        permitted = self.policy.egress
        kept = tuple(h for h in hosts if permitted is None or h in permitted)
        dropped = [h for h in hosts if h not in kept]
        if dropped:
            self.refuse(key, f"{', '.join(dropped)} left out: not in the service's [policy] egress")
        self.settings[key] = Setting(kept, layer)


def service_settings(config: Config) -> dict[str, Setting]:
    """What applies to a repository without files: the service's own values and ceilings."""
    policy = config.policy
    types = tuple(sorted(config.types if policy.allowed_types is None else policy.allowed_types))
    flows = config.flows
    values: dict[str, Any] = {
        "allowed_types": types,
        "instructions": "",
        "setup": (),
        "test": None,
        "auto_merge": True,
        "merge_style": flows.merge_style,
        "max_review_rounds": flows.max_review_rounds,
        "max_tasks_per_issue": flows.max_tasks_per_issue,
        "max_cost_per_issue_usd": flows.max_cost_per_issue_usd,
        "daily_budget_usd": policy.daily_budget_usd,
        "monthly_budget_usd": policy.monthly_budget_usd,
    }
    for name, limit in policy.max_running.items():
        values[f"max_running.{name}"] = limit
    for name, type_config in config.types.items():
        if type_config.on_new_event:
            values[f"types.{name}.on_new_event"] = dict(type_config.on_new_event)
    return {key: Setting(value, SERVICE) for key, value in values.items()}


def effective(config: Config, files: Sequence[PolicyFile]) -> Policy:
    """The repository's policy from the service's configuration and its files (organisation
    first, then repository). PolicyError if any file is broken: nothing of it applies."""
    layers: list[tuple[Layer, dict[str, Any]]] = [(f.layer, _flatten(parse(f))) for f in files]
    clipper = _Clipper(config, config.policy, service_settings(config))
    merged: dict[str, tuple[Layer, Any]] = {}
    for layer, flat in layers:
        for key, value in flat.items():
            merged[key] = (layer, value)
    for key in sorted(merged):
        layer, value = merged[key]
        clipper.offer(key, value, layer)
    return Policy(clipper.settings, tuple(clipper.notes), tuple(f.where for f in files))


def refuse_broken(decision: Decision, repo: str, error: PolicyError) -> Decision:
    """`decision` without its new work in `repo`, whose policy file is broken: the reason
    names the file, line and key, and one comment (per version of the file, across
    deliveries and nodes: `PolicyFault`) tells the issue or pull request what to fix."""
    dropped = [(t, r) for t, r in decision.dispatch if r.repo == repo]
    if not dropped:
        return decision
    decision.keep([(t, r) for t, r in decision.dispatch if r.repo != repo])
    # Not saved, as for a sender who may not trigger work: once the file is fixed, the same
    # assignment or label is new work.
    if decision.assigned is not None and decision.assigned[0] == repo:
        decision.assigned = None
    if decision.labels is not None and decision.labels[0] == repo:
        decision.labels = None
    refused = f"no agent work in {repo}: its policy file cannot be used: {error}"
    decision.reason = f"{decision.reason}; {refused}" if decision.reason else refused
    if error.file is not None:
        agent_type, request = dropped[0]
        number = int(request.payload.get("comment_on", request.number))
        problems = "\n".join(f"- {problem}" for problem in error.problems)
        body = (
            "claude-hooks cannot use this repository's policy file, so no agent takes new "
            f"work here until it is fixed:\n\n{problems}\n\n"
            "`claude-hooks policy check` shows the effective policy once it parses."
        )
        comment = ForgeComment(agent_type, repo, number, body)
        decision.policy_faults.append(PolicyFault(repo, error.file.sha, comment))
    return decision
