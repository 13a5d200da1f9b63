"""The SQL store: SQLAlchemy Core on SQLite (WAL, the default) or PostgreSQL (psycopg 3).

The same statements serve both; the dialect shows only in how the engines are made, in
`upsert`, and in how `placing` makes a cursor row. Migrations run when the store opens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from claude_hooks.config import ServerConfig
from claude_hooks.core.decision import Decision
from claude_hooks.core.domain import AgentInstance, Task, TaskKind, TaskState
from claude_hooks.errors import (
    ConflictError,
    NoDatabaseYet,
    NoInstanceError,
    StoreError,
    UnknownAgentError,
)
from claude_hooks.store import batch, groups, placing, reports, stealing, wakeups
from claude_hooks.store.base import (
    Claim,
    DeliveryTally,
    Dispatched,
    Histogram,
    InstanceView,
    NodeAddress,
    Outcome,
    Placement,
    QueueEntry,
    RunningLimit,
    SessionRecord,
    Settle,
    Signal,
    Stolen,
    TaskFilter,
    TaskTally,
)
from claude_hooks.store.commands import SqlCommands
from claude_hooks.store.decisions import Cause, Written, cancel, write_decision
from claude_hooks.store.deferrals import LoopDeferrals
from claude_hooks.store.egress import SqlEgress
from claude_hooks.store.elastic import SqlElastic
from claude_hooks.store.group_commit import DispatchCall
from claude_hooks.store.intake import SqlIntake, ask_twin, insert_delivery, merge_into_twin
from claude_hooks.store.kept_reader import KeptReader
from claude_hooks.store.labels import SqlLabels, write_labels
from claude_hooks.store.nodes import Recovered, SqlNodes, head_seq, settle_running
from claude_hooks.store.notes import SqlNotes
from claude_hooks.store.offload import OffloadedStore
from claude_hooks.store.outbox import SqlOutbox
from claude_hooks.store.outcomes import SqlOutcomes, write_outcomes
from claude_hooks.store.pending import AlreadySettled, SqlPending, settle_pending
from claude_hooks.store.prepared import pipelined
from claude_hooks.store.queueing import NEXT_SEQ, Sent, queue
from claude_hooks.store.rejections import SqlRejections
from claude_hooks.store.retention import SqlRetention
from claude_hooks.store.runs import RunOutcome, SqlRuns, close_run, ended, open_run
from claude_hooks.store.schema import agents, cursors, nodes, sessions, signals, tasks
from claude_hooks.store.spend import SqlSpend
from claude_hooks.store.steering import SqlSteering
from claude_hooks.store.transcripts import SqlSessionStore
from claude_hooks.store.upsert import upsert
from claude_hooks.store.worktree_states import SqlWorktreeStates

_MIGRATIONS = Path(__file__).parent / "migrations"


@dataclasses.dataclass(frozen=True, slots=True)
class Timeouts:
    """Every wait on the database, bounded (`server.database_*_timeout`, in seconds)."""

    connect: float = 5.0
    lock: float = 2.0
    statement: float = 30.0

    @classmethod
    def of(cls, server: ServerConfig) -> Timeouts:
        return cls(
            server.database_connect_timeout,
            server.database_lock_timeout,
            server.database_statement_timeout,
        )


def _sqlite_pragmas(lock_timeout: float) -> Any:
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={round(lock_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    return pragmas


def _sqlite_manual_transactions(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    # Checkpoints (and their fsync) happen in the Checkpointer's thread, not in a commit on
    # the event loop's thread, where they held webhook answers up by tens of milliseconds.
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")


class Checkpointer:
    """Copies the WAL back into the database file every second, from a thread of its own."""

    def __init__(self, path: str, interval: float = 1.0) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, timeout=5)
        try:
            while not self._stop.wait(self.interval):
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with contextlib.suppress(sqlite3.Error):
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.close()


def _sqlite_begin_immediate(conn: sa.Connection) -> None:
    # A deferred transaction that reads and then writes fails at once with "database is
    # locked" when another connection wrote in between; IMMEDIATE takes the write lock first
    # and waits for it (busy_timeout) instead. Sent by the driver: through SQLAlchemy the
    # statement cost ~40 us more, at every write transaction.
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    try:
        dbapi_connection.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:  # "database is locked", as SQLAlchemy would have raised it
        raise sa.exc.DBAPIError.instance("BEGIN IMMEDIATE", (), exc, sqlite3.Error) from exc


def _sqlite_engines(url: sa.URL, timeouts: Timeouts) -> tuple[sa.Engine, sa.Engine]:
    """A writer and a reader on the SQLite file: the writer begins IMMEDIATE, readers never block.

    Statements run on the event loop's thread: an SQLite statement takes microseconds, while
    handing it to a worker thread (as aiosqlite does) was measured at 350-500 us per call here.
    """
    url = url.set(drivername="sqlite")
    writer = sa.create_engine(url, pool_size=1, max_overflow=0, pool_timeout=timeouts.lock)
    reader = sa.create_engine(url, pool_timeout=timeouts.lock)
    for engine in (writer, reader):
        sa.event.listen(engine, "connect", _sqlite_pragmas(timeouts.lock))
    sa.event.listen(writer, "connect", _sqlite_manual_transactions)
    sa.event.listen(writer, "begin", _sqlite_begin_immediate)
    return writer, reader


def postgresql_connect_args(timeouts: Timeouts) -> dict[str, Any]:
    """psycopg's arguments for every connection to PostgreSQL: its waits bounded."""
    options = (
        f"-c lock_timeout={round(timeouts.lock * 1000)} "
        f"-c statement_timeout={round(timeouts.statement * 1000)}"
    )
    # libpq counts connect_timeout in whole seconds (2 at least); TCP keepalives notice a
    # peer that vanished without closing the connection.
    return {
        "connect_timeout": max(2, math.ceil(timeouts.connect)),
        "options": options,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }


