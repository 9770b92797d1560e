"""The database tools over SQLAlchemy URLs: same answers as the direct SQLite path, read-only."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import sqlite3
import sys
import time

import pytest

pytest.importorskip("sqlalchemy")

from tooltune.registry import ToolError, ToolRegistry  # noqa: E402
from tooltune.tools.database import _cell, make_database_tools  # noqa: E402
from tooltune.tools.sql_guard import check_read_only_sql  # noqa: E402
from tooltune.types import ToolCall  # noqa: E402


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "world.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE cities (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                             population INTEGER DEFAULT 0);
        CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT,
                             city_id INTEGER REFERENCES cities(id), photo BLOB, note);
        CREATE VIEW big_cities AS SELECT name FROM cities WHERE population > 500000;
        CREATE TABLE k (v INTEGER);
        """
    )
    conn.executemany(
        "INSERT INTO cities (name, population) VALUES (?, ?)",
        [(f"city{i}", i * 10_000) for i in range(120)],
    )
    conn.execute("INSERT INTO people (name, city_id, photo) VALUES ('Ada', 3, x'00ff00')")
    conn.execute("INSERT INTO people (name, city_id) VALUES (?, 4)", ("L" * 3000,))
    conn.executemany("INSERT INTO k VALUES (?)", [(i,) for i in range(1000)])
    conn.commit()
    conn.close()
    return path


def registry(source, **kwargs):
    reg = ToolRegistry()
    for t in make_database_tools(source, **kwargs):
        reg.register(t)
    return reg


def call(reg, name, **arguments):
    return reg.execute(ToolCall(id="1", name=name, arguments=arguments))


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


SAME_CALLS = [
    ("sql_query", {"query": "SELECT name, population FROM cities WHERE id <= 2 ORDER BY id;"}),
    ("sql_query", {"query": "SELECT count(*) AS n, max(population) FROM cities"}),
    ("sql_query", {"query": "SELECT id FROM cities"}),  # capped at 50 with a note
    ("sql_query", {"query": "SELECT a.v FROM k a, k b"}),  # a count lower bound
    ("sql_query", {"query": "SELECT p.name, p.photo FROM people p ORDER BY p.id"}),
    ("sql_query", {"query": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r "
                            "WHERE n < 5) SELECT sum(n) FROM r"}),
    ("sql_query", {"query": "VALUES (1, 'a'), (2, 'b')"}),
    ("sql_query", {"query": "SELECT nope FROM cities"}),
    ("sql_query", {"query": "SELECT city_id FROM cities"}),  # the hint: where city_id is
    ("sql_query", {"query": "SELECT name FROM towns"}),  # the hint: the tables there are
    ("list_tables", {}),
    ("describe_table", {"table": "cities"}),
    ("describe_table", {"table": "people"}),
    ("describe_table", {"table": "big_cities"}),
    ("describe_table", {"table": 'cities"; DROP TABLE cities; --'}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "arguments"), SAME_CALLS)
def test_sqlite_url_gives_the_same_answers_as_the_path(db, name, arguments):
    # A time limit no loaded machine reaches: the cross join's count stops at the row cap on
    # both paths (at the default 2 s it stopped early on a busy 2-core VM, each path elsewhere)
    direct = call(registry(db, time_limit=60), name, **arguments)
    via_url = call(registry(f"sqlite:///{db}", time_limit=60), name, **arguments)
    assert via_url.success == direct.success
    assert via_url.result == direct.result
    if not direct.success:
        assert via_url.error == direct.error


def test_url_results_have_the_documented_shapes(db):
    reg = registry(f"sqlite:///{db}")
    assert call(reg, "list_tables").result == {
        "tables": ["cities", "k", "people"],
        "views": ["big_cities"],
    }
    people = call(reg, "describe_table", table="people").result
    assert people["columns"][0] == {
        "name": "id",
        "type": "INTEGER",
        "not_null": False,
        "default": None,
        "primary_key": True,
    }
    assert people["columns"][4]["type"] == ""  # a column without a declared type
    assert people["foreign_keys"] == [{"column": "city_id", "references": "cities(id)"}]
    assert people["row_count"] == 2
    capped = call(reg, "sql_query", query="SELECT id FROM cities").result
    assert len(capped["rows"]) == 50 and capped["note"].startswith("50 of 120 rows shown")
    photo = call(reg, "sql_query", query="SELECT photo, name FROM people ORDER BY id").result
    assert photo["rows"][0] == ["<3 bytes>", "Ada"]
    assert photo["rows"][1][1].endswith("...") and len(photo["rows"][1][1]) == 1003
    assert "SQLite dialect" in reg.get("sql_query").description


