"""Storage for spend and loop control: spend over the tasks table, budgets, per-issue guards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPICursor

from claude_hooks.core.budget import Period
from claude_hooks.core.decision import IssueGuard, Reset
from claude_hooks.store.prepared import Prepared, floats
from claude_hooks.store.schema import breakers, budgets, issue_guards, pull_links, tasks
from claude_hooks.store.upsert import upsert


@dataclass(frozen=True, slots=True)
class CostRow:
    """One finished task that cost something."""

    finished_at: float
    type: str
    repo: str
    number: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A type's API breaker as it stood after its last API failure (kept across a restart)."""

    type: str
    failures: int
    trips: int
    open_until: float | None
    kind: str
    detail: str


class SpendStore(Protocol):
    async def spent(
        self, agent_type: str | None, start: float, end: float, repo: str | None = None
    ) -> float: ...
    async def budgets(self) -> dict[tuple[str, Period], float]: ...
    async def set_budget(self, scope: str, period: Period, usd: float, now: float) -> None: ...
    async def clear_budgets(self, scope: str) -> int: ...
    async def cost_rows(self, since: float) -> list[CostRow]: ...
    async def tripped(self) -> list[IssueGuard]: ...
    async def breaker_states(self) -> list[BreakerState]: ...
    async def put_breaker(self, state: BreakerState) -> None: ...
    async def clear_breaker(self, agent_type: str) -> None: ...


# Statements on the webhook path, built once: building a statement costs more than running it.
_GUARD = Prepared(
    sa.select(
        issue_guards.c.repo,
        issue_guards.c.number,
        issue_guards.c.since,
        issue_guards.c.review_rounds,
        issue_guards.c.tripped_at,
        issue_guards.c.reason,
    ).where(
        issue_guards.c.repo == sa.bindparam("b_repo"),
        issue_guards.c.number == sa.bindparam("b_number"),
    )
)
_COST = sa.func.coalesce(sa.func.sum(tasks.c.cost_usd), 0.0)


def _usage(since: Any) -> Prepared:
    """An issue's usage since `since` (a bind or a subquery): its own tasks, plus those of
    each agent pull request opened for it, each counted by a correlated lookup on the full
    (repo, number) index. Every plan of this shape reads only the tasks counted: as one join
    or IN list, SQLite used only the repo part of the index, and PostgreSQL's generic plan
    (made while the tables were small) merge-joined over every task of the repository, 3 ms
    with 20,000 of them."""
    queued_since = tasks.c.enqueued_at >= since

    def of_pull(column: Any) -> Any:
        return (
            sa.select(column)
            .where(
                tasks.c.repo == pull_links.c.repo,
                tasks.c.number == pull_links.c.pr_number,
                queued_since,
            )
            .scalar_subquery()
        )

    return Prepared(
        sa.union_all(
            sa.select(sa.func.count(), _COST).where(
                tasks.c.repo == sa.bindparam("b_repo"),
                tasks.c.number == sa.bindparam("b_number"),
                queued_since,
            ),
            sa.select(
                sa.func.coalesce(sa.func.sum(of_pull(sa.func.count())), 0),
                sa.func.coalesce(sa.func.sum(of_pull(_COST)), 0.0),
            ).where(
                pull_links.c.repo == sa.bindparam("b_repo"),
                pull_links.c.issue_number == sa.bindparam("b_number"),
                # A link of the number to itself: its tasks are counted above already.
                pull_links.c.pr_number != sa.bindparam("b_number"),
            ),
        )
    )


_USAGE = _usage(sa.bindparam("b_since"))
# Since the issue's guard's `since` (0 without a guard): the usage the loop guard reads for a
# delivery that does not reset it, sent before the guard is read (`intake.look_ahead`).
_GUARDED_SINCE = (
    sa.select(issue_guards.c.since)
    .where(
        issue_guards.c.repo == sa.bindparam("b_repo"),
        issue_guards.c.number == sa.bindparam("b_number"),
    )
    .scalar_subquery()
)
_USAGE_SINCE_GUARD = _usage(sa.func.coalesce(_GUARDED_SINCE, 0.0))


