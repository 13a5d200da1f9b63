"""One log format for the service, uvicorn and the libraries, set up in one place."""

from __future__ import annotations

import logging

from claude_hooks.log_lines import OneLineFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Their INFO lines are chatter on every start (Alembic's plugin set-up and SQLite dialect notes).
QUIET = ("alembic",)


def configure_logging(level: str) -> None:
    """Everything to stderr in FORMAT at `level`, one escaped line per record (log_lines);
    uvicorn must be given `log_config=None`."""
    threshold = logging.getLevelName(level.upper())
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=threshold, handlers=[handler], force=True)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(threshold, logging.WARNING))
