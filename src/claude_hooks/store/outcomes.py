"""Outcome records: written with a delivery's decision, read by one named report query.

`write_outcomes` runs in the transaction that applies a decision (`store/decisions.py`), so a
duplicate delivery counts nothing twice. Each write is idempotent or an increment: a
session's first sighting keeps its variant and model, a PR is opened once, approval, merge
and close keep their first time, and only the first head's CI verdict counts.
`outcome_report` is the report's one query: per group, the sums `core/outcome_report.py`
turns into rates and costs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, get_args

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from claude_hooks.core.outcome_report import (
    GroupBy,
    OutcomeRows,
    PullCounts,
    RoundCount,
    SessionCounts,
    TaskCount,
)
from claude_hooks.core.outcomes import (
    Intervention,
    InterventionKind,
    OutcomeFact,
    PullFact,
    SessionSeen,
)
from claude_hooks.store.outbox import write_letter
from claude_hooks.store.prepared import Prepared, floats
from claude_hooks.store.schema import outcome_pulls, outcome_sessions, outcome_summaries, tasks

WEEK = 7 * 86400.0

s, p = outcome_sessions, outcome_pulls


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table)


def _session_upsert(module: Any) -> Prepared:
    """A session's first sighting; a later one only fills in when it was assigned. Built
    once per dialect: building it (the `excluded` columns) cost more than running it."""
    statement = module.insert(s)
    assigned = sa.func.coalesce(s.c.assigned_at, statement.excluded.assigned_at)
    return Prepared(
        statement.on_conflict_do_update(
            index_elements=[s.c.session_key], set_={"assigned_at": assigned}
        )
    )


_SESSION = {"postgresql": _session_upsert(postgresql), "sqlite": _session_upsert(sqlite)}
# Several sessions' upserts in one statement (`batch`, PostgreSQL): one row a session.
_SESSIONS = Prepared(
    sa.text(
        "INSERT INTO outcome_sessions (session_key, type, repo, number, variant, model,"
        " first_at, assigned_at) SELECT * FROM unnest(CAST(:session_key AS text[]),"
        " CAST(:type AS text[]), CAST(:repo AS text[]), CAST(:number AS int[]),"
        " CAST(:variant AS text[]), CAST(:model AS text[]), CAST(:first_at AS float8[]),"
        " CAST(:assigned_at AS float8[]))"
        " ON CONFLICT (session_key) DO UPDATE"
        " SET assigned_at = coalesce(outcome_sessions.assigned_at, excluded.assigned_at)"
    ),
    binary=True,
)


def _session_row(fact: SessionSeen) -> dict[str, Any]:
    return {
        "session_key": fact.session_key,
        "type": fact.agent_type,
        "repo": fact.repo,
        "number": fact.number,
        "variant": fact.variant,
        "model": fact.model,
        "first_at": fact.at,
        "assigned_at": fact.at if fact.assigned else None,
    }


def _session(conn: sa.Connection, fact: SessionSeen) -> None:
    _SESSION[conn.dialect.name].run(conn, _session_row(fact))


def _pull_opened(module: Any) -> Prepared:
    return Prepared(
        module.insert(p)
        .values(
            repo=sa.bindparam("b_repo"),
            pr_number=sa.bindparam("b_number"),
            session_key=sa.bindparam("b_key"),
            type=sa.bindparam("b_type"),
            opened_at=sa.bindparam("b_at"),
            first_head=sa.bindparam("b_sha"),
        )
        .on_conflict_do_nothing(index_elements=[p.c.repo, p.c.pr_number])
    )


_PULL_OPENED = {"postgresql": _pull_opened(postgresql), "sqlite": _pull_opened(sqlite)}
_PULL_KEY = sa.and_(p.c.repo == sa.bindparam("b_repo"), p.c.pr_number == sa.bindparam("b_number"))
_AT = sa.bindparam("b_at", type_=sa.Float)


def _pull_update(*where: sa.ColumnElement[bool], **values: Any) -> Prepared:
    return Prepared(p.update().where(_PULL_KEY, *where).values(**values))


# A PR's later events, each one statement built once (the webhook path: building a statement
# through `Connection.execute` cost more than running it). An approval, a merge and a close
# keep their first time; changes requested after an approval do not count; a failure on the
# first head stands, a pass counts if nothing failed first.
_PULL_EVENTS = {
    "approved": _pull_update(approved_at=sa.func.coalesce(p.c.approved_at, _AT)),
    "changes_requested": _pull_update(
        p.c.approved_at.is_(None), review_rounds=p.c.review_rounds + 1
    ),
    "merged": _pull_update(merged_at=sa.func.coalesce(p.c.merged_at, _AT)),
    "closed": _pull_update(p.c.merged_at.is_(None), closed_at=sa.func.coalesce(p.c.closed_at, _AT)),
}
_CI_FIRST = p.c.first_head == sa.bindparam("b_sha")
_CI_VERDICT = sa.bindparam("b_passed", type_=sa.Boolean)
_CI_FAILED = _pull_update(_CI_FIRST, first_ci=_CI_VERDICT)
_CI_PASSED = _pull_update(_CI_FIRST, p.c.first_ci.is_(None), first_ci=_CI_VERDICT)


def _pull(conn: sa.Connection, fact: PullFact) -> None:
    key = {"b_repo": fact.repo, "b_number": fact.pr_number}
    if fact.event == "opened":
        if fact.session_key is None or fact.author_type is None or fact.head_sha is None:
            return
        _PULL_OPENED[conn.dialect.name].run(
            conn,
            {
                **key,
                "b_key": fact.session_key,
                "b_type": fact.author_type,
                "b_at": fact.at,
                "b_sha": fact.head_sha,
            },
        )
    elif fact.event == "ci":
        verdict = _CI_PASSED if fact.passed else _CI_FAILED
        verdict.run(conn, {**key, "b_sha": fact.head_sha, "b_passed": bool(fact.passed)})
    elif fact.event == "changes_requested":
        _PULL_EVENTS[fact.event].run(conn, key)
    else:
        _PULL_EVENTS[fact.event].run(conn, {**key, "b_at": fact.at})


def _intervention_update(kind: str, by_session: bool) -> Prepared:
    if by_session:
        which = s.c.session_key == sa.bindparam("b_key")
    else:
        which = sa.and_(
            s.c.repo == sa.bindparam("b_repo"),
            s.c.number == sa.bindparam("b_number"),
            s.c.assigned_at.is_not(None),
        )
    column = s.c[kind]
    return Prepared(s.update().where(which).values({column: column + sa.bindparam("b_count")}))


_COUNT_INTERVENTION = {
    (kind, by_session): _intervention_update(kind, by_session)
    for kind in get_args(InterventionKind)
    for by_session in (True, False)
}


def _intervention(conn: sa.Connection, fact: Intervention) -> None:
    if fact.session_key is not None:
        params: dict[str, Any] = {"b_key": fact.session_key}
    else:
        params = {"b_repo": fact.repo, "b_number": fact.number}
    _COUNT_INTERVENTION[fact.kind, fact.session_key is not None].run(
        conn, {**params, "b_count": fact.count}
    )


def write_outcomes(conn: sa.Connection, facts: Iterable[OutcomeFact]) -> None:
    """Record `facts` in order, within the caller's transaction."""
    for fact in facts:
        if isinstance(fact, SessionSeen):
            _session(conn, fact)
        elif isinstance(fact, PullFact):
            _pull(conn, fact)
        else:
            _intervention(conn, fact)


