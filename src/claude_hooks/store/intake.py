"""Storage for webhook intake: the deliveries, and the forge state the flows remember."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import DBAPICursor

from claude_hooks.core.decision import (
    Assigned,
    CiWatch,
    FixAttempt,
    IntakeView,
    IssueGuard,
    PullLink,
    Reset,
)
from claude_hooks.core.domain import Task, TaskKind, TaskState
from claude_hooks.core.new_event import RunningTask
from claude_hooks.store.kept_reader import KeptReader
from claude_hooks.store.labels import read_labels
from claude_hooks.store.prepared import Prepared, floats, pipelined
from claude_hooks.store.schema import (
    assignments,
    ci_watches,
    deliveries,
    fix_attempts,
    pull_links,
    tasks,
)
from claude_hooks.store.spend import (
    ask_guard,
    ask_usage_since_guard,
    guard_of,
    read_guard,
    read_usage,
    usage_of,
    write_reset,
    write_resets,
)
from claude_hooks.store.upsert import upsert


@dataclass(slots=True)
class DeliveryRecord:
    id: str
    flavor: str
    event: str
    event_type: str
    received_at: float
    body: str
    action: str | None = None
    repo: str | None = None
    number: int | None = None
    sender: str | None = None
    outcome: str = "queued"
    reason: str | None = None
    task_ids: list[str] = field(default_factory=list)
    replay_of: str | None = None
    pruned_at: float | None = None


def delivery_of(row: sa.Row[Any]) -> DeliveryRecord:
    """The record of a row of `deliveries` (its columns, by name)."""
    m = row._mapping
    return DeliveryRecord(
        id=m["id"],
        flavor=m["flavor"],
        event=m["event"],
        event_type=m["event_type"],
        received_at=m["received_at"],
        body=m["body"],
        action=m["action"],
        repo=m["repo"],
        number=m["number"],
        sender=m["sender"],
        outcome=m["outcome"],
        reason=m["reason"],
        task_ids=list(m["task_ids"] or []),
        replay_of=m["replay_of"],
        pruned_at=m["pruned_at"],
    )


_LINK_COLUMNS = (
    pull_links.c.repo,
    pull_links.c.pr_number,
    pull_links.c.author_type,
    pull_links.c.issue_number,
    pull_links.c.head_sha,
    pull_links.c.open,
)


def _link(row: Any) -> PullLink:
    """A pull link from a row of `_LINK_COLUMNS`."""
    repo, pr_number, author_type, issue_number, head_sha, is_open = tuple(row)
    return PullLink(repo, pr_number, author_type, issue_number, head_sha, bool(is_open))


_DELIVERY_FIELDS = tuple(f.name for f in dataclasses.fields(DeliveryRecord))

# Statements on the webhook path, built once and run by the driver (see `prepared`).
_INSERT_DELIVERY = Prepared(deliveries.insert())
_DELIVERY_EXISTS = Prepared(
    sa.select(deliveries.c.id).where(deliveries.c.id == sa.bindparam("b_id"))
)
_ASSIGNED = Prepared(
    sa.select(assignments.c.type).where(
        assignments.c.repo == sa.bindparam("b_repo"),
        assignments.c.number == sa.bindparam("b_number"),
    )
)
_PULL_LINK = Prepared(
    sa.select(*_LINK_COLUMNS).where(
        pull_links.c.repo == sa.bindparam("b_repo"),
        pull_links.c.pr_number == sa.bindparam("b_number"),
    )
)
# A delivery's id seen or not, its issue's assigned types and its pull link, in one statement
# (`look_ahead`): each is a statement to parse, plan and run, and to send and dump.
_AHEAD = Prepared(
    sa.select(
        sa.exists().where(deliveries.c.id == sa.bindparam("b_id")),
        sa.func.array(
            sa.select(assignments.c.type)
            .where(
                assignments.c.repo == sa.bindparam("b_repo"),
                assignments.c.number == sa.bindparam("b_number"),
            )
            .scalar_subquery()
        ),
        *_LINK_COLUMNS,
    ).select_from(
        sa.select(sa.literal(1).label("one"))
        .subquery("one")
        .outerjoin(
            pull_links,
            sa.and_(
                pull_links.c.repo == sa.bindparam("b_repo"),
                pull_links.c.pr_number == sa.bindparam("b_number"),
            ),
        )
    )
)
_UNASSIGN = Prepared(
    assignments.delete().where(
        assignments.c.repo == sa.bindparam("b_repo"),
        assignments.c.number == sa.bindparam("b_number"),
    )
)
_ASSIGN = Prepared(assignments.insert())
_FIX_ATTEMPTS = Prepared(
    sa.select(fix_attempts.c.count).where(
        fix_attempts.c.repo == sa.bindparam("b_repo"),
        fix_attempts.c.pr_number == sa.bindparam("b_number"),
        fix_attempts.c.head_sha == sa.bindparam("b_sha"),
    )
)
_QUEUED_TWIN = Prepared(
    sa.select(tasks.c.id)
    .where(
        tasks.c.session_key == sa.bindparam("b_key"),
        tasks.c.kind == sa.bindparam("b_kind"),
        tasks.c.state == TaskState.QUEUED.value,
    )
    .order_by(tasks.c.seq)
    .limit(1)
)
_MERGE = Prepared(
    tasks.update()
    .where(tasks.c.id == sa.bindparam("b_id"), tasks.c.state == TaskState.QUEUED.value)
    .values(payload=sa.bindparam("b_payload", type_=tasks.c.payload.type))
    .returning(tasks.c.id)
)

# A run's statements (`batch`, PostgreSQL): one for all its rows however many, their values in
# arrays. The twins: one row a (session key, kind), in order, the twin's id or NULL.
_TWINS = Prepared(
    sa.text(
        "SELECT (SELECT t.id FROM tasks t WHERE t.session_key = k.key AND t.kind = k.kind"
        f" AND t.state = '{TaskState.QUEUED.value}' ORDER BY t.seq LIMIT 1)"
        " FROM unnest(CAST(:b_keys AS text[]), CAST(:b_kinds AS text[]))"
        " WITH ORDINALITY AS k(key, kind, ord) ORDER BY k.ord"
    ),
    binary=True,
)
_MERGES = Prepared(
    sa.text(
        "UPDATE tasks SET payload = CAST(m.payload AS json)"
        " FROM unnest(CAST(:b_ids AS text[]), CAST(:b_payloads AS text[])) AS m(id, payload)"
        f" WHERE tasks.id = m.id AND tasks.state = '{TaskState.QUEUED.value}'"
        " RETURNING tasks.id"
    ),
    binary=True,
)
_DELIVERY_TYPES = {
    "received_at": "float8",
    "number": "int",
    "task_ids": "text",  # JSON, cast in the select
    "pruned_at": "float8",
}
# PostgreSQL: deliveries' rows from one array a column (`delivery_arrays`).
INSERT_DELIVERIES_SQL = (
    f"INSERT INTO deliveries ({', '.join(_DELIVERY_FIELDS)})"
    " SELECT "
    + ", ".join(
        f"CAST(d.{name} AS json)" if name == "task_ids" else f"d.{name}"
        for name in _DELIVERY_FIELDS
    )
    + " FROM unnest("
    + ", ".join(
        f"CAST(:{name} AS {_DELIVERY_TYPES.get(name, 'text')}[])" for name in _DELIVERY_FIELDS
    )
    + f") AS d({', '.join(_DELIVERY_FIELDS)})"
)
_INSERT_DELIVERIES = Prepared(sa.text(INSERT_DELIVERIES_SQL), binary=True)
_UNASSIGN_ALL = Prepared(
    sa.text(
        "DELETE FROM assignments USING unnest(CAST(:b_repos AS text[]),"
        " CAST(:b_numbers AS int[])) AS i(repo, number)"
        " WHERE assignments.repo = i.repo AND assignments.number = i.number"
    ),
    binary=True,
)
_ASSIGN_ALL = Prepared(
    sa.text(
        "INSERT INTO assignments (repo, number, type) SELECT * FROM unnest("
        "CAST(:repos AS text[]), CAST(:numbers AS int[]), CAST(:types AS text[]))"
    ),
    binary=True,
)


def write_assignment(conn: sa.Connection, repo: str, number: int, types: Iterable[str]) -> None:
    """Make `types` the ones assigned to an issue, within the caller's transaction."""
    _UNASSIGN.run(conn, {"b_repo": repo, "b_number": number})
    for agent_type in sorted(set(types)):
        _ASSIGN.run(conn, {"repo": repo, "number": number, "type": agent_type})


