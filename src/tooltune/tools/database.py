"""Read-only SQL over a SQLite database, or over any SQLAlchemy URL of a supported backend.

SQLite files are opened directly, with three independent guards (`sql_guard`) that keep a query from changing
anything or running away: the database is opened read-only (`mode=ro` URI), an authorizer allows
only reading (no writes, schema changes, ATTACH, state-changing PRAGMAs or dangerous functions such
as load_extension), and a progress handler aborts any statement that runs longer than `time_limit`
seconds. Each call opens its own connection, so the tools are safe to call from several threads.

Other databases (PostgreSQL, MySQL, MariaDB, and SQLite again) go through SQLAlchemy URLs
(`pip install tooltune[sql]`). There the server cannot be given an authorizer, so the guards are:
a static check that lets through one read statement only (`check_read_only_sql`), a read-only
transaction that is always rolled back, a server-side statement timeout, and the same row cap.
SQLite behind a URL keeps the authorizer and the progress handler as well.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tooltune.registry import ToolDefinition, ToolError, tool
from tooltune.tools.sql_guard import (
    FLAVORS,
    MAX_QUERY_CHARS,
    SQLiteGuard,
    check_read_only_sql,
    explain_sqlite_error,
    open_readonly_sqlite,
    readonly_uri,
    timeout_message,
)

MAX_VALUE_CHARS = 1_000
COUNT_LIMIT = 10_000  # rows counted beyond the shown ones, for "50 of N rows"
MAX_HINT_CHARS = 400  # the names a missing-name error lists (`missing_name_hint`)
# A missing column or table as SQLite, PostgreSQL and MySQL/MariaDB word it: (pattern, kind)
MISSING_NAMES = [(re.compile(p), kind) for p, kind in [
    (r"no such column: (?:\w+\.)?(\w+)", "column"), (r"no such table: (?:\w+\.)?(\w+)", "table"),
    (r'column "(?:\w+\.)?(\w+)" does not exist', "column"),
    (r'relation "(?:\w+\.)?(\w+)" does not exist', "table"),
    (r"Unknown column '(?:\w+\.)?(\w+)'", "column"), (r"Table '(?:\w+\.)?(\w+)' doesn't exist", "table"),
]]  # fmt: skip


def names_missing(error: str) -> bool:
    return any(pattern.search(error) for pattern, _ in MISSING_NAMES)


def missing_name_hint(error: str, query: str, columns_of: dict[str, list[str]]) -> str:
    """What a query that named a missing column or table needs to be repaired, as PostgreSQL's
    HINT gives it: the columns of the tables the query names and which other table has the
    column, or the tables there are. "" for any other error. (A model that guessed
    `population` of `companies` reads where it is instead of guessing again.)"""
    found = next(((m, kind) for p, kind in MISSING_NAMES if (m := p.search(error))), None)
    if found is None or not columns_of:
        return ""
    name, kind = found[0].group(1), found[1]
    if kind == "table":
        hint = f"tables: {', '.join(columns_of) or 'none'}"
    else:
        named = [t for t in columns_of
                 if re.search(rf"\b{re.escape(t)}\b", query, re.IGNORECASE)]  # fmt: skip
        parts = [f"{t} has {', '.join(columns_of[t])}" for t in named]
        elsewhere = [t for t, columns in columns_of.items() if name in columns and t not in named]
        if elsewhere:
            parts.append(f"{name} is a column of {' and '.join(elsewhere)}")
        hint = "; ".join(parts)
    # a database of hundreds of tables must not flood the observation: describe_table has it all
    return hint if len(hint) <= MAX_HINT_CHARS else hint[: MAX_HINT_CHARS - 3] + "..."


def _cell(value: object) -> object:
    """A JSON-friendly, length-capped form of one value (other backends return dates, decimals)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, datetime.date | datetime.time):
        value = value.isoformat()
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_VALUE_CHARS:
        return text[:MAX_VALUE_CHARS] + "..."
    return text


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _check_query_argument(query: object) -> None:
    if not isinstance(query, str) or not query.strip():
        raise ToolError("query must be a non-empty SQL statement")
    if len(query) > MAX_QUERY_CHARS:
        raise ToolError(f"query is longer than {MAX_QUERY_CHARS} characters")


def _query_result(columns: list, rows: list, counted: int, complete: bool) -> dict:
    result = {
        "columns": columns,
        "rows": [[_cell(v) for v in row] for row in rows],
        "truncated": counted > len(rows),
    }
    if result["truncated"]:
        total = f"{counted}" if complete else f"{counted}+"
        result["note"] = f"{len(rows)} of {total} rows shown; refine the query or use LIMIT"
    return result