def _reset(module: Any) -> Any:
    """Count an issue afresh: one upsert, where a read, an insert and an update were."""
    statement = module.insert(issue_guards).values(review_rounds=0, tripped_at=None, reason=None)
    cleared = {"since": statement.excluded.since, "review_rounds": 0}
    return statement.on_conflict_do_update(
        index_elements=["repo", "number"], set_={**cleared, "tripped_at": None, "reason": None}
    )


_RESET = {"postgresql": Prepared(_reset(postgresql)), "sqlite": Prepared(_reset(sqlite))}
# A run's resets (`batch`, PostgreSQL) in one statement: `_reset` for each issue.
_RESETS = Prepared(
    sa.text(
        "INSERT INTO issue_guards (repo, number, since, review_rounds, tripped_at, reason)"
        " SELECT r.repo, r.number, r.since, 0, NULL, NULL FROM unnest("
        "CAST(:repos AS text[]), CAST(:numbers AS int[]), CAST(:sinces AS float8[]))"
        " AS r(repo, number, since)"
        " ON CONFLICT (repo, number) DO UPDATE SET since = excluded.since, review_rounds = 0,"
        " tripped_at = NULL, reason = NULL"
    ),
    binary=True,
)


def write_reset(conn: sa.Connection, repo: str, number: int, now: float) -> None:
    """Count an issue afresh from `now`, within the caller's transaction."""
    _RESET[conn.dialect.name].run(conn, {"repo": repo, "number": number, "since": now})


def write_resets(conn: sa.Connection, resets: Sequence[Reset]) -> None:
    """PostgreSQL: `write_reset` for each of `resets` in order, in one statement (of several
    resets of one issue the last one's `since` stays, as one at a time)."""
    last = {(repo, number): since for repo, number, since in resets}
    if last:
        keys = list(last)
        _RESETS.run(
            conn,
            {
                "repos": [r for r, _ in keys],
                "numbers": [n for _, n in keys],
                "sinces": floats(last.values()),
            },
        )


def read_guard(conn: sa.Connection, repo: str, number: int) -> IssueGuard | None:
    return guard_of(ask_guard(conn, repo, number))


def ask_guard(conn: sa.Connection, repo: str, number: int) -> DBAPICursor:
    """Send the read of an issue's guard; `guard_of` reads its answer."""
    return _GUARD.run(conn, {"b_repo": repo, "b_number": number})


def guard_of(cursor: DBAPICursor) -> IssueGuard | None:
    row = cursor.fetchone()
    return IssueGuard(*row) if row else None


def read_usage(conn: sa.Connection, repo: str, number: int, since: float) -> tuple[int, float]:
    """Tasks queued for an issue (or an agent PR opened for it) since `since`, and what the
    finished ones cost."""
    params = {"b_repo": repo, "b_number": number, "b_since": since}
    return usage_of(_USAGE.run(conn, params))


def ask_usage_since_guard(conn: sa.Connection, repo: str, number: int) -> DBAPICursor:
    """Send `read_usage` since the issue's guard's `since` (0 without a guard) in one
    statement; `usage_of` reads its answer."""
    return _USAGE_SINCE_GUARD.run(conn, {"b_repo": repo, "b_number": number})


def usage_of(cursor: DBAPICursor) -> tuple[int, float]:
    rows = cursor.fetchall()
    return sum(int(count) for count, _ in rows), sum(float(cost) for _, cost in rows)


