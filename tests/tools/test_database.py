"""Read-only SQL tools over SQLite."""

from __future__ import annotations

import hashlib
import sqlite3
import time

import pytest

from tooltune.registry import ToolRegistry
from tooltune.tools.database import make_database_tools, missing_name_hint
from tooltune.types import ToolCall


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "world.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE cities (id INTEGER PRIMARY KEY, name TEXT NOT NULL, population INT DEFAULT 0);
        CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, city_id INT REFERENCES cities(id),
                             photo BLOB);
        CREATE VIEW big_cities AS SELECT name FROM cities WHERE population > 500000;
        """
    )
    conn.executemany(
        "INSERT INTO cities (name, population) VALUES (?, ?)",
        [(f"city{i}", i * 10_000) for i in range(120)],
    )
    conn.execute("INSERT INTO people (name, city_id, photo) VALUES ('Ada', 3, x'00ff00')")
    conn.execute("INSERT INTO people (name, city_id, photo) VALUES (?, 4, NULL)", ("L" * 3000,))
    conn.commit()
    conn.close()
    return path


def make_registry(db, **kwargs):
    registry = ToolRegistry()
    for t in make_database_tools(db, **kwargs):
        registry.register(t)
    return registry


def call(registry, name, **arguments):
    return registry.execute(ToolCall(id="1", name=name, arguments=arguments))


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_query_returns_columns_and_rows(db):
    reg = make_registry(db)
    response = call(
        reg, "sql_query", query="SELECT name, population FROM cities WHERE id <= 2 ORDER BY id;"
    )
    assert response.success, response.error
    assert response.result == {
        "columns": ["name", "population"],
        "rows": [["city0", 0], ["city1", 10000]],
        "truncated": False,
    }
    agg = call(reg, "sql_query", query="SELECT count(*) AS n, max(population) FROM cities").result
    assert agg["columns"] == ["n", "max(population)"] and agg["rows"] == [[120, 1190000]]
    joined = call(
        reg,
        "sql_query",
        query="SELECT p.name, c.name, p.photo FROM people p JOIN cities c ON c.id = p.city_id "
        "ORDER BY p.id LIMIT 1",
    ).result
    assert joined["rows"] == [["Ada", "city2", "<3 bytes>"]]
    long_text = call(reg, "sql_query", query="SELECT name FROM people WHERE id = 2").result
    assert long_text["rows"][0][0].endswith("...") and len(long_text["rows"][0][0]) == 1003
    recursive = call(
        reg,
        "sql_query",
        query="WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
        "SELECT sum(n) FROM r",
    ).result
    assert recursive["rows"] == [[15]]


def test_row_cap_with_note(db):
    result = call(make_registry(db, max_rows=50), "sql_query", query="SELECT id FROM cities").result
    assert len(result["rows"]) == 50
    assert result["truncated"] is True
    assert result["note"].startswith("50 of 120 rows shown")


def test_row_count_lower_bound_for_huge_results(db):
    result = call(
        make_registry(db, max_rows=5),
        "sql_query",
        query="SELECT a.id FROM cities a, cities b, cities c",
    ).result
    assert len(result["rows"]) == 5
    assert result["note"].startswith("5 of 10005+ rows shown")


def test_list_and_describe_tables(db):
    reg = make_registry(db)
    assert call(reg, "list_tables").result == {
        "tables": ["cities", "people"],
        "views": ["big_cities"],
    }
    people = call(reg, "describe_table", table="people").result
    assert people["table"] == "people"
    assert [c["name"] for c in people["columns"]] == ["id", "name", "city_id", "photo"]
    assert people["columns"][0]["primary_key"] is True
    assert people["foreign_keys"] == [{"column": "city_id", "references": "cities(id)"}]
    assert people["row_count"] == 2
    cities = call(reg, "describe_table", table="cities").result
    assert cities["columns"][1] == {
        "name": "name",
        "type": "TEXT",
        "not_null": True,
        "default": None,
        "primary_key": False,
    }
    assert cities["columns"][2]["default"] == "0"
    assert call(reg, "describe_table", table="big_cities").result["row_count"] == 69
    missing = call(reg, "describe_table", table='cities"; DROP TABLE cities; --')
    assert not missing.success
    assert (
        "no table named" in missing.error
        and "available: cities, people, big_cities" in missing.error
    )


@pytest.mark.parametrize(
    ("query", "hint"),
    [
        # the column of another table: where it is, and what the named table has
        ("SELECT city_id FROM cities", "(cities has id, name, population; city_id is a column "
                                       "of people)"),
        ("SELECT c.nope FROM cities c", "(cities has id, name, population)"),
        ("SELECT nope FROM people JOIN cities ON cities.id = people.city_id",
         "(cities has id, name, population; people has id, name, city_id, photo)"),
        ("SELECT name FROM towns", "(tables: cities, people, big_cities)"),
    ],
)  # fmt: skip
def test_a_missing_name_is_answered_with_where_names_are(db, query, hint):
    """As PostgreSQL's HINT: a model that guessed a column reads the real ones in the error."""
    response = call(make_registry(db), "sql_query", query=query)
    assert not response.success
    assert response.error.startswith("SQL error: no such ")
    assert response.error.endswith(hint)


