"""`CLAUDE_HOOKS_*` environment variables as configuration overrides.

A variable's name is the TOML path with `__` between levels (`CLAUDE_HOOKS_SERVER__PORT`,
`CLAUDE_HOOKS_TYPES__DEV__TOKEN`, `CLAUDE_HOOKS_TYPES__DEV__ENV__ANTHROPIC_API_KEY`). A list
takes `a,b` or a JSON list, a table a JSON object. A variable can set a type's keys only if
the file defines the type, or if it sets the type's runner too: a misspelt type name is an
error, not a new type. Any other `CLAUDE_HOOKS_*` name is an error naming the closest setting
(`CLAUDE_HOOKS_SERVER_PORT`: one `_` where `__` was meant), unless the project reserves it
(`RESERVED`: the config file's variable, those agents are given, the tests' and benchmarks').
"""

from __future__ import annotations

import difflib
import json
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from claude_hooks.errors import ConfigError

CONFIG_ENV = "CLAUDE_HOOKS_CONFIG"
ENV_PREFIX = "CLAUDE_HOOKS_"

# Names that are not settings; the README lists them. An agent's environment, and so any
# `claude-hooks` command it runs, holds the ones it is given.
RESERVED = frozenset(
    {
        CONFIG_ENV,
        # given to agents (agents/environment.py, runners/command.py, runners/claude.py)
        "CLAUDE_HOOKS_TASK_ID",
        "CLAUDE_HOOKS_AGENT",
        "CLAUDE_HOOKS_TYPE",
        "CLAUDE_HOOKS_KIND",
        "CLAUDE_HOOKS_SESSION_KEY",
        "CLAUDE_HOOKS_REPO",
        "CLAUDE_HOOKS_NUMBER",
        "CLAUDE_HOOKS_ATTEMPT",
        "CLAUDE_HOOKS_RESULT",
        "CLAUDE_HOOKS_CLI",
        "CLAUDE_HOOKS_CLI_ENV",
        "CLAUDE_HOOKS_SANDBOX",
        "CLAUDE_HOOKS_LATCH",
        # the test suite's and the benchmarks' PostgreSQL servers
        "CLAUDE_HOOKS_TEST_DATABASE_URL",
        "CLAUDE_HOOKS_BENCH_DATABASE_URL",
    }
)

Variables = dict[tuple[str, ...], str]


def _unwrap(annotation: Any) -> Any:
    """`X | None` as X."""
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _list_value(name: str, raw: str) -> list[Any]:
    text = raw.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{name}: not a valid JSON list ({exc})") from None
        if isinstance(value, list):
            return value
    if text.startswith(("[", "{", '"')):
        raise ConfigError(
            f"{name}: give a list as names separated by commas (a,b) or as a JSON list "
            f'(["a", "b"]), got {raw!r}'
        )
    return [item.strip() for item in text.split(",") if item.strip()]


def _object_value(name: str, raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(
            f'{name}: give a table as a JSON object ({{"key": "value"}}), got {raw!r}'
        )
    return value


def _value(name: str, raw: str, annotation: Any) -> Any:
    annotation = _unwrap(annotation)
    if get_origin(annotation) is list:
        return _list_value(name, raw)
    if get_origin(annotation) is dict or _is_model(annotation):
        return _object_value(name, raw)
    return raw


def _names(annotation: Any, prefix: str, type_names: list[str]) -> list[str]:
    """Every variable name a setting has under `prefix` (types by the names in the file)."""
    annotation = _unwrap(annotation)
    if _is_model(annotation):
        found = [prefix] if prefix != ENV_PREFIX else []
        joiner = "" if prefix == ENV_PREFIX else "__"
        for key, field in annotation.model_fields.items():
            found += _names(field.annotation, f"{prefix}{joiner}{key.upper()}", type_names)
        return found
    if get_origin(annotation) is dict and _is_model(get_args(annotation)[1]):
        found = [prefix]
        for type_name in type_names:
            found += _names(get_args(annotation)[1], f"{prefix}__{type_name.upper()}", type_names)
        return found
    return [prefix]


def _closest(name: str, model: type[BaseModel], file_data: Mapping[str, Any]) -> str:
    declared = file_data.get("types")
    type_names = sorted(declared) if isinstance(declared, dict) else []
    known = _names(model, ENV_PREFIX, type_names)
    # Compared without the prefix all names share, which would make any two look alike.
    tails = {known_name[len(ENV_PREFIX) :]: known_name for known_name in known}
    match = difflib.get_close_matches(name.upper()[len(ENV_PREFIX) :], tails, n=1, cutoff=0.6)
    if match:
        return f"did you mean {tails[match[0]]}?"
    return "names are CLAUDE_HOOKS_ and a key's path with __ between levels"


def _path(name: str, model: type[BaseModel], file_data: Mapping[str, Any]) -> tuple[list[str], Any]:
    """The config path a variable names and the annotation found there."""
    parts = name[len(ENV_PREFIX) :].split("__")
    if parts[0].lower() not in model.model_fields:
        raise ConfigError(
            f"{name}: no setting has this name ({_closest(name, model, file_data)}); "
            "unset it, or correct it (the README lists the names reserved for other uses)"
        )
    path: list[str] = []
    annotation: Any = model
    for part in parts:
        annotation = _unwrap(annotation)
        if _is_model(annotation):
            field = annotation.model_fields.get(part.lower())
            if field is None:
                where = ".".join(path) or "the configuration"
                raise ConfigError(
                    f"{name}: {where} has no key {part.lower()!r} "
                    f"({_closest(name, model, file_data)})"
                )
            path.append(part.lower())
            annotation = field.annotation
        elif get_origin(annotation) is dict:
            key_type, value_type = get_args(annotation)
            # `env` keeps the variable's case (ANTHROPIC_API_KEY); names and template keys do not.
            keep_case = key_type is str and value_type is str
            path.append(part if keep_case else part.lower())
            annotation = value_type
        else:
            raise ConfigError(f"{name}: {'.'.join(path)} is a single value, it has no keys")
    return path, annotation


def _put(target: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def environment_overrides(
    environ: Mapping[str, str], file_data: Mapping[str, Any], model: type[BaseModel]
) -> tuple[dict[str, Any], Variables]:
    """The settings the environment gives, and which variable gave each path."""
    overrides: dict[str, Any] = {}
    variables: Variables = {}
    for name, raw in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in RESERVED:
            continue
        path, annotation = _path(name, model, file_data)
        _put(overrides, path, _value(name, raw, annotation))
        variables[tuple(path)] = name
    _check_types(overrides, variables, file_data)
    return overrides, variables


def _check_types(
    overrides: Mapping[str, Any], variables: Variables, file_data: Mapping[str, Any]
) -> None:
    declared = file_data.get("types")
    declared = set(declared) if isinstance(declared, dict) else set()
    for name, table in (overrides.get("types") or {}).items():
        if name in declared or (isinstance(table, dict) and "runner" in table):
            continue
        variable = next(
            v for path, v in sorted(variables.items()) if path[:2] in (("types", name), ("types",))
        )
        known = ", ".join(sorted(declared)) or "none"
        raise ConfigError(
            f"{variable}: there is no type {name!r} in the configuration (types: {known}); "
            f"correct the name, or define [types.{name}] with its runner"
        )


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s values in place, tables merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