def _postgresql_engines(url: sa.URL, timeouts: Timeouts) -> tuple[sa.Engine, sa.Engine]:
    """A writer and a reader through psycopg 3, each pooled: PostgreSQL serialises what must be
    serial with row locks (see `placing`). The reader runs in autocommit: a read is one round
    trip instead of three (BEGIN, the query, ROLLBACK), and under READ COMMITTED a transaction
    gave each statement its own snapshot anyway. No ping before each use (a round trip per
    call): a connection the server dropped fails one call, and SQLAlchemy then replaces the
    whole pool; the callers retry."""
    url = url.set(drivername="postgresql+psycopg")
    connect_args = postgresql_connect_args(timeouts)
    bounds: dict[str, Any] = {"pool_timeout": timeouts.connect, "connect_args": connect_args}
    writer = sa.create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_SIZE, **bounds)
    # Each thread keeps a reader connection (`KeptReader`) besides the one a call may take.
    reader = sa.create_engine(
        url, pool_size=POOL_SIZE, max_overflow=THREADS, isolation_level="AUTOCOMMIT", **bounds
    )
    return writer, reader


# Connections per engine, as many again in overflow; the threads that run PostgreSQL's store
# calls (see `offload`) are as many as the writer's connections.
POOL_SIZE = 5
THREADS = 2 * POOL_SIZE


def _engines(url: str, timeouts: Timeouts) -> tuple[sa.Engine, sa.Engine]:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engines(parsed, timeouts)
    if backend == "postgresql":
        return _postgresql_engines(parsed, timeouts)
    raise StoreError(
        f"database_url {url!r}: the data is stored in SQLite or PostgreSQL "
        "(leave database_url empty, or give a sqlite:/// or postgresql:// URL)"
    )


# The newest migration. Start-up compares it with the database and imports Alembic only when
# there is something to migrate (the import alone costs about 0.2 s).
HEAD_REVISION = "0020"


def _current_revision(connection: sa.Connection) -> str | None:
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


# Any fixed number: every node migrating the same PostgreSQL database takes this lock first.
MIGRATION_LOCK = 0x636C6175
_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=MIGRATION_LOCK)


def _upgrade(connection: sa.Connection) -> None:
    """Bring the schema to the newest revision; on PostgreSQL under an advisory lock held to
    the end of the transaction, so nodes starting together migrate one after another."""
    if connection.dialect.name == "postgresql":
        connection.execute(_LOCK)
    if _current_revision(connection) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _place(conn: sa.Connection, task: Task, asked: placing.Asked | None = None) -> Sent:
    """Queue `task` on the instance the rule picks, within the caller's transaction: the one
    place where a task is placed one at a time (a batch's are placed by `batch`).
    `asked`: its placement's look-ups, sent already."""
    spot = placing.place(conn, task.type, task.session_key, asked)
    sent = queue(conn, task, spot)
    wakeups.placed(conn, spot.agent, task.type, sent.busy)
    return sent


def _place_all(
    conn: sa.Connection, tasks: Sequence[Task], asked: placing.Asked | None = None
) -> tuple[list[Sent], NoInstanceError | None]:
    """Queue `tasks` in order, stopping at the first type with no instance (its task is not
    written), within the caller's transaction."""
    sent: list[Sent] = []
    for task in tasks:
        try:
            sent.append(_place(conn, task, asked))
        except NoInstanceError as exc:
            return sent, exc
        asked = None
    return sent, None