def ask_twin(conn: sa.Connection, task: Task) -> DBAPICursor:
    """Send the look-up of a still-queued task of the same session and kind as `task`; its
    row (the twin's id) is read by the caller, so that under psycopg's pipeline the look-up
    travels with the placement's (see `placing.ask`)."""
    return _QUEUED_TWIN.run(conn, {"b_key": task.session_key, "b_kind": task.kind.value})


def ask_twins(conn: sa.Connection, asked: Sequence[Task]) -> DBAPICursor:
    """PostgreSQL: send `ask_twin` for each of `asked` in one statement; its rows are the
    twins' ids (None: none), one a task, in order, all read in one snapshot."""
    return _TWINS.run(
        conn,
        {"b_keys": [t.session_key for t in asked], "b_kinds": [t.kind.value for t in asked]},
    )


def send_merges(conn: sa.Connection, merges: Sequence[tuple[str, Task]]) -> tuple[DBAPICursor, int]:
    """PostgreSQL: send `send_merge` for each (twin, task) in one statement, in order (of
    several into one twin the last one's payload stays, as one at a time); its rows are the
    twins it merged into, and the count of twins it must name."""
    last = {twin: task.payload for twin, task in merges}
    return _MERGES.run(
        conn, {"b_ids": list(last), "b_payloads": [json.dumps(p) for p in last.values()]}
    ), len(last)


