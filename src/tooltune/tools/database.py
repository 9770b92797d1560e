"""Read-only SQL over a SQLite database.

Three independent guards keep a query from changing anything or running away:
the database is opened read-only (`mode=ro` URI), an authorizer allows only reading (no writes,
schema changes, ATTACH, state-changing PRAGMAs or dangerous functions such as load_extension),
and a progress handler aborts any statement that runs longer than `time_limit` seconds.
Each call opens its own connection, so the tools are safe to call from several threads.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from tooltune.registry import ToolDefinition, ToolError, tool

MAX_QUERY_CHARS = 20_000
MAX_VALUE_CHARS = 1_000
COUNT_LIMIT = 10_000  # rows counted beyond the shown ones, for "50 of N rows"
READ_ONLY_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
DENIED_FUNCTIONS = frozenset(
    {
        "load_extension",
        "readfile",
        "writefile",
        "edit",
        "fts3_tokenizer",
        "zipfile",
        "sqlar_compress",
    }
)
_DENIED_ACTIONS = (
    "CREATE_INDEX CREATE_TABLE CREATE_TEMP_INDEX CREATE_TEMP_TABLE CREATE_TEMP_TRIGGER "
    "CREATE_TEMP_VIEW CREATE_TRIGGER CREATE_VIEW CREATE_VTABLE DELETE DROP_INDEX DROP_TABLE "
    "DROP_TEMP_INDEX DROP_TEMP_TABLE DROP_TEMP_TRIGGER DROP_TEMP_VIEW DROP_TRIGGER DROP_VIEW "
    "DROP_VTABLE INSERT TRANSACTION UPDATE ATTACH DETACH ALTER_TABLE REINDEX ANALYZE SAVEPOINT"
)
_ACTION_NAMES = {
    getattr(sqlite3, "SQLITE_" + n): n.replace("_", " ")
    for n in _DENIED_ACTIONS.split()
    if hasattr(sqlite3, "SQLITE_" + n)
}


_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master"})


class _Guard:
    """Authorizer and progress handler of one call; remembers why it refused."""

    def __init__(self, time_limit: float) -> None:
        self.time_limit = time_limit
        self.deadline = float("inf")
        self.denied: str | None = None
        self.denied_schema = False
        self.timed_out = False

    def authorize(self, action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() not in DENIED_FUNCTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in READ_ONLY_PRAGMAS:
            return sqlite3.SQLITE_OK
        what = _ACTION_NAMES.get(action, f"action {action}")
        if action == sqlite3.SQLITE_FUNCTION:
            what = f"the function {arg2}()"
        elif action == sqlite3.SQLITE_PRAGMA:
            what = f"PRAGMA {arg1}"
        if self.denied is None:
            self.denied = what
            # DROP/CREATE are first seen as writes to sqlite_master: name the statement instead.
            self.denied_schema = (arg1 or "").lower() in _SCHEMA_TABLES
        return sqlite3.SQLITE_DENY

    def progress(self) -> int:
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return 1  # non-zero aborts the statement
        return 0

    def start(self) -> None:
        self.deadline = time.monotonic() + self.time_limit
        self.timed_out = False


def _cell(value: object) -> object:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        return value[:MAX_VALUE_CHARS] + "..."
    return value


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def make_database_tools(
    db_path: str | Path, *, max_rows: int = 50, time_limit: float = 2.0
) -> list[ToolDefinition]:
    """sql_query, list_tables and describe_table over the SQLite file at `db_path`."""
    path = Path(db_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"database {path} does not exist")
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"

    @contextlib.contextmanager
    def connect() -> Iterator[tuple[sqlite3.Connection, _Guard]]:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=time_limit)
        try:
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10_000_000)
            conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_QUERY_CHARS * 2)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()  # load the schema
            guard = _Guard(time_limit)
            conn.set_authorizer(guard.authorize)
            conn.set_progress_handler(guard.progress, 1000)
            yield conn, guard
        finally:
            conn.close()

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
                raise ToolError(_explain(e, guard, time_limit, query)) from None
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
        if not isinstance(query, str) or not query.strip():
            raise ToolError("query must be a non-empty SQL statement")
        if len(query) > MAX_QUERY_CHARS:
            raise ToolError(f"query is longer than {MAX_QUERY_CHARS} characters")
        columns, rows, counted, complete = run(query)
        result = {
            "columns": columns,
            "rows": [[_cell(v) for v in row] for row in rows],
            "truncated": counted > len(rows),
        }
        if result["truncated"]:
            total = f"{counted}" if complete else f"{counted}+"
            result["note"] = f"{len(rows)} of {total} rows shown; refine the query or use LIMIT"
        return result

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


def _explain(error: sqlite3.Error, guard: _Guard, time_limit: float, query: str) -> str:
    text = str(error)
    if guard.timed_out or "interrupted" in text:
        return (
            f"the query took longer than {time_limit:g} s and was stopped; narrow it down with "
            "WHERE or LIMIT, or avoid large joins"
        )
    if guard.denied or "not authorized" in text:
        what = f"{guard.denied} is" if guard.denied else "this statement is"
        keyword = re.match(r"\s*(\w+)", query)
        if guard.denied_schema and keyword:
            what = f"{keyword.group(1).upper()} statements are"
        return f"only read-only queries are allowed; {what} not permitted"
    if "one statement at a time" in text:
        return "only one SQL statement per call is allowed"
    if "readonly" in text or "read-only" in text:
        return "the database is read-only"
    return f"SQL error: {text}"