def test_url_keyword_and_url_string_are_the_same(db):
    by_keyword = call(registry(None, url=f"sqlite:///{db}"), "list_tables").result
    assert by_keyword == call(registry(f"sqlite:///{db}"), "list_tables").result


def test_bad_sources_are_refused(db, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        make_database_tools(db, url=f"sqlite:///{db}")
    with pytest.raises(ValueError, match="exactly one"):
        make_database_tools()
    with pytest.raises(ValueError, match="not 'oracle'"):
        make_database_tools("oracle://scott@localhost/xe")
    with pytest.raises(ValueError, match="must name a database file"):
        make_database_tools("sqlite://")
    with pytest.raises(FileNotFoundError):
        make_database_tools(f"sqlite:///{tmp_path / 'nope.db'}")
    with pytest.raises(ValueError, match="not a valid database URL"):
        make_database_tools(url="not a url")


def test_missing_sqlalchemy_names_the_extra(db, monkeypatch):
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # makes `import sqlalchemy` fail
    with pytest.raises(ImportError, match=r"pip install tooltune\[sql\]"):
        make_database_tools(f"sqlite:///{db}")
    assert make_database_tools(db)  # a plain path needs no SQLAlchemy


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("DROP TABLE cities", "DROP is not permitted"),
        ("INSERT INTO k VALUES (1)", "INSERT is not permitted"),
        ("DELETE FROM k", "DELETE is not permitted"),
        ("UPDATE k SET v = 0", "UPDATE is not permitted"),
        ("ATTACH DATABASE '/tmp/evil.db' AS evil", "ATTACH is not permitted"),
        ("SELECT 1; SELECT 2", "only one SQL statement"),
        ("SELECT 1; DROP TABLE k", "only one SQL statement"),
        ("PRAGMA writable_schema=1", "PRAGMA writable_schema is not permitted"),
        ("PRAGMA journal_mode = WAL", "PRAGMA journal_mode is not permitted"),
        ("VACUUM INTO '/tmp/stolen.db'", "VACUUM is not permitted"),
        ("BEGIN", "BEGIN is not permitted"),
        ("SELECT load_extension('/tmp/evil.so')", "load_extension() is not permitted"),
        ("SELECT writefile('/tmp/x', 'pwned')", "writefile() is not permitted"),
        ("WITH d AS (SELECT 1) INSERT INTO k SELECT * FROM d", "INSERT is not permitted"),
        ("SELECT 'a;b', \"k\".v FROM k LIMIT 1 -- fine ; DROP", None),
    ],
)
def test_url_refuses_anything_but_reading(db, query, message):
    before = digest(db)
    response = call(registry(f"sqlite:///{db}"), "sql_query", query=query)
    if message is None:
        assert response.success, response.error
    else:
        assert not response.success
        assert message in response.error
    assert digest(db) == before


def test_sqlite_guards_still_hold_behind_the_url(db):
    """The authorizer stays on behind SQLAlchemy: what the static check lets through is still read-only."""
    reg = registry(f"sqlite:///{db}")
    zeroblob = call(reg, "sql_query", query="SELECT zeroblob(2000000000)")
    assert not zeroblob.success and "too big" in zeroblob.error
    schema = call(reg, "sql_query", query="SELECT count(*) FROM sqlite_master")
    assert schema.success and schema.result["rows"] == [[4]]


def test_billion_row_cross_join_stops_at_the_time_limit(db):
    before = digest(db)
    reg = registry(f"sqlite:///{db}", time_limit=0.5)
    start = time.monotonic()
    response = call(reg, "sql_query", query="SELECT count(*) FROM k a, k b, k c")  # 10**9 rows
    elapsed = time.monotonic() - start
    assert not response.success
    assert "took longer than 0.5 s" in response.error
    assert elapsed < 2.0
    assert call(reg, "sql_query", query="SELECT count(*) FROM k").result["rows"] == [[1000]]
    assert digest(db) == before


def test_concurrent_url_calls(db):
    reg = registry(f"sqlite:///{db}")
    calls = [
        ToolCall(id=str(i), name="sql_query", arguments={"query": f"SELECT {i} + count(*) FROM k"})
        for i in range(5)
    ]
    assert [r.result["rows"][0][0] for r in reg.execute_many(calls)] == [1000 + i for i in range(5)]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mysql", "mariadb"])
@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1",
        "  select name from cities where name = 'DROP TABLE x; --' ;  ",
        "(SELECT 1) UNION (SELECT 2)",
        "WITH t AS (SELECT 1 AS a) SELECT a FROM t",
        "EXPLAIN SELECT * FROM cities",
        'SELECT "delete", "into" FROM "update"',
        "SELECT replace(name, 'a', 'b') /* a comment; DROP */ FROM cities",
        "SELECT substring(name FROM 1 FOR 2) FROM cities",
    ],
)
def test_check_accepts_plain_reads(dialect, query):
    assert check_read_only_sql(query, dialect) in {"SELECT", "WITH", "EXPLAIN"}