def merge_into_twin(conn: sa.Connection, twin: str, task: Task) -> str | None:
    """Give the still-queued `twin` the newer event's payload instead of queueing `task`,
    within the caller's transaction; the twin's id, or None if it is no longer queued."""
    merged = send_merge(conn, twin, task).fetchone()
    return str(merged[0]) if merged is not None else None


def send_merge(conn: sa.Connection, twin: str, task: Task) -> DBAPICursor:
    """Send `merge_into_twin`'s update without waiting; its row (the twin's id) says it
    merged (RETURNING, not the row count: under a pipeline the count is not known yet)."""
    return _MERGE.run(conn, {"b_id": twin, "b_payload": task.payload})


def write_pull_link(conn: sa.Connection, link: PullLink, now: float) -> None:
    values = {
        "author_type": link.author_type,
        "issue_number": link.issue_number,
        "head_sha": link.head_sha,
        "open": link.open,
        "updated_at": now,
    }
    upsert(conn, pull_links, {"repo": link.repo, "pr_number": link.pr_number, **values})


def write_fix_attempt(conn: sa.Connection, attempt: FixAttempt) -> None:
    """One more fix attempt on a head: an increment, so two deliveries both count."""
    repo, pr_number, sha = attempt
    upsert(
        conn,
        fix_attempts,
        {"repo": repo, "pr_number": pr_number, "head_sha": sha, "count": 1},
        update={"count": fix_attempts.c.count + 1},
    )


def write_ci_watch(conn: sa.Connection, watch: CiWatch) -> None:
    upsert(conn, ci_watches, dataclasses.asdict(watch))


def retarget_review(conn: sa.Connection, session_key: str, fields: dict[str, Any]) -> None:
    """Point the session's queued review at a PR's new head, within the caller's transaction."""
    row = conn.execute(
        sa.select(tasks.c.id, tasks.c.payload)
        .where(
            tasks.c.session_key == session_key,
            tasks.c.kind == TaskKind.REVIEW_PR.value,
            tasks.c.state == TaskState.QUEUED.value,
        )
        .order_by(tasks.c.seq)
        .limit(1)
    ).first()
    if row is not None:
        conn.execute(
            tasks.update()
            .where(tasks.c.id == row.id, tasks.c.state == TaskState.QUEUED.value)
            .values(payload={**row.payload, **fields})
        )


def drop_ci_watch(conn: sa.Connection, repo: str, pr_number: int) -> None:
    conn.execute(
        ci_watches.delete().where(ci_watches.c.repo == repo, ci_watches.c.pr_number == pr_number)
    )


def insert_delivery(
    conn: sa.Connection,
    record: DeliveryRecord,
    assigned: Assigned | None,
    resets: Sequence[Reset] = (),
) -> None:
    """Insert a settled delivery, the assignment state and the loop guards it leaves, within
    the caller's transaction; an id seen before raises `sa.exc.IntegrityError` (the primary
    key decides), so a duplicate leaves nothing."""
    _INSERT_DELIVERY.run(conn, delivery_row(record))
    if assigned is not None:
        write_assignment(conn, *assigned)
    for repo, number, since in resets:
        write_reset(conn, repo, number, since)


