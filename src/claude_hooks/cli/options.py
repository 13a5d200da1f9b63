"""Options every command shares, so `--config` given before the command reaches each module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from claude_hooks.config import CONFIG_FILE, Config, config_path, load_config
from claude_hooks.config_env import CONFIG_ENV
from claude_hooks.errors import ClaudeHooksError

_err = Console(stderr=True, markup=False, highlight=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"Path of {CONFIG_FILE} (default: ${CONFIG_ENV}, else ./{CONFIG_FILE}).",
        dir_okay=False,
        readable=False,  # read by load_config, whose refusal says whose the file is
    ),
]


class GlobalOptions:
    """Options given before the command."""

    config: Path | None = None


def chosen_config(path: Path | None) -> Path | None:
    """The `--config` of the command, else the one given before it."""
    return path if path is not None else GlobalOptions.config


def fail(message: str, code: int = 1) -> NoReturn:
    """One `error:` line on stderr, then exit `code` (2: a bad argument or configuration)."""
    _err.print(f"error: {message}", soft_wrap=True)
    raise typer.Exit(code)


def command_config(path: Path | None) -> Config:
    """The configuration a command runs on; a problem with it is one line and exit 2."""
    try:
        return load_config(config_path(chosen_config(path)))
    except ClaudeHooksError as exc:
        fail(str(exc), 2)
