"""`CLAUDE_HOOKS_*` environment variables as configuration overrides.

A variable's name is the TOML path with `__` between levels (`CLAUDE_HOOKS_SERVER__PORT`,
`CLAUDE_HOOKS_TYPES__DEV__TOKEN`, `CLAUDE_HOOKS_TYPES__DEV__ENV__ANTHROPIC_API_KEY`). A list
takes `a,b` or a JSON list, a table a JSON object. A variable can set a type's keys only if
the file defines the type, or if it sets the type's runner too: a misspelt type name is an
error, not a new type. Names whose first part is no section (`CLAUDE_HOOKS_TASK_ID`, which
agents get) are not settings and are left alone.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from claude_hooks.errors import ConfigError

CONFIG_ENV = "CLAUDE_HOOKS_CONFIG"
ENV_PREFIX = "CLAUDE_HOOKS_"

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


def _path(name: str, model: type[BaseModel]) -> tuple[list[str], Any] | None:
    """The config path a variable names and the annotation found there; None if not a setting."""
    parts = name[len(ENV_PREFIX) :].split("__")
    if parts[0].lower() not in model.model_fields:
        return None
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
                    "(check its spelling against the README)"
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
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        found = _path(name, model)
        if found is None:
            continue
        path, annotation = found
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
