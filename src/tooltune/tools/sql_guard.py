"""What keeps a model's SQL from changing a database or running away (`tools.database`).

SQLite connections get three independent guards: the file is opened read-only (`mode=ro` URI),
an authorizer allows only reading (no writes, schema changes, ATTACH, state-changing PRAGMAs or
dangerous functions such as load_extension), and a progress handler aborts any statement that
runs longer than its time limit (`SQLiteGuard`, `open_readonly_sqlite`). A database server cannot
be given an authorizer, so its queries pass a static check first that lets through one read
statement only and refuses when unsure (`check_read_only_sql`).
"""

from __future__ import annotations

import itertools
import re
import sqlite3
import time
import urllib.parse
from pathlib import Path

from tooltune.registry import ToolError

MAX_QUERY_CHARS = 20_000
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


class SQLiteGuard:
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


def timeout_message(time_limit: float) -> str:
    """What the model is told when its query ran out of time."""
    return (
        f"the query took longer than {time_limit:g} s and was stopped; narrow it down with "
        "WHERE or LIMIT, or avoid large joins"
    )


def open_readonly_sqlite(uri: str, time_limit: float) -> sqlite3.Connection:
    """A read-only connection that cannot attach databases, with the schema already loaded."""
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=time_limit)
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10_000_000)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_QUERY_CHARS * 2)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()  # load the schema
    except BaseException:
        conn.close()
        raise
    return conn


def readonly_uri(db_path: str | Path) -> str:
    """The `mode=ro` URI of an existing SQLite file."""
    path = Path(db_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"database {path} does not exist")
    return f"file:{urllib.parse.quote(str(path))}?mode=ro"


def explain_sqlite_error(
    error: sqlite3.Error, guard: SQLiteGuard, time_limit: float, query: str
) -> str:
    """A SQLite error as the model should read it: the guard's refusal or timeout by name."""
    text = str(error)
    if guard.timed_out or "interrupted" in text:
        return timeout_message(time_limit)
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


# --------------------------------------------------------------------------------------------
# Database servers: a static check of the query text
# --------------------------------------------------------------------------------------------

READ_STATEMENTS = frozenset({"SELECT", "WITH", "VALUES", "EXPLAIN"})
# Words that let a statement starting with SELECT/WITH/EXPLAIN write, lock or leave the query
# (data-modifying CTEs, SELECT INTO, INTO OUTFILE, LOCK IN SHARE MODE, EXPLAIN ANALYZE DELETE),
# plus statement keywords as a second line of defence. Quote a column that uses one as its name.
# fmt: off
DENIED_WORDS = frozenset({
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "INTO", "LOCK", "DROP", "CREATE", "ALTER",
    "TRUNCATE", "GRANT", "REVOKE", "ATTACH", "DETACH", "PRAGMA", "COPY", "CALL", "EXEC", "EXECUTE",
})
# Functions that change state, escape the transaction, read server files or run a query string
# that this check never sees (query_to_xml). set_config could also lift the statement timeout.
DENIED_SQL_FUNCTIONS = DENIED_FUNCTIONS | frozenset({
    "set_config", "nextval", "setval", "pg_terminate_backend", "pg_cancel_backend",
    "pg_reload_conf", "pg_rotate_logfile", "pg_switch_wal", "pg_create_restore_point",
    "pg_promote", "pg_read_file", "pg_read_binary_file", "pg_stat_file", "pg_notify",
    "pg_logical_emit_message", "pg_backup_start", "pg_backup_stop", "pg_start_backup",
    "pg_stop_backup", "pg_import_system_collations", "pg_log_backend_memory_contexts",
    "query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema", "cursor_to_xml",
    "load_file", "get_lock", "release_lock", "release_all_locks", "master_pos_wait",
    "source_pos_wait", "sys_exec", "sys_eval",
})
DENIED_FUNCTION_PREFIXES = (
    "lo_", "dblink", "pg_advisory", "pg_try_advisory", "pg_file_", "pg_ls_", "pg_create_",
    "pg_drop_", "pg_replication_",
)
# fmt: on
# the dialects the check reads, by how they quote and comment
FLAVORS = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


def _refuse(what: str) -> ToolError:
    return ToolError(f"only read-only queries are allowed; {what} is not permitted")