def delivery_row(record: DeliveryRecord) -> dict[str, Any]:
    """The record's columns; its fields as they are (`dataclasses.asdict` deep-copies the
    body, 50 us per delivery)."""
    return {name: getattr(record, name) for name in _DELIVERY_FIELDS}


def delivery_arrays(records: Sequence[DeliveryRecord]) -> dict[str, list[Any]]:
    """The parameters of `INSERT_DELIVERIES_SQL`: each column's values, in order."""
    values: dict[str, list[Any]] = {
        name: [getattr(record, name) for record in records] for name in _DELIVERY_FIELDS
    }
    values["task_ids"] = [json.dumps(ids) for ids in values["task_ids"]]
    values["received_at"] = floats(values["received_at"])
    values["pruned_at"] = floats(values["pruned_at"])
    return values


Settled = tuple[DeliveryRecord, Assigned | None, Sequence[Reset]]


def insert_deliveries(conn: sa.Connection, settled: Sequence[Settled]) -> None:
    """PostgreSQL: `insert_delivery` for each of a run's settled deliveries, in order, in one
    statement each for the records, the assignments (the issues' DELETE and the INSERT of
    each one's last state) and the loop guards' resets; an id seen before (or twice) raises
    `sa.exc.IntegrityError` and leaves nothing."""
    _INSERT_DELIVERIES.run(conn, delivery_arrays([record for record, _, _ in settled]))
    # Each issue's last assignment: what the DELETE and INSERT of each, in order, leave.
    last = {(a[0], a[1]): a[2] for _, a, _ in settled if a is not None}
    if last:
        keys = list(last)
        _UNASSIGN_ALL.run(
            conn, {"b_repos": [r for r, _ in keys], "b_numbers": [n for _, n in keys]}
        )
        rows = [(r, n, t) for (r, n), types in last.items() for t in sorted(set(types))]
        if rows:
            _ASSIGN_ALL.run(
                conn,
                {
                    "repos": [r for r, _, _ in rows],
                    "numbers": [n for _, n, _ in rows],
                    "types": [t for _, _, t in rows],
                },
            )
    write_resets(conn, [reset for _, _, resets in settled for reset in resets])


@dataclass(frozen=True, slots=True)
class LookAhead:
    """A delivery's id seen or not, and what its decide phase reads of its issue, read
    together before it runs (`IntakeStore.look_ahead`): one round trip and one hop to a
    thread instead of one of each per read. Empty (`issue` None) where reads are cheaper
    made as needed (SQLite) or the delivery names no issue."""

    seen: bool
    issue: tuple[str, int] | None = None
    assigned: frozenset[str] = frozenset()
    link: PullLink | None = None
    guarded: bool = False  # `guard` and `usage` were read (a human's delivery needs neither)
    guard: IssueGuard | None = None
    usage: tuple[int, float] = (0, 0.0)  # since the guard's `since` (0 without a guard)


class AheadView:
    """The decide phase's `IntakeView` for one delivery: its issue's reads answered from its
    `LookAhead`, every other read by `view`. Only the delivery's own transaction, applied
    after the decide phase, changes the issue while the delivery has its turn (`in_order`);
    another node's writes meanwhile are as if made after the look-ahead."""

    def __init__(self, ahead: LookAhead, view: IntakeView) -> None:
        self.ahead = ahead
        self.view = view

    def _of(self, repo: str, number: int) -> bool:
        return self.ahead.issue == (repo, number)

    async def assigned_types(self, repo: str, number: int) -> set[str]:
        if self._of(repo, number):
            return set(self.ahead.assigned)
        return await self.view.assigned_types(repo, number)

    async def pull_link(self, repo: str, pr_number: int) -> PullLink | None:
        if self._of(repo, pr_number):
            return self.ahead.link
        return await self.view.pull_link(repo, pr_number)

    async def guard(self, repo: str, number: int) -> IssueGuard | None:
        if self.ahead.guarded and self._of(repo, number):
            return self.ahead.guard
        return await self.view.guard(repo, number)

    async def issue_usage(self, repo: str, number: int, since: float) -> tuple[int, float]:
        guard = self.ahead.guard
        since_guard = guard.since if guard is not None else 0.0
        if self.ahead.guarded and self._of(repo, number) and since == since_guard:
            return self.ahead.usage
        return await self.view.issue_usage(repo, number, since)

    async def pull_link_for_head(self, repo: str, sha: str) -> PullLink | None:
        return await self.view.pull_link_for_head(repo, sha)

    async def fix_attempts(self, repo: str, pr_number: int, sha: str) -> int:
        return await self.view.fix_attempts(repo, pr_number, sha)

    async def labels(self, repo: str, number: int) -> set[str]:
        return await self.view.labels(repo, number)

    async def last_review(self, session_key: str) -> tuple[str, str] | None:
        return await self.view.last_review(session_key)

    async def running_task(self, session_key: str, kind: str) -> RunningTask | None:
        return await self.view.running_task(session_key, kind)