@pytest.mark.parametrize(
    ("dialect", "query", "message"),
    [
        ("postgresql", "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "DELETE"),
        ("postgresql", "SELECT * INTO copy FROM t", "INTO is not permitted"),
        ("postgresql", "SELECT * FROM t FOR UPDATE", "locking rows"),
        ("postgresql", "SELECT * FROM t FOR SHARE", "locking rows"),
        ("mysql", "SELECT * FROM t LOCK IN SHARE MODE", "LOCK is not permitted"),
        ("mysql", "SELECT * FROM t INTO OUTFILE '/tmp/x'", "INTO is not permitted"),
        ("postgresql", "EXPLAIN ANALYZE DELETE FROM t", "DELETE is not permitted"),
        ("postgresql", "SELECT set_config('statement_timeout', '0', false)", "set_config()"),
        ("postgresql", "SELECT pg_catalog.\"set_config\"('a', 'b', false)", "set_config()"),
        ("postgresql", "SELECT nextval('s')", "nextval()"),
        ("postgresql", "SELECT pg_advisory_lock(1)", "pg_advisory_lock()"),
        ("postgresql", "SELECT query_to_xml('DELETE FROM t', true, true, '')", "query_to_xml()"),
        ("postgresql", "SELECT lo_import('/etc/passwd')", "lo_import()"),
        ("mysql", "SELECT load_file('/etc/passwd')", "load_file()"),
        ("mysql", "SELECT get_lock('a', 10)", "get_lock()"),
        ("postgresql", "COPY t TO '/tmp/x'", "COPY is not permitted"),
        ("postgresql", "SET statement_timeout = 0", "SET is not permitted"),
        ("postgresql", "SELECT 1; COMMIT; DELETE FROM t", "only one SQL statement"),
        # quoting and comments that one backend reads differently from another
        ("postgresql", "SELECT $$a$$", "'$'"),
        ("postgresql", "SELECT E'\\''", "backslashes"),
        ("mysql", "SELECT 'a\\', '; DELETE FROM t; -- '", "backslashes"),
        ("mysql", "SELECT 1 # '\n; DELETE FROM t; -- '", "only one SQL statement"),
        ("mysql", "SELECT 1 --x; DELETE FROM t", "'-- '"),
        ("mysql", "SELECT /*! 1; DELETE FROM t */ 1", "/*!"),
        ("mysql", "SELECT /*+ MAX_EXECUTION_TIME(999999) */ 1", "/*+"),
        ("postgresql", "SELECT /* /* */ ' */ ; DELETE FROM t; -- '", "nested comments"),
        ("postgresql", "SELECT 1 --x\r; DELETE FROM t", "carriage return"),
        ("postgresql", "SELECT `a` FROM t", "'`'"),
        ("postgresql", "SELECT 'unterminated", "unterminated"),
        ("postgresql", "SELECT 1 /* open", "unterminated"),
        ("postgresql", "SELECT '\x00'", "NUL"),
        ("sqlite", "  ; -- only a comment", "non-empty"),
    ],
)
def test_check_refuses_writes_and_ambiguous_text(dialect, query, message):
    with pytest.raises(ToolError) as error:
        check_read_only_sql(query, dialect)
    assert message in str(error.value)


def test_check_reads_quotes_per_dialect():
    # `#` is a comment in MySQL but an operator in PostgreSQL: the hidden text differs.
    assert check_read_only_sql("SELECT 5 # 3", "postgresql") == "SELECT"
    with pytest.raises(ToolError, match="only one SQL statement"):
        check_read_only_sql("SELECT 5 # 3; DELETE FROM t", "postgresql")
    # [..] quotes a name in SQLite, but is an array subscript in PostgreSQL.
    assert check_read_only_sql("SELECT [delete] FROM t", "sqlite") == "SELECT"
    with pytest.raises(ToolError, match="DELETE"):
        check_read_only_sql("SELECT a[1] FROM t WHERE a[2] = 0 OR delete", "postgresql")
    with pytest.raises(ValueError, match="no read-only check"):
        check_read_only_sql("SELECT 1", "oracle")


def test_values_from_other_backends_become_json():
    assert _cell(decimal.Decimal("1.50")) == "1.50"
    assert _cell(datetime.date(2000, 1, 2)) == "2000-01-02"
    assert _cell(datetime.datetime(2000, 1, 2, 3, 4)) == "2000-01-02T03:04:00"
    assert _cell(memoryview(b"abc")) == "<3 bytes>"
    assert _cell(True) is True and _cell(None) is None and _cell(2.5) == 2.5