def _task(row: sa.Row[Any]) -> Task:
    m = row._mapping
    return Task(
        id=m["id"],
        type=m["type"],
        agent=m["agent"],
        kind=TaskKind(m["kind"]),
        session_key=m["session_key"],
        repo=m["repo"],
        number=m["number"],
        payload=m["payload"],
        state=TaskState(m["state"]),
        seq=m["seq"],
        attempts=m["attempts"],
        enqueued_at=m["enqueued_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        exit_code=m["exit_code"],
        result=m["result"],
        error=m["error"],
        cost_usd=m["cost_usd"],
        claude_session_id=m["claude_session_id"],
        delivery_id=m["delivery_id"],
        cancel_requested=bool(m["cancel_requested"]),
        pid=m["pid"],
        pid_start=m["pid_start"],
    )


def _agent(row: sa.Row[Any]) -> AgentInstance:
    m = row._mapping
    return AgentInstance(
        name=m["name"],
        type=m["type"],
        enabled=bool(m["enabled"]),
        created_at=m["created_at"],
        node=m["node"],
        pinned_node=m["pinned_node"],
        auto=bool(m["auto"]),
    )


def _where(where: TaskFilter) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = []
    if where.state is not None:
        clauses.append(tasks.c.state == where.state.value)
    for column, value in (
        (tasks.c.type, where.type),
        (tasks.c.agent, where.agent),
        (tasks.c.repo, where.repo),
        (tasks.c.session_key, where.session_key),
        (tasks.c.delivery_id, where.delivery_id),
    ):
        if value is not None:
            clauses.append(column == value)
    return clauses


# Statements on the webhook path, built once: building a statement costs more than running it.
_TASK_BY_ID = sa.select(tasks).where(tasks.c.id == sa.bindparam("b_id"))
_HEAD_ID = (
    sa.select(tasks.c.id)
    .where(tasks.c.agent == sa.bindparam("b_agent"), tasks.c.state == TaskState.QUEUED.value)
    .order_by(tasks.c.seq)
    .limit(1)
)
_HEAD = _HEAD_ID.with_only_columns(tasks.c.id, tasks.c.session_key)
_RUNNING_KEY = tasks.alias("running_key")
_CLAIM = (
    tasks.update()
    .where(
        tasks.c.id == _HEAD_ID.scalar_subquery(),
        # Checked again on the row itself: a steal may have moved the head meanwhile.
        tasks.c.agent == sa.bindparam("b_agent"),
        tasks.c.state == TaskState.QUEUED.value,
        tasks.c.cancel_requested == sa.false(),
        sa.exists().where(
            agents.c.name == tasks.c.agent,
            agents.c.enabled == sa.true(),
            agents.c.node.is_not_distinct_from(sa.bindparam("b_node")),
        ),
        ~sa.exists().where(
            _RUNNING_KEY.c.session_key == tasks.c.session_key,
            _RUNNING_KEY.c.state == TaskState.RUNNING.value,
        ),
    )
    .values(
        state=TaskState.RUNNING.value,
        started_at=sa.bindparam("b_now"),
        finished_at=None,
        attempts=tasks.c.attempts + 1,
        node=sa.bindparam("b_node"),
    )
    .returning(*tasks.c)
)
# Taken before the claim on PostgreSQL: a node letting the instance go waits for the claim to
# commit, then sees its running task (see `nodes._release`).
_LOCK_AGENT = (
    sa.select(agents.c.node).where(agents.c.name == sa.bindparam("b_agent")).with_for_update()
)
_CANCEL_REQUESTED = (
    tasks.update()
    .where(
        tasks.c.agent == sa.bindparam("b_agent"),
        tasks.c.state == TaskState.QUEUED.value,
        tasks.c.cancel_requested == sa.true(),
    )
    .values(
        state=TaskState.CANCELLED.value,
        finished_at=sa.bindparam("b_now"),
        error="cancelled before it started",
    )
)


def _apply(conn: sa.Connection, call: DispatchCall) -> Dispatched:
    """The body of `dispatch_all` within the caller's transaction; a duplicate raises
    (`IntegrityError`, `AlreadySettled`)."""
    decision, settle = call.decision, call.settle
    # Before the pipeline: these writes read what they changed (SQLAlchemy's results), and
    # most deliveries have none of them.
    written = (
        write_decision(conn, decision, call.cause or Cause("", None, 0.0))
        if decision is not None
        else Written()
    )
    # The pipeline ends before the commit, so a duplicate id fails as itself (an
    # IntegrityError), not as the commit of an aborted transaction.
    sent: list[Sent] = []
    try:
        with pipelined(conn):
            # The twins' look-ups and the first placement's go together: one round trip.
            twins = [
                None if task.id in call.separate else ask_twin(conn, task) for task in call.tasks
            ]
            first = call.tasks[0] if call.tasks else None
            asked = placing.ask(conn, first.type, first.session_key) if first else None
            merged: list[Task] = []
            queueing: list[Task] = []
            for task, looked_up in zip(call.tasks, twins, strict=True):
                row = looked_up.fetchone() if looked_up is not None else None
                twin = merge_into_twin(conn, row[0], task) if row is not None else None
                if twin is None:
                    queueing.append(task)
                else:
                    merged.append(dataclasses.replace(task, id=twin))
            sent, failure = _place_all(conn, queueing, asked)
            if decision is not None:
                write_outcomes(conn, decision.outcomes)
            if decision is not None and decision.labels is not None and failure is None:
                # As `assigned`: a label whose work could not be placed stays new.
                write_labels(conn, *decision.labels)
            cancelled = written.cancelled + written.stopping
            # The record names the tasks; their `seq` and state are read after the pipeline.
            unread = [s.placement(read=False) for s in sent]
            record = settle(unread, merged, cancelled, failure) if settle is not None else None
            if record is not None and not call.pending:
                insert_delivery(conn, *record)
    except Exception:
        for left in sent:
            left.close()
        raise
    placements = [s.placement() for s in sent]
    if record is not None and call.pending:
        settle_pending(conn, *record)  # reads what it deleted: after the pipeline
    return Dispatched(placements, failure, recorded=True, merged=merged, written=written)


class _Failed(Exception):
    """A delivery of a group commit's batch failed: the batch is applied again without it."""

    def __init__(self, index: int, exc: Exception) -> None:
        super().__init__(index, exc)
        self.index, self.exc = index, exc


class _Unbatched(Exception):
    """A run of a group commit's batch could not be applied together: the batch is applied
    again one delivery at a time."""


_Indexed = Sequence[tuple[int, DispatchCall]]


def _runs(waiting: _Indexed, together: bool) -> list[_Indexed]:
    """`waiting` cut into runs applied together (`batch.fits`), the others alone."""
    runs: list[list[tuple[int, DispatchCall]]] = []
    for index, call in waiting:
        if together and batch.fits(call) and runs and batch.fits(runs[-1][-1][1]):
            runs[-1].append((index, call))
        else:
            runs.append([(index, call)])
    return list(runs)


def _apply_run(conn: sa.Connection, run: _Indexed) -> dict[int, Dispatched]:
    """Apply a run within the caller's transaction: raises `_Failed` for a delivery applied
    alone, `_Unbatched` for a run of several."""
    if len(run) == 1:
        index, call = run[0]
        try:
            return {index: _apply(conn, call)}
        except Exception as exc:
            raise _Failed(index, exc) from exc
    try:
        dispatched = batch.apply(conn, [call for _, call in run])
    except Exception as exc:
        raise _Unbatched from exc
    return {index: answer for (index, _), answer in zip(run, dispatched, strict=True)}


class SqlStore:
    """`Store` over an async SQLAlchemy engine; each public method is one transaction."""

    def __init__(
        self,
        engine: sa.Engine,
        reader: sa.Engine | None = None,
        checkpointer: Checkpointer | None = None,
        node: str | None = None,
    ) -> None:
        self.engine = engine
        self.reader = reader or engine
        self.checkpointer = checkpointer
        self.kept = KeptReader(self.reader)
        self.intake = SqlIntake(engine, self.reader, self.kept)
        self.pending = SqlPending(engine, self.reader)
        self.rejections = SqlRejections(engine, self.reader)
        self.notes = SqlNotes(engine, self.reader)
        self.egress = SqlEgress(engine, self.reader)
        self.outbox = SqlOutbox(engine, self.reader)
        self.retention = SqlRetention(engine, self.reader)
        self.spend = SqlSpend(engine, self.reader)
        self.nodes = SqlNodes(engine, self.reader)
        self.elastic = SqlElastic(engine, self.reader)
        # The node this process is: it claims only on instances it holds, and changes only
        # the tasks it runs. None outside a service (tests of the store alone, the CLI).
        self.node = node
        self.transcripts = SqlSessionStore(engine, self.reader)
        self.worktree_states = SqlWorktreeStates(engine, self.reader)
        self.commands = SqlCommands(engine, self.reader)
        self.labels = SqlLabels(engine, self.reader)
        self.steering = SqlSteering(engine, self.reader)
        self.outcomes = SqlOutcomes(engine, self.reader)
        self.runs = SqlRuns(engine, self.reader)

    @classmethod
    async def open(
        cls,
        url: str,
        timeouts: Timeouts = Timeouts(),
        create: bool = True,
        node: str | None = None,
    ) -> SqlStore:
        """The store on `url`, its schema brought up to date, for the service of node `node`
        (None: a reader such as the CLI). Without `create`, a database
        with no tables yet is refused (NoDatabaseYet), not filled: read-only commands. On
        PostgreSQL its calls run off the event loop (see `offload`): the object returned
        stands in for the store, with the same attributes."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            engine, reader = _engines(url, timeouts)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise StoreError(f"cannot use database_url {url!r}: {exc}") from None
        try:
            with engine.begin() as conn:
                if not create and _current_revision(conn) is None:
                    engine.dispose()
                    reader.dispose()
                    raise NoDatabaseYet(
                        f"the database at {parsed.render_as_string(hide_password=True)!r} has "
                        "no tables yet: 'claude-hooks serve' creates them"
                    )
                _upgrade(conn)
        except sa.exc.SQLAlchemyError as exc:
            engine.dispose()
            reader.dispose()
            raise StoreError(
                f"cannot open or migrate the database at {url!r}: {exc.__class__.__name__}: "
                f"{exc.args[0] if exc.args else exc}"
            ) from None
        if engine.dialect.name != "sqlite":
            threads = ThreadPoolExecutor(THREADS, thread_name_prefix="store")
            bound = timeouts.statement + timeouts.connect
            store = cls(engine, reader, node=node)
            conninfo = engine.url.set(drivername="postgresql")
            deferrals = LoopDeferrals(
                conninfo.render_as_string(hide_password=False),
                postgresql_connect_args(timeouts),
                bound,
            )
            return cast(SqlStore, OffloadedStore(store, threads, bound, deferrals))
        checkpointer = Checkpointer(str(engine.url.database))
        checkpointer.start()
        return cls(engine, reader, checkpointer, node)

    @property
    def shared(self) -> bool:
        """Whether other nodes may use this database too (PostgreSQL; SQLite is one node's)."""
        return self.engine.dialect.name == "postgresql"

    async def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.kept.close()
        self.engine.dispose()
        if self.reader is not self.engine:
            self.reader.dispose()

    async def database_time(self) -> float:
        """The database server's clock (Unix seconds); on SQLite, this host's."""
        if self.engine.dialect.name != "postgresql":
            return time.time()
        with self.reader.connect() as conn:
            query = sa.select(sa.func.extract("epoch", sa.func.clock_timestamp()))
            return float(conn.execute(query).scalar_one())

    async def ping(self) -> None:
        """One round trip to the database: it answers, or this raises."""
        with self.reader.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # agents

    async def list_agents(self) -> list[AgentInstance]:
        with self.reader.connect() as conn:
            rows = conn.execute(sa.select(agents).order_by(agents.c.name))
            return [_agent(row) for row in rows]

    async def get_agent(self, name: str) -> AgentInstance | None:
        with self.reader.connect() as conn:
            row = (conn.execute(sa.select(agents).where(agents.c.name == name))).first()
            return _agent(row) if row else None

    async def add_agent(
        self, name: str, agent_type: str, now: float, pinned_node: str | None = None
    ) -> AgentInstance:
        with self.engine.begin() as conn:
            exists = conn.scalar(sa.select(agents.c.name).where(agents.c.name == name))
            if exists:
                raise ConflictError(f"an agent named {name!r} already exists")
            conn.execute(
                agents.insert().values(
                    name=name,
                    type=agent_type,
                    enabled=True,
                    created_at=now,
                    pinned_node=pinned_node,
                )
            )
        return AgentInstance(
            name=name, type=agent_type, enabled=True, created_at=now, pinned_node=pinned_node
        )

    async def seed_agents(self, seeds: Iterable[tuple[str, str]], now: float) -> list[str]:
        added: list[str] = []
        with self.engine.begin() as conn:
            existing = set((conn.scalars(sa.select(agents.c.name))).all())
            for name, agent_type in seeds:
                if name not in existing:
                    conn.execute(
                        agents.insert().values(
                            name=name, type=agent_type, enabled=True, created_at=now
                        )
                    )
                    existing.add(name)
                    added.append(name)
        return added

    async def set_agent_enabled(self, name: str, enabled: bool) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(
                agents.update().where(agents.c.name == name).values(enabled=enabled)
            )
            if result.rowcount == 0:
                raise UnknownAgentError(name)

    async def remove_agent(self, name: str) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(agents.delete().where(agents.c.name == name))
            if result.rowcount == 0:
                raise UnknownAgentError(name)

    # tasks

    async def dispatch(self, task: Task) -> Placement:
        """Choose the task's instance, insert it and move the type's cursor: one transaction."""
        with self.engine.begin() as conn:
            return _place(conn, task).placement()

    async def dispatch_all(
        self,
        tasks: Sequence[Task],
        settle: Settle | None,
        decision: Decision | None = None,
        cause: Cause | None = None,
        pending: bool = False,
        separate: frozenset[str] = frozenset(),
    ) -> Dispatched:
        """Apply a delivery's whole decision in one transaction: its writes (`decisions`),
        then its tasks in order (each merged into a queued twin of its session and kind, or
        placed, stopping at a type with no instance), then the delivery as `settle` records
        it. A duplicate id, or a failure, leaves nothing of it. `settle` None: no delivery
        to record (a CI poll's decision); `pending`: the delivery is recorded already, as
        pending, and is settled now; `separate`: the ids of tasks never merged into a twin
        (`on_new_event = "queue"`)."""
        try:
            with self.engine.begin() as conn:
                return _apply(conn, DispatchCall(tasks, settle, decision, cause, pending, separate))
        except (sa.exc.IntegrityError, AlreadySettled):
            return Dispatched([], None, recorded=False)

    def dispatch_batch(self, calls: Sequence[DispatchCall]) -> list[Dispatched | Exception]:
        """Apply several deliveries' decisions in one transaction, in order: what
        `dispatch_all` would answer for each (a failure as the exception), with one commit
        and one hold of each cursor lock for them all. Runs of deliveries that write nothing
        before their tasks are applied together (`batch`: two round trips for the run); if
        a run cannot be, the transaction is rolled back and every delivery is applied one
        at a time. Then a delivery that fails (a duplicate id above all) rolls the
        transaction back, is answered alone, and the others are applied again without it,
        so it leaves nothing and they see nothing of it. (Not savepoints: rolling back to one
        left psycopg's prepared statements out of step with the server's.) Runs on the group
        commit's thread (see `group_commit`); a fault outside the deliveries' own statements
        (connecting, BEGIN, COMMIT) raises, and nothing of the batch is kept."""
        answers: dict[int, Dispatched | Exception] = {}
        waiting = list(enumerate(calls))
        together = True
        while waiting:
            applied: dict[int, Dispatched] = {}
            try:
                with self.engine.begin() as conn:
                    for run in _runs(waiting, together):
                        applied.update(_apply_run(conn, run))
            except _Unbatched:
                together = False
                continue
            except _Failed as failed:
                cause = failed.exc
                duplicate = isinstance(cause, sa.exc.IntegrityError | AlreadySettled)
                answers[failed.index] = Dispatched([], None, recorded=False) if duplicate else cause
                waiting = [(index, call) for index, call in waiting if index != failed.index]
                continue
            answers.update(applied)
            break
        return [answers[index] for index in range(len(calls))]

    async def reassign_task(self, task_id: str) -> Task | None:
        """Move a queued task to the tail of the instance the rule picks now (its own was
        disabled or removed); None if it is no longer queued."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(tasks.c.type, tasks.c.session_key).where(
                    tasks.c.id == task_id, tasks.c.state == TaskState.QUEUED.value
                )
            ).first()
            if row is None:
                return None
            spot = placing.place(conn, row.type, row.session_key)
            conn.execute(
                tasks.update().where(tasks.c.id == task_id).values(agent=spot.agent, seq=NEXT_SEQ)
            )
            wakeups.notify(conn, wakeups.TASK, spot.agent)
            moved = conn.execute(_TASK_BY_ID, {"b_id": task_id}).one()
        return _task(moved)

    async def orphaned_tasks(self) -> list[QueueEntry]:
        """Queued tasks whose instance is disabled or gone, in queue order."""
        query = (
            sa.select(
                tasks.c.id,
                tasks.c.agent,
                tasks.c.type,
                tasks.c.session_key,
                tasks.c.kind,
                tasks.c.seq,
            )
            .select_from(tasks.outerjoin(agents, agents.c.name == tasks.c.agent))
            .where(
                tasks.c.state == TaskState.QUEUED.value,
                sa.or_(agents.c.name.is_(None), agents.c.enabled == sa.false()),
            )
            .order_by(tasks.c.seq)
        )
        with self.reader.connect() as conn:
            return list(itertools.starmap(QueueEntry, conn.execute(query).all()))

    async def get_task(self, task_id: str) -> Task | None:
        with self.reader.connect() as conn:
            row = conn.execute(_TASK_BY_ID, {"b_id": task_id}).first()
            return _task(row) if row else None

    async def task_ids_ending(self, tail: str, limit: int) -> list[str]:
        """Ids of the tasks whose id ends with `tail`, newest first (ids sort by creation)."""
        query = (
            sa.select(tasks.c.id)
            .where(tasks.c.id.endswith(tail, autoescape=True))
            .order_by(tasks.c.id.desc())
            .limit(limit)
        )
        with self.reader.connect() as conn:
            return list(conn.execute(query).scalars())

    async def node_of(self, task_id: str) -> NodeAddress | None:
        """The node that runs (or ran) a task, which has its log; None if none did."""
        query = (
            sa.select(tasks.c.node, nodes.c.url)
            .select_from(tasks.outerjoin(nodes, nodes.c.name == tasks.c.node))
            .where(tasks.c.id == task_id, tasks.c.node.is_not(None))
        )
        with self.reader.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else NodeAddress(row.node, row.url)

    async def list_tasks(self, where: TaskFilter, limit: int, offset: int) -> list[Task]:
        query = (
            sa.select(tasks)
            .where(*_where(where))
            .order_by(tasks.c.enqueued_at.desc(), tasks.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self.reader.connect() as conn:
            return [_task(row) for row in conn.execute(query)]

    async def count_tasks(self, where: TaskFilter) -> int:
        query = sa.select(sa.func.count()).select_from(tasks).where(*_where(where))
        with self.reader.connect() as conn:
            return int(conn.scalar(query) or 0)

    async def claim_next(
        self,
        agent: str,
        now: float,
        group: RunningLimit | None = None,
        head: str | None = None,
        log_size: Callable[[str], int] | None = None,
    ) -> Claim:
        """Start the head of `agent`'s queue: one atomic UPDATE, so a task starts once, and
        its run recorded with it (`runs`), its output beginning at `log_size(task_id)` bytes
        into the task's log on this node.

        The head waits (blocked) while its session key runs elsewhere; the partial unique
        index on running session keys holds that even between processes. A head whose cancel
        was asked for is cancelled here instead. With a `group`, the head also waits while its
        repository's concurrency group is full (see `groups`). With `head`, the task the
        caller's policy looked at, only that task starts: a head that changed since (a new
        task, a steal, a cancel) waits for the caller to look again, so no task starts that
        its repository's policy did not see."""
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    holder = conn.execute(_LOCK_AGENT, {"b_agent": agent}).first()
                    if holder is None or holder.node != self.node:
                        return Claim(None)
                conn.execute(_CANCEL_REQUESTED, {"b_agent": agent, "b_now": now})
                if head is not None:
                    current = conn.execute(_HEAD, {"b_agent": agent}).first()
                    if current is None or current.id != head:
                        return Claim(None, blocked=current is not None)
                if group is not None:
                    waiting = groups.wait_reason(conn, agent, group)
                    if waiting is not None:
                        shown = None if waiting == groups.STALE else waiting
                        return Claim(None, blocked=True, waiting=shown)
                row = conn.execute(
                    _CLAIM, {"b_agent": agent, "b_now": now, "b_node": self.node}
                ).first()
                if row is not None:
                    offset = log_size(row.id) if log_size is not None else 0
                    open_run(conn, row.id, agent, self.node, now, offset)
                    return Claim(_task(row))
                left = conn.execute(_HEAD, {"b_agent": agent}).first()
                return Claim(None, blocked=left is not None)
        except sa.exc.IntegrityError:
            return Claim(None, blocked=True)

    async def steal(self, agent: str, now: float) -> Stolen | None:
        """Move queued work of a peer to `agent`, idle with an empty queue: one transaction
        under the type's cursor lock (see `stealing`); None if there was nothing to take."""
        with self.reader.connect() as conn:
            if not stealing.worth_trying(conn, agent):
                return None
        with self.engine.begin() as conn:
            theft = stealing.steal(conn, agent, now)
            if theft is None:
                return None
            rows = conn.execute(sa.select(tasks).where(tasks.c.id.in_(theft.task_ids)))
            moved = sorted((_task(row) for row in rows), key=lambda task: task.seq)
            # The thief's node and the victim's (whose head may have moved) look again.
            wakeups.notify(conn, wakeups.TASK, agent)
            wakeups.notify(conn, wakeups.TASK, theft.source)
        return Stolen(theft.source, tuple(moved))

    async def queue_head(self, agent: str) -> str | None:
        with self.reader.connect() as conn:
            row = conn.execute(_HEAD, {"b_agent": agent}).first()
            return None if row is None else str(row.id)

    async def group_waits(self) -> dict[str, str]:
        with self.reader.connect() as conn:
            return groups.group_waits(conn)

    async def set_process(self, task_id: str, pid: int | None, pid_start: int | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id, self._mine())
                .values(pid=pid, pid_start=pid_start)
            )

    async def finish_task(self, task_id: str, outcome: Outcome, now: float) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                tasks.update()
                .where(
                    tasks.c.id == task_id, tasks.c.state == TaskState.RUNNING.value, self._mine()
                )
                .values(
                    state=outcome.state.value,
                    finished_at=now,
                    exit_code=outcome.exit_code,
                    result=outcome.result,
                    error=outcome.error,
                    cost_usd=outcome.cost_usd,
                    claude_session_id=outcome.claude_session_id,
                    pid=None,
                    pid_start=None,
                )
            )
            if result.rowcount:
                close_run(conn, task_id, ended(outcome.state), now, outcome.error)
                wakeups.notify(conn, wakeups.FREED)
            return result.rowcount > 0

    async def fail_queued(self, task_id: str, reason: str, now: float) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                tasks.update()
                .where(
                    tasks.c.id == task_id,
                    tasks.c.state.in_([TaskState.QUEUED.value, TaskState.HELD.value]),
                )
                .values(state=TaskState.FAILED.value, finished_at=now, error=reason)
            )
            return result.rowcount > 0

    async def cancel_tasks(self, task_ids: Sequence[str], cause: Cause) -> Written:
        """Cancel the tasks of `task_ids` still queued or running: one transaction."""
        with self.engine.begin() as conn:
            return cancel(conn, tasks.c.id.in_(list(task_ids)), cause)

    def _mine(self) -> sa.ColumnElement[bool]:
        """Tasks this node runs: a node declared dead no longer changes what was rescued."""
        return tasks.c.node.is_not_distinct_from(self.node)

    async def requeue_interrupted(self, task_id: str, now: float, why: str) -> bool:
        """Put a task the service stopped on purpose back at the head; the run does not count
        as an attempt, and is recorded as returned `why`. One whose cancel was asked for is
        recorded as cancelled instead."""
        with self.engine.begin() as conn:
            row = (
                conn.execute(
                    sa.select(tasks.c.agent, tasks.c.seq, tasks.c.cancel_requested).where(
                        tasks.c.id == task_id,
                        tasks.c.state == TaskState.RUNNING.value,
                        self._mine(),
                    )
                )
            ).first()
            if row is None:
                return False
            values: dict[str, Any] = {"pid": None, "pid_start": None, "node": None}
            if row.cancel_requested:
                values.update(
                    state=TaskState.CANCELLED.value,
                    finished_at=now,
                    error="cancelled while running",
                )
                close_run(conn, task_id, RunOutcome.CANCELLED, now, "cancelled while running")
            else:
                close_run(conn, task_id, RunOutcome.RETURNED, now, why)
                values.update(
                    state=TaskState.QUEUED.value,
                    seq=head_seq(conn, row.agent, row.seq),
                    attempts=tasks.c.attempts - 1,
                    started_at=None,
                )
            conn.execute(tasks.update().where(tasks.c.id == task_id).values(**values))
            wakeups.notify(conn, wakeups.FREED)
            wakeups.notify(conn, wakeups.TASK, row.agent)
            return True

    async def recover(
        self, max_attempts: int, now: float, why: str = "the service stopped"
    ) -> list[Recovered]:
        """Settle the tasks this node left running when it stopped (or `why` else it stopped
        them): back to the head of their queue. Other nodes' running tasks are theirs (or the
        rescue's, once they are dead)."""
        with self.engine.begin() as conn:
            return settle_running(
                conn,
                sa.or_(tasks.c.node.is_(None), tasks.c.node == self.node),
                max_attempts,
                now,
                why,
            )

    # the pool's read model and summaries

    async def instances(self) -> list[InstanceView]:
        with self.reader.connect() as conn:
            return reports.instances(conn)

    async def queue_positions(self, task_ids: Iterable[str]) -> dict[str, int]:
        with self.reader.connect() as conn:
            return reports.queue_positions(conn, task_ids)

    async def task_tallies(self, since: float | None = None) -> list[TaskTally]:
        with self.reader.connect() as conn:
            return reports.task_tallies(conn, since)

    async def delivery_tallies(self, since: float | None = None) -> list[DeliveryTally]:
        with self.reader.connect() as conn:
            return reports.delivery_tallies(conn, since)

    async def cost_by_agent(self) -> dict[tuple[str, str], float]:
        with self.reader.connect() as conn:
            return reports.cost_by_agent(conn)

    async def run_durations(self, bounds: Sequence[float]) -> list[Histogram]:
        with self.reader.connect() as conn:
            return reports.run_durations(conn, bounds)

    async def start_latencies(self, bounds: Sequence[float]) -> list[Histogram]:
        with self.reader.connect() as conn:
            return reports.start_latencies(conn, bounds)

    async def queue_waits(self, bounds: Sequence[float]) -> list[Histogram]:
        with self.reader.connect() as conn:
            return reports.queue_waits(conn, bounds)

    async def waiting_beside_idle(self) -> dict[str, int]:
        with self.reader.connect() as conn:
            return stealing.waiting_beside_idle(conn)

    async def recently_finished(self, limit: int) -> list[Task]:
        query = (
            sa.select(tasks)
            .where(tasks.c.finished_at.is_not(None))
            .order_by(tasks.c.finished_at.desc())
            .limit(limit)
        )
        with self.reader.connect() as conn:
            return [_task(row) for row in conn.execute(query)]

    # cursors

    async def load_cursors(self) -> dict[str, int]:
        with self.reader.connect() as conn:
            return {row.type: int(row.position) for row in conn.execute(sa.select(cursors))}

    # sessions

    async def get_session(self, key: str) -> SessionRecord | None:
        with self.reader.connect() as conn:
            row = (conn.execute(sa.select(sessions).where(sessions.c.key == key))).first()
        if row is None:
            return None
        return SessionRecord(row.key, row.claude_session_id, row.total_cost_usd, row.updated_at)

    async def put_session(
        self, key: str, claude_session_id: str, total_cost_usd: float | None, now: float
    ) -> None:
        values = {
            "claude_session_id": claude_session_id,
            "total_cost_usd": total_cost_usd,
            "updated_at": now,
        }
        with self.engine.begin() as conn:
            upsert(conn, sessions, {"key": key, **values})

    async def forget_session(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sessions.delete().where(sessions.c.key == key))

    # signals

    async def emit_signal(self, kind: str, target: str, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(signals.insert().values(kind=kind, target=target, created_at=now))
            wakeups.notify(conn, wakeups.SIGNAL)

    async def signals_after(self, last_id: int) -> list[Signal]:
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(signals.c.id, signals.c.kind, signals.c.target)
                .where(signals.c.id > last_id)
                .order_by(signals.c.id)
            )
            found = [Signal(*row) for row in rows]
            if found:
                # Keep the table small: what every reader has seen long ago is of no use.
                conn.execute(signals.delete().where(signals.c.id < found[-1].id - 1000))
            return found

    async def last_signal_id(self) -> int:
        with self.reader.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.coalesce(sa.func.max(signals.c.id), 0))) or 0)
