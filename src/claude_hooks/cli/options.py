"""Options every command shares, so `--config` given before the command reaches each module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from claude_hooks.config import CONFIG_FILE
from claude_hooks.config_env import CONFIG_ENV

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"Path of {CONFIG_FILE} (default: ${CONFIG_ENV}, else ./{CONFIG_FILE}).",
        dir_okay=False,
    ),
]


class GlobalOptions:
    """Options given before the command."""

    config: Path | None = None


def chosen_config(path: Path | None) -> Path | None:
    """The `--config` of the command, else the one given before it."""
    return path if path is not None else GlobalOptions.config