class IntakeStore(IntakeView, Protocol):
    async def has_delivery(self, delivery_id: str) -> bool: ...
    async def look_ahead(
        self, delivery_id: str, issue: tuple[str, int] | None, guarded: bool = True
    ) -> LookAhead:
        """Whether `delivery_id` is recorded, and its issue's reads (see `LookAhead`);
        `guarded`: its loop guard and usage too."""
        ...

    async def add_delivery(
        self,
        record: DeliveryRecord,
        assigned: tuple[str, int, frozenset[str]] | None = None,
        resets: Sequence[Reset] = (),
    ) -> bool: ...
    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None: ...
    async def list_deliveries(
        self, limit: int, offset: int, outcome: str | None = None
    ) -> list[DeliveryRecord]: ...
    async def count_deliveries(self, outcome: str | None = None) -> int: ...
    async def set_assigned_types(self, repo: str, number: int, types: Iterable[str]) -> None: ...
    async def drop_ci_watch(self, repo: str, pr_number: int) -> None: ...
    async def ci_watches(self) -> list[CiWatch]: ...
    async def active_tasks(self, session_keys: Iterable[str]) -> list[str]: ...


class SqlIntake:
    """`IntakeStore` on the same engine as the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine, kept: KeptReader) -> None:
        self.engine = engine
        self.reader = reader
        self.kept = kept  # for the webhook path's reads

    async def has_delivery(self, delivery_id: str) -> bool:
        conn = self.kept.connection()
        return _DELIVERY_EXISTS.scalar(conn, {"b_id": delivery_id}) is not None

    async def look_ahead(
        self, delivery_id: str, issue: tuple[str, int] | None, guarded: bool = True
    ) -> LookAhead:
        conn = self.kept.connection()
        seen_params = {"b_id": delivery_id}
        if issue is None or conn.dialect.name == "sqlite":
            # SQLite reads on the event loop's thread in microseconds: reading ahead would
            # only add the reads a delivery does not need.
            return LookAhead(_DELIVERY_EXISTS.scalar(conn, seen_params) is not None)
        repo, number = issue
        params = {"b_id": delivery_id, "b_repo": repo, "b_number": number}
        guard = usage = None
        if guarded:
            with pipelined(conn):  # read once the pipeline's end has brought every answer
                ahead = _AHEAD.run(conn, params)
                guard = ask_guard(conn, repo, number)
                usage = ask_usage_since_guard(conn, repo, number)
        else:
            ahead = _AHEAD.run(conn, params)
        seen, assigned, *link = ahead.fetchone() or (False, [], None)
        return LookAhead(
            bool(seen),
            issue,
            frozenset(assigned),
            _link(link) if link[0] is not None else None,
            guarded,
            guard_of(guard) if guard is not None else None,
            usage_of(usage) if usage is not None else (0, 0.0),
        )

    async def add_delivery(
        self,
        record: DeliveryRecord,
        assigned: tuple[str, int, frozenset[str]] | None = None,
        resets: Sequence[Reset] = (),
    ) -> bool:
        """Insert a settled delivery, and the state it leaves, in one transaction; False if
        its id was seen before (the primary key decides)."""
        try:
            with self.engine.begin() as conn:
                insert_delivery(conn, record, assigned, resets)
        except sa.exc.IntegrityError:
            return False
        return True

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        with self.reader.connect() as conn:
            row = (
                conn.execute(sa.select(deliveries).where(deliveries.c.id == delivery_id))
            ).first()
        return delivery_of(row) if row else None

    async def list_deliveries(
        self, limit: int, offset: int, outcome: str | None = None
    ) -> list[DeliveryRecord]:
        query = sa.select(deliveries).order_by(deliveries.c.received_at.desc())
        if outcome is not None:
            query = query.where(deliveries.c.outcome == outcome)
        with self.reader.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset))
            return [delivery_of(row) for row in rows]

    async def count_deliveries(self, outcome: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(deliveries)
        if outcome is not None:
            query = query.where(deliveries.c.outcome == outcome)
        with self.reader.connect() as conn:
            return int(conn.scalar(query) or 0)

    async def assigned_types(self, repo: str, number: int) -> set[str]:
        rows = _ASSIGNED.run(self.kept.connection(), {"b_repo": repo, "b_number": number})
        return {row[0] for row in rows.fetchall()}

    async def set_assigned_types(self, repo: str, number: int, types: Iterable[str]) -> None:
        with self.engine.begin() as conn:
            self._assign(conn, repo, number, types)

    def _assign(self, conn: sa.Connection, repo: str, number: int, types: Iterable[str]) -> None:
        write_assignment(conn, repo, number, types)

    async def pull_link(self, repo: str, pr_number: int) -> PullLink | None:
        params = {"b_repo": repo, "b_number": pr_number}
        row = _PULL_LINK.run(self.kept.connection(), params).fetchone()
        return _link(row) if row else None

    async def pull_link_for_head(self, repo: str, sha: str) -> PullLink | None:
        with self.reader.connect() as conn:
            row = (
                conn.execute(
                    sa.select(*_LINK_COLUMNS)
                    .where(pull_links.c.repo == repo, pull_links.c.head_sha == sha)
                    .order_by(pull_links.c.open.desc(), pull_links.c.updated_at.desc())
                )
            ).first()
        return _link(row) if row else None

    async def fix_attempts(self, repo: str, pr_number: int, sha: str) -> int:
        params = {"b_repo": repo, "b_number": pr_number, "b_sha": sha}
        return int(_FIX_ATTEMPTS.scalar(self.kept.connection(), params) or 0)

    async def guard(self, repo: str, number: int) -> IssueGuard | None:
        return read_guard(self.kept.connection(), repo, number)

    async def issue_usage(self, repo: str, number: int, since: float) -> tuple[int, float]:
        return read_usage(self.kept.connection(), repo, number, since)

    async def labels(self, repo: str, number: int) -> set[str]:
        with self.reader.connect() as conn:
            return read_labels(conn, repo, number)

    async def last_review(self, session_key: str) -> tuple[str, str] | None:
        with self.reader.connect() as conn:
            rows = conn.execute(
                sa.select(tasks.c.payload, tasks.c.result)
                .where(
                    tasks.c.session_key == session_key,
                    tasks.c.state == TaskState.SUCCEEDED.value,
                    tasks.c.kind == TaskKind.REVIEW_PR.value,
                )
                .order_by(tasks.c.enqueued_at.desc(), tasks.c.id.desc())
                .limit(50)
            )
            for payload, result in rows:
                if payload.get("head_sha"):
                    return str(payload["head_sha"]), result or ""
        return None

    async def running_task(self, session_key: str, kind: str) -> RunningTask | None:
        with self.reader.connect() as conn:
            row = conn.execute(
                sa.select(tasks.c.id, tasks.c.payload)
                .where(
                    tasks.c.session_key == session_key,
                    tasks.c.kind == kind,
                    tasks.c.state == TaskState.RUNNING.value,
                )
                .limit(1)
            ).first()
        return None if row is None else RunningTask(row.id, dict(row.payload))

    async def drop_ci_watch(self, repo: str, pr_number: int) -> None:
        with self.engine.begin() as conn:
            drop_ci_watch(conn, repo, pr_number)

    async def ci_watches(self) -> list[CiWatch]:
        with self.reader.connect() as conn:
            rows = conn.execute(sa.select(ci_watches))
            return [CiWatch(r.repo, r.pr_number, r.head_sha, r.created_at) for r in rows]

    async def active_tasks(self, session_keys: Iterable[str]) -> list[str]:
        keys = list(set(session_keys))
        if not keys:
            return []
        with self.reader.connect() as conn:
            rows = conn.scalars(
                sa.select(tasks.c.id)
                .where(
                    tasks.c.session_key.in_(keys),
                    tasks.c.state.in_(
                        [TaskState.QUEUED.value, TaskState.HELD.value, TaskState.RUNNING.value]
                    ),
                )
                .order_by(tasks.c.seq)
            )
            return list(rows.all())
