"""What counts as a storage fault: the database or the disk under it failed, not the input.

A fault is answered with a spooled 202 on the webhook path and a 503 elsewhere, never a 500.
"""

from __future__ import annotations

import sqlalchemy as sa

from claude_hooks.errors import ClaudeHooksError


class StorageUnavailable(ClaudeHooksError):
    """The database does not answer now: the request is refused (503) instead of waiting."""


# Unreachable, restarting, timed out (statement_timeout, lock_timeout, busy timeout, no free
# connection in the pool), out of space, an I/O error: all reach SQLAlchemy as one of these.
STORAGE_FAULTS: tuple[type[Exception], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.InternalError,
    sa.exc.TimeoutError,
    sa.exc.ResourceClosedError,
    OSError,
    TimeoutError,
)


def is_storage_fault(exc: BaseException) -> bool:
    return isinstance(exc, STORAGE_FAULTS)


def is_disconnect(exc: BaseException) -> bool:
    """The connection was dropped (the pool has let it go): the next try gets a new one."""
    return isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated


def fault_reason(exc: BaseException) -> str:
    """One line saying what failed: `database: could not connect ...`, `disk: [Errno 28] ...`."""
    if isinstance(exc, TimeoutError):
        return "database: no answer in time"
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        text = str(exc.orig)
    elif isinstance(exc, sa.exc.SQLAlchemyError):
        text = exc.args[0] if exc.args else exc.__class__.__name__
    else:
        return f"disk: {exc}"
    line = " ".join(str(text).split())
    return f"database: {line[:200]}"