@pytest.mark.parametrize(
    "error",
    [
        'SQL error: column "population" does not exist',  # PostgreSQL
        "SQL error: (1054, \"Unknown column 'population' in 'field list'\")",  # MySQL, MariaDB
    ],
)
def test_the_hint_reads_other_servers_wordings(error):
    schema = {"companies": ["name", "ceo"], "places": ["name", "population"]}
    hint = missing_name_hint(error, "SELECT population FROM companies", schema)
    assert hint == "companies has name, ceo; population is a column of places"
    missing_table = 'SQL error: relation "towns" does not exist'
    assert missing_name_hint(missing_table, "SELECT 1 FROM towns", schema) == (
        "tables: companies, places"
    )


def test_the_hint_of_a_large_schema_is_clipped():
    schema = {f"table_{i}": ["id", "name"] for i in range(500)}
    hint = missing_name_hint("no such table: towns", "SELECT 1 FROM towns", schema)
    assert hint.startswith("tables: table_0, table_1,") and hint.endswith("...")
    assert len(hint) == 400


def test_other_errors_carry_no_hint(db):
    response = call(make_registry(db), "sql_query", query="SELEC name FROM cities")
    assert "(" not in response.error


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELEC name FROM cities", "syntax error"),
        ("SELECT nope FROM cities", "no such column"),
        ("SELECT 1; SELECT 2", "only one SQL statement"),
        ("DELETE FROM cities", "DELETE is not permitted"),
        ("UPDATE cities SET population = 0", "UPDATE is not permitted"),
        ("DROP VIEW big_cities", "DROP statements are not permitted"),
        ("BEGIN", "TRANSACTION is not permitted"),
        ("PRAGMA journal_mode = WAL", "PRAGMA journal_mode is not permitted"),
        ("   ", "non-empty"),
    ],
)
def test_query_errors(db, query, message):
    before = digest(db)
    response = call(make_registry(db), "sql_query", query=query)
    assert not response.success
    assert message in response.error
    assert digest(db) == before


def test_time_limit_stops_runaway_queries(db):
    reg = make_registry(db, time_limit=0.5)
    start = time.monotonic()
    response = call(
        reg, "sql_query", query="SELECT count(*) FROM cities a, cities b, cities c, cities d"
    )
    elapsed = time.monotonic() - start
    assert not response.success
    assert "took longer than 0.5 s" in response.error
    assert elapsed < 2.0
    assert call(reg, "sql_query", query="SELECT 1").success  # the tools still work


def test_concurrent_calls(db):
    reg = make_registry(db)
    calls = [
        ToolCall(
            id=str(i), name="sql_query", arguments={"query": f"SELECT {i} + count(*) FROM cities"}
        )
        for i in range(5)
    ]
    responses = reg.execute_many(calls)
    assert [r.result["rows"][0][0] for r in responses] == [120 + i for i in range(5)]


def test_missing_database_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        make_database_tools(tmp_path / "nope.db")


def test_path_with_uri_characters(tmp_path):
    odd = tmp_path / "we?ird #dir%"
    odd.mkdir()
    path = odd / "x.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a)")
    conn.execute("INSERT INTO t VALUES (42)")
    conn.commit()
    conn.close()
    assert call(make_registry(path), "sql_query", query="SELECT a FROM t").result["rows"] == [[42]]