def make_database_tools(
    db_path: str | Path | None = None,
    *,
    url: str | None = None,
    max_rows: int = 50,
    time_limit: float = 2.0,
) -> list[ToolDefinition]:
    """sql_query, list_tables and describe_table over a SQLite file or a SQLAlchemy URL.

    A path is opened as SQLite directly. `url=` (or a `db_path` string containing "://") is a
    SQLAlchemy URL such as "postgresql://reader@localhost/world" or "sqlite:///world.db"; it
    needs `pip install tooltune[sql]` and the backend's driver.
    """
    if url is None and isinstance(db_path, str) and "://" in db_path:
        db_path, url = None, db_path
    if (db_path is None) == (url is None):
        raise ValueError("give exactly one of db_path (a SQLite file) or url (a SQLAlchemy URL)")
    if url is not None:
        return _sqlalchemy_tools(url, max_rows=max_rows, time_limit=time_limit)
    return _sqlite_tools(db_path, max_rows=max_rows, time_limit=time_limit)


def _sqlite_tools(db_path: str | Path, *, max_rows: int, time_limit: float) -> list[ToolDefinition]:
    """The three tools over a SQLite file, guarded by the authorizer and progress handler."""
    uri = readonly_uri(db_path)

    @contextlib.contextmanager
    def connect() -> Iterator[tuple[sqlite3.Connection, SQLiteGuard]]:
        conn = open_readonly_sqlite(uri, time_limit)
        try:
            guard = SQLiteGuard(time_limit)
            conn.set_authorizer(guard.authorize)
            conn.set_progress_handler(guard.progress, 1000)
            yield conn, guard
        finally:
            conn.close()

    def columns_of(conn: sqlite3.Connection) -> dict[str, list[str]]:
        """table or view -> its column names, tables first (as `list_tables`), read through the
        same guarded connection; {} where that cannot be read."""
        try:
            names = conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                 "AND name NOT LIKE 'sqlite_%' ORDER BY type = 'view', name").fetchall()  # fmt: skip
            return {n: [c[1] for c in conn.execute(f"PRAGMA table_info({_quote(n)})")]
                    for (n,) in names}  # fmt: skip
        except sqlite3.Error:
            return {}

    def run(
        query: str, params: tuple = (), limit: int | None = None
    ) -> tuple[list, list, int, bool]:
        """(columns, rows, rows counted, count complete) for one guarded statement."""
        limit = max_rows if limit is None else limit
        with connect() as (conn, guard):
            guard.start()
            try:
                cursor = conn.execute(query, params)
                rows = cursor.fetchmany(limit)
                columns = [d[0] for d in cursor.description or []]
            except sqlite3.Error as e:
                message = explain_sqlite_error(e, guard, time_limit, query)
                if not params and names_missing(message):
                    hint = missing_name_hint(message, query, columns_of(conn))
                    message = f"{message} ({hint})" if hint else message
                raise ToolError(message) from None
            counted, complete = len(rows), True
            if len(rows) == limit:
                try:
                    while counted < limit + COUNT_LIMIT:
                        more = cursor.fetchmany(1000)
                        if not more:
                            break
                        counted += len(more)
                    else:
                        complete = False
                except sqlite3.Error:  # ran out of time while counting: report a lower bound
                    complete = False
            return columns, rows, counted, complete

    @tool(timeout=time_limit + 10.0)
    def sql_query(query: str) -> dict:
        """Run one read-only SQL query (SQLite dialect) and return the rows.

        Only SELECT-style reading is allowed; at most a few dozen rows are shown, so use WHERE,
        ORDER BY and LIMIT, or aggregate with COUNT/SUM/AVG.

        Args:
            query: A single SQL statement, e.g. "SELECT name, population FROM cities LIMIT 5".
        """
        _check_query_argument(query)
        return _query_result(*run(query))

    @tool(timeout=time_limit + 10.0)
    def list_tables() -> dict:
        """List the tables and views of the database."""
        _, rows, _, _ = run(
            "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name",
            limit=10_000,
        )
        return {
            "tables": [name for name, kind in rows if kind == "table"],
            "views": [name for name, kind in rows if kind == "view"],
        }

    @tool(timeout=time_limit + 10.0)
    def describe_table(table: str) -> dict:
        """Show the columns (name, type, key) and row count of one table or view.

        Args:
            table: The table name, as list_tables shows it.
        """
        if not isinstance(table, str) or not table:
            raise ToolError("table must be a non-empty name")
        _, found, _, _ = run(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?",
            (table,),
        )
        if not found:
            names = list_tables.function()
            available = ", ".join(names["tables"] + names["views"]) or "none"
            raise ToolError(f"no table named {table!r}; available: {available}")
        name = found[0][0]
        _, info, _, _ = run(f"PRAGMA table_info({_quote(name)})", limit=10_000)
        _, fks, _, _ = run(f"PRAGMA foreign_key_list({_quote(name)})", limit=10_000)
        try:
            _, count, _, _ = run(f"SELECT count(*) FROM {_quote(name)}")
            row_count = count[0][0]
        except ToolError:
            row_count = None  # too slow to count within the time limit
        return {
            "table": name,
            "columns": [
                {
                    "name": c[1],
                    "type": c[2],
                    "not_null": bool(c[3]),
                    "default": c[4],
                    "primary_key": bool(c[5]),
                }
                for c in info
            ],
            "foreign_keys": [{"column": fk[3], "references": f"{fk[2]}({fk[4]})"} for fk in fks],
            "row_count": row_count,
        }

    return [sql_query, list_tables, describe_table]


