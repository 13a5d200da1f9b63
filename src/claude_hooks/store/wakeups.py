"""Wake-ups between nodes: PostgreSQL NOTIFY sent inside the transaction that made the change.

`pg_notify` is delivered when the transaction commits and never if it rolls back, so a node
that hears a wake-up finds the change already visible. SQLite has no NOTIFY: there the calls
do nothing, and a service polls its signals table as before (one process per SQLite file).

A payload is `kind:target`. Kinds:
- `task`: a task was queued on instance `target`, or moved onto it: its worker looks again;
- `busy`: a task of type `target` waits behind another: idle thieves of the type look;
- `freed`: a task ended, so its session key is free: blocked heads look again;
- `signal`: a row was added to the signals table (a command from the CLI or the API);
- `outbox`: a forge comment was written to the outbox: the drainer posts it;
- `steer`: a mention was sent into running task `target`: its runner takes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from claude_hooks.store.prepared import Prepared

CHANNEL = "claude_hooks"
TASK = "task"
BUSY = "busy"
FREED = "freed"
SIGNAL = "signal"
OUTBOX = "outbox"
STEER = "steer"
KINDS = frozenset({TASK, BUSY, FREED, SIGNAL, OUTBOX, STEER})

_NOTIFY = Prepared(sa.text("SELECT pg_notify(:channel, :payload)"))
# Several wake-ups in one statement (`batch`), sent in the order given.
_NOTIFY_ALL = Prepared(
    sa.text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS u(p)"),
    binary=True,
)


@dataclass(frozen=True, slots=True)
class Wake:
    kind: str
    target: str


def notify(conn: sa.Connection, kind: str, target: str = "") -> None:
    """Send a wake-up when `conn`'s transaction commits (PostgreSQL only)."""
    if conn.dialect.name == "postgresql":
        _NOTIFY.run(conn, {"channel": CHANNEL, "payload": f"{kind}:{target}"})


def notify_all(conn: sa.Connection, wakes: Sequence[Wake]) -> None:
    """`notify` for each of `wakes`, in order, in one statement (PostgreSQL only)."""
    if wakes and conn.dialect.name == "postgresql":
        payloads = [f"{wake.kind}:{wake.target}" for wake in wakes]
        _NOTIFY_ALL.run(conn, {"channel": CHANNEL, "payloads": payloads})


def placed(conn: sa.Connection, agent: str, agent_type: str, busy: bool) -> None:
    """A task was queued on `agent`: wake its worker, and the type's thieves if it waits."""
    notify(conn, TASK, agent)
    if busy:
        notify(conn, BUSY, agent_type)


def parse(payload: str) -> Wake | None:
    """The wake-up in a payload; None for one this version does not know."""
    kind, _, target = payload.partition(":")
    return Wake(kind, target) if kind in KINDS else None