def _sql_tokens(query: str, flavor: str) -> list[tuple[str, str]]:
    """(kind, text) tokens of `query` without comments; kind is word, name, string or punct.

    A quote or comment must never hide a `;` or a keyword from the check, so anything the
    backends read differently (backslash escapes, dollar quoting, nested or executable comments,
    MySQL's "--x") is refused rather than guessed at.
    """
    quotes = {"'": "'", '"': '"'}
    if flavor in ("sqlite", "mysql"):
        quotes["`"] = "`"
    if flavor == "sqlite":
        quotes["["] = "]"
    if "\x00" in query:
        raise ToolError("the query contains a NUL character")
    if flavor != "sqlite" and "\\" in query:
        raise ToolError("backslashes are not allowed in queries to this database")
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
        elif query.startswith("--", i) or (c == "#" and flavor == "mysql"):
            if flavor == "mysql" and c == "-" and i + 2 < n and not query[i + 2].isspace():
                raise ToolError("write '-- ' with a space for a comment, or '- -' for two minuses")
            end = query.find("\n", i)
            end = n if end < 0 else end
            if "\r" in query[i:end]:  # PostgreSQL ends a comment at \r, the others do not
                raise ToolError("a carriage return inside a -- comment is not allowed")
            i = end
        elif query.startswith("/*", i):
            end = query.find("*/", i + 2)
            if end < 0:
                raise ToolError("unterminated /* comment")
            body = query[i + 2 : end]
            if "/*" in body or body.startswith(("!", "M!", "+")):
                raise ToolError("nested comments and /*! */ or /*+ */ comments are not allowed")
            i = end + 2
        elif c in quotes:
            close, j = quotes[c], i + 1
            while True:
                k = query.find(close, j)
                if k < 0:
                    raise ToolError("unterminated quoted string or name")
                if close != "]" and query.startswith(close, k + 1):
                    j = k + 2  # a doubled quote stands for itself
                    continue
                break
            text = query[i + 1 : k]
            if close != "]":
                text = text.replace(close * 2, close)
            string = c == "'" or (c == '"' and flavor == "mysql")
            tokens.append(("string" if string else "name", text))
            i = k + 1
        elif c.isalnum() or c == "_":
            j = i + 1
            while j < n and (query[j].isalnum() or query[j] == "_"):
                j += 1
            tokens.append(("word", query[i:j]))
            i = j
        elif c == "$" or c == "`":
            raise ToolError(f"the character {c!r} is not allowed outside quotes in this dialect")
        else:
            tokens.append(("punct", c))
            i += 1
    return tokens


def check_read_only_sql(query: str, dialect: str) -> str:
    """Refuse (ToolError) anything but one read statement; return its first keyword.

    `dialect` is "sqlite", "postgresql", "mysql" or "mariadb": quoting and comments differ.
    This check is the only guard against a second statement and against writes the server would
    allow in a read-only transaction (set_config, advisory locks), so it refuses when unsure.
    """
    flavor = FLAVORS.get(dialect)
    if flavor is None:
        raise ValueError(f"no read-only check for the {dialect!r} dialect")
    tokens = _sql_tokens(query, flavor)
    while tokens and tokens[-1] == ("punct", ";"):
        tokens.pop()
    if not tokens:
        raise ToolError("query must be a non-empty SQL statement")
    if ("punct", ";") in tokens:
        raise ToolError("only one SQL statement per call is allowed")
    first = next((t for t in tokens if t != ("punct", "(")), ("punct", ""))
    words = [text.upper() for kind, text in tokens if kind == "word"]
    if first[0] != "word" or first[1].upper() not in READ_STATEMENTS:
        what = first[1].upper() if first[0] == "word" else "this statement"
        if what == "PRAGMA" and len(words) > 1:
            what = f"PRAGMA {words[1].lower()}"
        raise ToolError(
            f"only read-only queries (SELECT, WITH, VALUES, EXPLAIN) are allowed; {what} is not "
            "permitted"
        )
    for a, b in itertools.pairwise(words):
        if a == "FOR" and b in ("UPDATE", "SHARE", "NO", "KEY"):
            raise _refuse("locking rows (FOR UPDATE / FOR SHARE)")
    for word in words:
        if word in DENIED_WORDS:
            raise _refuse(word)
    for (kind, text), following in itertools.pairwise(tokens):
        called = kind in ("word", "name") and following == ("punct", "(")
        name = text.lower()
        if called and (name in DENIED_SQL_FUNCTIONS or name.startswith(DENIED_FUNCTION_PREFIXES)):
            raise _refuse(f"the function {text}()")
    return first[1].upper()
