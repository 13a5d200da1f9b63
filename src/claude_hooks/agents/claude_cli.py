"""Where the Claude Code CLI is: the one bundled in claude-agent-sdk's wheel, else `claude` on
PATH. Found without importing the SDK (about a second): `doctor`, `serve`'s start-up checks and
`claude-hooks claude` need only the path, and a service whose types do not run Claude never
loads it."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path


def locate_cli(cli_path: str | Path | None = None, path_env: str | None = None) -> str | None:
    """`cli_path` if given, else the CLI bundled with the SDK, else `claude` on PATH."""
    if cli_path is not None:
        return shutil.which(str(cli_path), path=path_env)
    sdk = importlib.util.find_spec("claude_agent_sdk")
    if sdk is not None and sdk.origin is not None:
        bundled = Path(sdk.origin).parent / "_bundled" / "claude"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    return shutil.which("claude", path=path_env)