# --------------------------------------------------------------------------------------------
# Other databases through SQLAlchemy
# --------------------------------------------------------------------------------------------


def _import_sqlalchemy() -> Any:
    try:
        import sqlalchemy
    except ImportError:
        raise ImportError(
            "database URLs need SQLAlchemy: pip install tooltune[sql] (plain SQLite paths do not)"
        ) from None
    return sqlalchemy


def _sqlalchemy_engine(url: str, time_limit: float) -> Any:
    """An engine without a pool: every call gets a fresh session, so no setting outlives it."""
    sa = _import_sqlalchemy()
    from sqlalchemy.pool import NullPool

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as e:
        raise ValueError(f"not a valid database URL: {e}") from None
    backend = parsed.get_backend_name()
    if backend not in FLAVORS:
        raise ValueError(
            f"read-only access is implemented for sqlite, postgresql, mysql and mariadb URLs, "
            f"not {backend!r}"
        )
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:" or parsed.query.get("uri"):
            raise ValueError("a sqlite URL must name a database file, e.g. sqlite:///world.db")
        uri = readonly_uri(parsed.database)
        return sa.create_engine(
            "sqlite://", creator=lambda: open_readonly_sqlite(uri, time_limit), poolclass=NullPool
        )
    try:
        return sa.create_engine(parsed, poolclass=NullPool)
    except ImportError as e:
        raise ImportError(f"the driver for {parsed.drivername} URLs is not installed: {e}") from e