def write_all_outcomes(conn: sa.Connection, facts: Iterable[OutcomeFact]) -> None:
    """PostgreSQL: `write_outcomes`, each run of consecutive sightings in one statement (an
    upsert touches a row once: a session's later sightings are folded into its first, as the
    upsert would have applied them: only an `assigned_at` still missing is filled in)."""
    rows: dict[str, dict[str, Any]] = {}  # session key -> its row
    for fact in facts:
        if isinstance(fact, SessionSeen):
            row = rows.setdefault(fact.session_key, _session_row(fact))
            if row["assigned_at"] is None and fact.assigned:
                row["assigned_at"] = fact.at
            continue
        _sessions(conn, list(rows.values()))  # the facts that follow may touch these rows
        rows = {}
        write_outcomes(conn, [fact])
    _sessions(conn, list(rows.values()))


def _sessions(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        values = {name: [row[name] for row in rows] for name in rows[0]}
        values["first_at"] = floats(values["first_at"])
        values["assigned_at"] = floats(values["assigned_at"])
        _SESSIONS.run(conn, values)


def _week(conn: sa.Connection, at: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """The start of the week (from the epoch) that `at` falls in, as text."""
    if conn.dialect.name == "postgresql":
        start = sa.func.floor(at / WEEK) * WEEK
    else:
        start = sa.cast(sa.cast(at / WEEK, sa.Integer) * WEEK, sa.Float)
    return sa.cast(sa.cast(start, sa.BigInteger), sa.String)


def _group(
    conn: sa.Connection, by: GroupBy | None, own: sa.Table, at: sa.ColumnElement[Any]
) -> sa.ColumnElement[Any]:
    """The column a row is grouped by: from the session's record where it has one, else
    from the row's own `type` and `repo` (a task or PR the outcome records never saw begin)."""
    if by is None:
        return sa.literal("all")
    if by == "week":
        return _week(conn, at)
    if by in ("type", "repo"):
        return own.c[by] if own is not s else s.c[by]
    return s.c[by]


def _wait(end: sa.ColumnElement[Any]) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]]:
    both = sa.and_(end.is_not(None), s.c.assigned_at.is_not(None))
    return (
        sa.func.coalesce(sa.func.sum(sa.case((both, end - s.c.assigned_at))), 0.0),
        sa.func.count(sa.case((both, 1))),
    )


