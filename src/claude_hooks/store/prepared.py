"""Statements of the webhook path, run on the driver's own cursor.

SQLAlchemy Core builds and compiles each statement, once per dialect; executing it through
`Connection.execute` then costs 30-60 us of Python per call (execution context, events,
result wrapping) around a driver call of 2-15 us on SQLite, and a delivery runs about a dozen.
`Prepared.run` hands the compiled SQL and its parameters straight to the driver's cursor, inside
the caller's connection and transaction, with the same bind processing (JSON, booleans) and
the same `sqlalchemy.exc` errors, so the store's code reads the same on both backends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import DBAPICursor, Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from claude_hooks.errors import StoreError

Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the parameters in the order the driver takes them
    positional: bool
    defaults: dict[str, Any]  # values bound when the statement was built (literals, limits)
    processors: tuple[tuple[str, Processor], ...]
    # The values of `names` as a tuple, in C: a generator per statement cost ~1.4 % of a
    # delivery's instructions (13 statements).
    in_order: Callable[[dict[str, Any]], tuple[Any, ...]]


def _in_order(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """`itemgetter` of one name gives the value alone, and of none cannot be built."""
    if not names:
        return lambda _values: ()
    if len(names) == 1:
        name = names[0]
        return lambda values: (values[name],)
    return operator.itemgetter(*names)


def _compile(statement: sa.ClauseElement, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
    # `column_keys`: an INSERT or UPDATE names the columns it is given, as execute() would.
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    assert isinstance(compiled, SQLCompiler)
    sql = str(compiled)
    if "POSTCOMPILE" in sql:
        raise StoreError(
            "a prepared statement cannot expand a list of values (IN): write it with "
            "equalities, or run it through Connection.execute"
        )
    defaults: dict[str, Any] = {}
    processors: dict[str, Processor] = {}  # by name: one name may stand for several binds
    for bind, name in compiled.bind_names.items():
        if not bind.required:
            defaults[name] = bind.effective_value
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    positional = compiled.positiontup is not None
    names = tuple(compiled.positiontup or ())
    return _Compiled(sql, names, positional, defaults, tuple(processors.items()), _in_order(names))


def _disconnected(conn: sa.Connection, exc: BaseException) -> None:
    """The server dropped `conn`: as `Connection.execute` does, discard it and every other
    connection of its pool (a restarted server dropped them all), so the next calls connect
    afresh instead of each failing once."""
    conn.invalidate(exc)
    conn.engine.dispose()


_PYFORMAT = re.compile(r"%\((\w+)\)s")


class Prepared:
    """One Core statement, compiled for each dialect (and set of parameter names) it meets
    and run by the driver.

    `binary`: on PostgreSQL, psycopg sends the parameters in binary (`%b`), for the
    statements whose parameters are arrays (`unnest`): in text an array is a literal psycopg
    builds in Python, escaping every quote of every element (an 8 KB delivery body's JSON:
    most of a run's insert of its records); in binary each element goes as it is. Every
    element of one array must then be of one Python type (floats as floats)."""

    __slots__ = ("_binary", "_compiled", "statement")

    def __init__(self, statement: sa.ClauseElement, binary: bool = False) -> None:
        self.statement = statement
        self._binary = binary
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}

    def _for(self, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
        compiled = self._compiled.get((dialect.name, keys))
        if compiled is None:
            compiled = _compile(self.statement, dialect, keys)
            if self._binary and dialect.name == "postgresql":
                sql = _PYFORMAT.sub(r"%(\1)b", compiled.sql)
                compiled = dataclasses.replace(compiled, sql=sql)
            self._compiled[dialect.name, keys] = compiled
        return compiled

    def run(self, conn: sa.Connection, params: Mapping[str, Any] | None = None) -> DBAPICursor:
        """Execute within `conn`'s transaction; the driver's cursor, to fetch rows from."""
        dialect = conn.dialect
        compiled = self._for(dialect, tuple(params) if params else ())
        values = {**compiled.defaults, **params} if params else dict(compiled.defaults)
        for name, processor in compiled.processors:
            values[name] = processor(values[name])
        arguments: Any = compiled.in_order(values) if compiled.positional else values
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(compiled.sql, arguments)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, cursor):
                _disconnected(conn, exc)
            raise sa.exc.DBAPIError.instance(
                compiled.sql, arguments, exc, dialect.loaded_dbapi.Error
            ) from exc
        return cursor

    def scalar(self, conn: sa.Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None without a row."""
        row = self.run(conn, params).fetchone()
        return row[0] if row is not None else None


def floats(values: Iterable[float | None]) -> list[float | None]:
    """An array parameter of floats for a `binary` statement: an int among them (a time
    given as one) would fail its dumping."""
    return [None if value is None else float(value) for value in values]


@contextlib.contextmanager
def pipelined(conn: sa.Connection) -> Iterator[None]:
    """On PostgreSQL, send the statements whose results nobody reads without waiting for each
    (psycopg's pipeline mode): a fetch, or the end of the block, waits for what was sent. A
    delivery's inserts then cost one round trip, not one each. Elsewhere, nothing changes."""
    dialect = conn.dialect
    if dialect.name != "postgresql":
        yield
        return
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    try:
        with dbapi_connection.pipeline():
            yield
    except dialect.loaded_dbapi.Error as exc:
        # A statement sent earlier failed when the pipeline caught up with it.
        if dialect.is_disconnect(exc, dbapi_connection, None):
            _disconnected(conn, exc)
        raise sa.exc.DBAPIError.instance(
            "(pipelined statements)", None, exc, dialect.loaded_dbapi.Error
        ) from exc