def _sqlalchemy_tools(url: str, *, max_rows: int, time_limit: float) -> list[ToolDefinition]:
    """The three tools over a SQLAlchemy URL, with the same result shapes as over SQLite."""
    sa = _import_sqlalchemy()
    engine = _sqlalchemy_engine(url, time_limit)
    dialect = engine.dialect.name
    label = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB"}.get(
        dialect, "SQLite"
    )
    millis = max(1, round(time_limit * 1000))

    def explain(error: Exception, guard: SQLiteGuard | None, query: str) -> str:
        orig = getattr(error, "orig", None) or error
        if guard is not None and isinstance(orig, sqlite3.Error):
            return explain_sqlite_error(orig, guard, time_limit, query)
        text = str(orig)
        if orig.args and isinstance(orig.args[0], dict):  # pg8000 puts the fields in a dict
            text = str(orig.args[0].get("M", text))
        lowered = text.lower()
        if any(s in lowered for s in ("statement timeout", "execution time", "max_statement_time")):
            return timeout_message(time_limit)
        if "read-only" in lowered or "read only" in lowered:
            return "the database is read-only"
        return f"SQL error: {text.strip()[:500]}"

    @contextlib.contextmanager
    def session() -> Iterator[tuple[Any, SQLiteGuard | None]]:
        """A connection in a read-only transaction with a time limit; always rolled back."""
        try:
            conn = engine.connect()
        except sa.exc.DBAPIError as e:
            raise ToolError(f"could not connect to the database: {explain(e, None, '')}") from None
        guard: SQLiteGuard | None = None
        raw = conn.connection.dbapi_connection
        try:
            if dialect == "sqlite":
                raw.execute("BEGIN")  # before the authorizer, which refuses transactions
                guard = SQLiteGuard(time_limit)
                raw.set_authorizer(guard.authorize)
                raw.set_progress_handler(guard.progress, 1000)
                guard.start()
            elif dialect == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {millis}")
            else:  # MySQL and MariaDB; START TRANSACTION ends the implicit one, if any
                if getattr(engine.dialect, "is_mariadb", False):
                    conn.exec_driver_sql(f"SET SESSION max_statement_time = {millis / 1000}")
                else:
                    conn.exec_driver_sql(f"SET SESSION max_execution_time = {millis}")
                conn.exec_driver_sql("START TRANSACTION READ ONLY")
            yield conn, guard
        except sa.exc.DBAPIError as e:
            raise ToolError(explain(e, guard, "")) from None
        finally:
            if guard is not None:
                raw.set_authorizer(None)  # let the rollback through
                raw.set_progress_handler(None, 0)
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()

    def run(query: str, limit: int | None = None) -> tuple[list, list, int, bool]:
        """(columns, rows, rows counted, count complete) for one statement of ours or checked."""
        limit = max_rows if limit is None else limit
        first = query.split(None, 1)[0].upper()
        stream = engine.dialect.supports_server_side_cursors and first != "EXPLAIN"
        with session() as (conn, guard):
            deadline = time.monotonic() + time_limit
            options = conn.execution_options(no_parameters=True, stream_results=stream)
            try:
                result = options.exec_driver_sql(query)
                if not result.returns_rows:
                    return [], [], 0, True
                columns = list(result.keys())
                rows = [tuple(r) for r in result.fetchmany(limit)]
            except sa.exc.DBAPIError as e:
                raise ToolError(explain(e, guard, query)) from None
            counted, complete = len(rows), True
            if len(rows) == limit:
                try:
                    while counted < limit + COUNT_LIMIT and time.monotonic() < deadline:
                        more = result.fetchmany(1000)
                        if not more:
                            break
                        counted += len(more)
                    else:
                        complete = False
                except sa.exc.DBAPIError:  # ran out of time while counting: a lower bound
                    complete = False
            return columns, rows, counted, complete

    def inspect(read: Callable[[Any], dict]) -> dict:
        with session() as (conn, guard):
            try:
                return read(sa.inspect(conn))
            except sa.exc.DBAPIError as e:
                raise ToolError(explain(e, guard, "")) from None

    def columns_of(insp: Any) -> dict[str, list[str]]:
        names = sorted(insp.get_table_names()) + sorted(insp.get_view_names())
        return {n: [c["name"] for c in insp.get_columns(n)] for n in names}

    def sql_query(query: str) -> dict:
        _check_query_argument(query)
        check_read_only_sql(query, dialect)
        try:
            return _query_result(*run(query))
        except ToolError as e:
            message = str(e)
            if not names_missing(message):
                raise
            try:
                hint = missing_name_hint(message, query, inspect(columns_of))
            except ToolError:
                hint = ""
            raise ToolError(f"{message} ({hint})" if hint else message) from None

    sql_query.__doc__ = f"""Run one read-only SQL query ({label} dialect) and return the rows.

        Only SELECT-style reading is allowed; at most a few dozen rows are shown, so use WHERE,
        ORDER BY and LIMIT, or aggregate with COUNT/SUM/AVG.

        Args:
            query: A single SQL statement, e.g. "SELECT name, population FROM cities LIMIT 5".
        """

    def list_tables() -> dict:
        """List the tables and views of the database."""
        return inspect(
            lambda insp: {
                "tables": sorted(insp.get_table_names()),
                "views": sorted(insp.get_view_names()),
            }
        )

    def describe_table(table: str) -> dict:
        """Show the columns (name, type, key) and row count of one table or view.

        Args:
            table: The table name, as list_tables shows it.
        """
        if not isinstance(table, str) or not table:
            raise ToolError("table must be a non-empty name")

        def read(insp: Any) -> dict:
            tables, views = sorted(insp.get_table_names()), sorted(insp.get_view_names())
            if table not in tables and table not in views:
                available = ", ".join(tables + views) or "none"
                raise ToolError(f"no table named {table!r}; available: {available}")
            keys = set(insp.get_pk_constraint(table).get("constrained_columns") or [])
            foreign = [
                {"column": column, "references": f"{fk['referred_table']}({referred})"}
                for fk in insp.get_foreign_keys(table)
                for column, referred in zip(
                    fk["constrained_columns"], fk["referred_columns"], strict=False
                )
            ]
            columns = [
                {
                    "name": c["name"],
                    "type": _type_name(c["type"], engine.dialect),
                    "not_null": not c.get("nullable", True),
                    "default": c.get("default"),
                    "primary_key": c["name"] in keys,
                }
                for c in insp.get_columns(table)
            ]
            return {"table": table, "columns": columns, "foreign_keys": foreign}

        described = inspect(read)
        quoted = engine.dialect.identifier_preparer.quote(table)
        try:  # the name came from the inspector and is quoted by the dialect: no check needed
            described["row_count"] = run(f"SELECT count(*) FROM {quoted}")[1][0][0]
        except ToolError:
            described["row_count"] = None  # too slow to count within the time limit
        return described

    timeout = time_limit + 10.0
    return [
        tool(sql_query, timeout=timeout),
        tool(list_tables, timeout=timeout),
        tool(describe_table, timeout=timeout),
    ]


def _type_name(column_type: Any, dialect: Any) -> str:
    """The column type as the dialect spells it; "" where the column declares none."""
    try:
        return str(column_type.compile(dialect=dialect))
    except Exception:  # NullType and dialect-foreign types cannot be compiled
        return ""
