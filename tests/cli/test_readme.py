"""The README documents what exists: its commands and options, and its HTTP paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_type_hints

import typer.main

from claude_hooks.cli.main import app
from claude_hooks.config import Config, TypeConfig
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _cli_rows() -> list[tuple[list[str], list[str]]]:
    """(command path, options) for every command the CLI table names."""
    rows = []
    for line in _section("CLI").splitlines():
        if not line.startswith("| `claude-hooks"):
            continue
        first_cell = line.split(" | ")[0]
        spans = re.findall(r"`([^`]+)`", first_cell)
        group: list[str] = []
        for index, span in enumerate(spans):
            words = span.split()
            if index == 0:
                words = words[1:]  # claude-hooks
            path = []
            for word in words:
                if not re.fullmatch(r"[a-z][a-z-]*", word):
                    break
                path.append(word)
            if index == 0:
                group = path[:-1]
            else:
                path = group + path
            rows.append((path, re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", span)))
    return rows


def test_every_command_and_option_in_the_readme_exists() -> None:
    root: Any = typer.main.get_command(app)
    rows = _cli_rows()
    assert len(rows) >= 19
    documented = set()
    for path, options in rows:
        command = root
        for word in path:
            assert word in command.commands, f"README documents 'claude-hooks {' '.join(path)}'"
            command = command.commands[word]
        documented.add(tuple(path))
        known = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
        known |= {opt for param in root.params for opt in param.opts}
        for option in options:
            assert option in known, f"'claude-hooks {' '.join(path)}' has no {option}"
        for param in command.params:
            names = set(param.opts) | set(param.secondary_opts)
            if param.param_type_name == "option" and not names & {"--config", "--help"}:
                assert names & set(options), (
                    f"'claude-hooks {' '.join(path)}': {names} undocumented"
                )
    # And every command is in the table.
    for name, command in root.commands.items():
        subcommands = getattr(command, "commands", None)
        for sub in subcommands or [None]:
            path = (name, sub) if sub else (name,)
            assert path in documented, (
                f"the README's CLI table lacks 'claude-hooks {' '.join(path)}'"
            )


def _paths(routes: list[Any]) -> set[str]:
    """Every route's path, looking into included routers (FastAPI keeps them apart)."""
    found = set()
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            found |= _paths(included.routes)
        elif hasattr(route, "path"):
            found.add(route.path)
    return found


async def test_every_http_path_in_the_readme_is_served(start_service: ServiceFactory) -> None:
    service = await start_service()
    routes = _paths(create_app(service).routes)
    patterns = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$") for path in routes]
    text = _section("HTTP API") + _section("Dashboard")
    paths = {
        found.split("?")[0] for found in re.findall(r"`(?:(?:GET|POST) )?(/[a-z][^`\s]*|/)`", text)
    }
    assert {"/webhook", "/api/tasks/{id}/log", "/openapi.json", "/"} <= paths
    for path in paths:
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        assert any(p.match(concrete) for p in patterns), f"the README documents {path}"


def test_every_setting_is_in_the_settings_table() -> None:
    """Each key of each section (and of a type) names a row of the Configuration table, by
    its full path or, after the first of a row, by its bare name."""
    rows = [
        re.findall(r"`([^`]+)`", line.split(" | ")[0])
        for line in _section("Configuration").splitlines()
        if line.startswith("| `")
    ]
    documented: set[str] = set()
    for spans in rows:
        prefix = spans[0].rsplit(".", 1)[0]
        documented |= {span if "." in span else f"{prefix}.{span}" for span in spans}
    wanted = {
        f"{section}.{key}"
        for section in ("server", "forgejo", "flows", "budget", "security", "report")
        for key in get_type_hints(Config)[section].model_fields
    } | {f"types.<t>.{key}" for key in TypeConfig.model_fields}
    assert sorted(wanted - documented) == []


def test_the_contents_link_every_section_and_the_first_hour_comes_first() -> None:
    titles = re.findall(r"^## (.+)$", README, flags=re.MULTILINE)
    contents = README[README.index("**Contents:**") : README.index("\n## ")]
    for title in titles:
        anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
        assert f"[{title}](#{anchor})" in contents, title
    assert titles[0] == "The first hour"
    first_hour = _section("The first hour")
    assert 'workdir = "none"' in first_hour
    for step in ("Try it", "Your own configuration", "Connect Forgejo", "Claude credentials"):
        assert f"**{step}" in first_hour, step
    assert "**Production**" in first_hour