def _ensure(conn: sa.Connection, repo: str, number: int) -> None:
    """The issue's row, made if missing; one insert that yields to a concurrent one (two
    nodes taking deliveries of one issue at once), never a check and then an insert."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        module.insert(issue_guards)
        .values(repo=repo, number=number, since=0.0)
        .on_conflict_do_nothing(index_elements=["repo", "number"])
    )


def write_review_round(conn: sa.Connection, repo: str, number: int) -> None:
    """One more changes-requested round on the issue's pull request: an increment, so two
    deliveries both count."""
    _ensure(conn, repo, number)
    conn.execute(
        issue_guards.update()
        .where(issue_guards.c.repo == repo, issue_guards.c.number == number)
        .values(review_rounds=issue_guards.c.review_rounds + 1)
    )


def write_trip(conn: sa.Connection, repo: str, number: int, reason: str, now: float) -> bool:
    """Mark the issue as needing a human; False if it already was (read by RETURNING: under
    a pipeline the row count is not known yet)."""
    _ensure(conn, repo, number)
    tripped = conn.execute(
        issue_guards.update()
        .where(
            issue_guards.c.repo == repo,
            issue_guards.c.number == number,
            issue_guards.c.tripped_at.is_(None),
        )
        .values(tripped_at=now, reason=reason)
        .returning(issue_guards.c.number)
    ).first()
    return tripped is not None


def _guard(row: sa.Row[Any]) -> IssueGuard:
    m = row._mapping
    return IssueGuard(
        m["repo"], m["number"], m["since"], m["review_rounds"], m["tripped_at"], m["reason"]
    )


class SqlSpend:
    """`SpendStore` on the same engines as the `SqlStore` it belongs to."""

    def __init__(self, engine: sa.Engine, reader: sa.Engine) -> None:
        self.engine = engine
        self.reader = reader

    async def spent(
        self, agent_type: str | None, start: float, end: float, repo: str | None = None
    ) -> float:
        """What the tasks that finished in [start, end) cost, of one type or of all, in one
        repository or in all."""
        query = sa.select(sa.func.coalesce(sa.func.sum(tasks.c.cost_usd), 0.0)).where(
            tasks.c.finished_at >= start, tasks.c.finished_at < end
        )
        if agent_type is not None:
            query = query.where(tasks.c.type == agent_type)
        if repo is not None:
            query = query.where(tasks.c.repo == repo)
        with self.reader.connect() as conn:
            return float(conn.scalar(query) or 0.0)

    async def budgets(self) -> dict[tuple[str, Period], float]:
        with self.reader.connect() as conn:
            rows = conn.execute(sa.select(budgets.c.scope, budgets.c.period, budgets.c.usd))
            return {(scope, Period(period)): usd for scope, period, usd in rows}

    async def set_budget(self, scope: str, period: Period, usd: float, now: float) -> None:
        with self.engine.begin() as conn:
            where = (budgets.c.scope == scope, budgets.c.period == period.value)
            updated = conn.execute(budgets.update().where(*where).values(usd=usd, updated_at=now))
            if updated.rowcount == 0:
                conn.execute(
                    budgets.insert().values(
                        scope=scope, period=period.value, usd=usd, updated_at=now
                    )
                )

    async def clear_budgets(self, scope: str) -> int:
        with self.engine.begin() as conn:
            return conn.execute(budgets.delete().where(budgets.c.scope == scope)).rowcount

    async def cost_rows(self, since: float) -> list[CostRow]:
        query = (
            sa.select(
                tasks.c.finished_at, tasks.c.type, tasks.c.repo, tasks.c.number, tasks.c.cost_usd
            )
            .where(tasks.c.finished_at >= since, tasks.c.cost_usd.is_not(None))
            .order_by(tasks.c.finished_at)
        )
        with self.reader.connect() as conn:
            return [CostRow(*row) for row in conn.execute(query).all()]

    async def tripped(self) -> list[IssueGuard]:
        query = (
            sa.select(issue_guards)
            .where(issue_guards.c.tripped_at.is_not(None))
            .order_by(issue_guards.c.tripped_at.desc())
        )
        with self.reader.connect() as conn:
            return [_guard(row) for row in conn.execute(query).all()]

    async def breaker_states(self) -> list[BreakerState]:
        with self.reader.connect() as conn:
            return [BreakerState(**row._mapping) for row in conn.execute(breakers.select())]

    async def put_breaker(self, state: BreakerState) -> None:
        values = {
            "type": state.type,
            "failures": state.failures,
            "trips": state.trips,
            "open_until": state.open_until,
            "kind": state.kind,
            "detail": state.detail,
        }
        with self.engine.begin() as conn:
            upsert(conn, breakers, values)

    async def clear_breaker(self, agent_type: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(breakers.delete().where(breakers.c.type == agent_type))