def outcome_report(conn: sa.Connection, since: float | None, by: GroupBy | None) -> OutcomeRows:
    """The report's query: per group, tasks by kind and state with their cost (tasks
    enqueued since `since`), the agent PRs, the sessions and the review rounds (sessions
    begun since `since`)."""
    # Only the model and the variant need the session's record: the join costs more than
    # the rest of the query (a lookup per task).
    joined = (
        tasks.outerjoin(s, s.c.session_key == tasks.c.session_key)
        if by in ("model", "variant")
        else tasks
    )
    group = _group(conn, by, tasks, tasks.c.enqueued_at).label("g")
    query = sa.select(
        group,
        tasks.c.kind,
        tasks.c.state,
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(tasks.c.cost_usd), 0.0),
    ).select_from(joined)
    if since is not None:
        query = query.where(tasks.c.enqueued_at >= since)
    task_rows = [
        TaskCount(g, kind, state, count, float(cost))
        for g, kind, state, count, cost in conn.execute(
            query.group_by(group, tasks.c.kind, tasks.c.state)
        )
    ]

    pulls_joined = p.outerjoin(s, s.c.session_key == p.c.session_key)
    began = sa.func.coalesce(s.c.first_at, p.c.opened_at)
    group = _group(conn, by, p, began).label("g")
    approved = p.c.approved_at.is_not(None)
    query = sa.select(
        group,
        sa.func.count(),
        sa.func.count(p.c.merged_at),
        sa.func.count(p.c.closed_at),
        sa.func.count(p.c.approved_at),
        sa.func.coalesce(sa.func.sum(sa.case((approved, p.c.review_rounds), else_=0)), 0),
        sa.func.count(p.c.first_ci),
        sa.func.count(sa.case((p.c.first_ci == sa.true(), 1))),
        *_wait(p.c.opened_at),
        *_wait(p.c.approved_at),
        *_wait(p.c.merged_at),
    ).select_from(pulls_joined)
    if since is not None:
        query = query.where(began >= since)
    pull_rows = [
        PullCounts(row[0], *(int(v) for v in row[1:8]), *_floats(row[8:]))
        for row in conn.execute(query.group_by(group))
    ]

    group = _group(conn, by, s, s.c.first_at).label("g")
    query = sa.select(
        group,
        sa.func.count(s.c.assigned_at),
        *(sa.func.coalesce(sa.func.sum(s.c[k]), 0) for k in _INTERVENTIONS),
    )
    if since is not None:
        query = query.where(s.c.first_at >= since)
    session_rows = [
        SessionCounts(row[0], *(int(v) for v in row[1:]))
        for row in conn.execute(query.group_by(group))
    ]

    group = _group(conn, by, p, began).label("g")
    query = sa.select(group, p.c.review_rounds, sa.func.count()).select_from(pulls_joined)
    query = query.where(approved)
    if since is not None:
        query = query.where(began >= since)
    round_rows = [
        RoundCount(g, rounds, count)
        for g, rounds, count in conn.execute(query.group_by(group, p.c.review_rounds))
    ]
    return OutcomeRows(task_rows, pull_rows, session_rows, round_rows)


_INTERVENTIONS = ("commands", "stops", "escalations", "human_commits")


def _floats(values: Any) -> list[float | int]:
    """The waits' (sum, count) pairs: sums as floats, counts as ints."""
    return [float(v) if i % 2 == 0 else int(v) for i, v in enumerate(values)]


class OutcomeStore(Protocol):
    async def report(self, since: float | None, by: GroupBy | None) -> OutcomeRows: ...
    async def variant_of(self, session_key: str) -> tuple[str | None] | None: ...
    async def post_summary(
        self, week: str, as_type: str, repo: str, number: int, body: str, now: float
    ) -> bool: ...


class SqlOutcomes:
    """`OutcomeStore` on the engines of the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def report(self, since: float | None, by: GroupBy | None) -> OutcomeRows:
        with self.reader.connect() as conn:
            return outcome_report(conn, since, by)

    async def variant_of(self, session_key: str) -> tuple[str | None] | None:
        """The prompt variant the session was given when first seen, as a 1-tuple (its
        variant may be None: none); None when the session has no record yet."""
        with self.reader.connect() as conn:
            row = conn.execute(sa.select(s.c.variant).where(s.c.session_key == session_key)).first()
        return None if row is None else (row.variant,)

    async def post_summary(
        self, week: str, as_type: str, repo: str, number: int, body: str, now: float
    ) -> bool:
        """Put the week's summary in the outbox, unless it was put there before: one
        transaction, so of several nodes the first posts it. False: posted already."""
        with self.engine.begin() as conn:
            first = conn.execute(
                _insert(conn, outcome_summaries)
                .values(week=week, posted_at=now)
                .on_conflict_do_nothing(index_elements=[outcome_summaries.c.week])
                .returning(outcome_summaries.c.week)
            ).first()
            if first is None:
                return False
            write_letter(conn, as_type, repo, number, body, now)
            return True
