"""One log format for the service, uvicorn and the libraries, set up in one place."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Their INFO lines are chatter on every start (Alembic's plugin set-up and SQLite dialect notes).
QUIET = ("alembic",)


def configure_logging(level: str) -> None:
    """Everything to stderr in FORMAT at `level`; uvicorn must be given `log_config=None`."""
    threshold = logging.getLevelName(level.upper())
    logging.basicConfig(level=threshold, format=FORMAT, force=True)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(threshold, logging.WARNING))
