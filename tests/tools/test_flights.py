"""The flight service: search, booking flow, the planted sell-out, episodes and persistence."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tooltune.registry import ToolRegistry
from tooltune.tools.flights import (
    EPISODE_HEADER,
    FlightService,
    create_flight_db,
    list_bookings,
    reset_episode,
)
from tooltune.tools.openapi import make_openapi_tools
from tooltune.types import ToolCall

FLIGHTS = [
    {"id": "FL1001", "origin": "Lisbon", "destination": "Oslo", "date": "2025-03-14",
     "departure": "09:10", "arrival": "13:40", "airline": "Nordair", "price": 180.0, "seats": 3},
    {"id": "FL1002", "origin": "Lisbon", "destination": "Oslo", "date": "2025-03-14",
     "departure": "07:00", "arrival": "11:30", "airline": "Skyways", "price": 120.0, "seats": 4,
     "sells_out": True},
    {"id": "FL1003", "origin": "Lisbon", "destination": "Oslo", "date": "2025-03-14",
     "departure": "18:00", "arrival": "22:30", "airline": "Nordair", "price": 150.0, "seats": 1},
    {"id": "FL1004", "origin": "Lisbon", "destination": "Oslo", "date": "2025-03-15",
     "departure": "09:10", "arrival": "13:40", "airline": "Nordair", "price": 90.0, "seats": 5},
    {"id": "FL1005", "origin": "Oslo", "destination": "Lisbon", "date": "2025-03-14",
     "departure": "10:00", "arrival": "14:30", "airline": "Nordair", "price": 99.0, "seats": 0},
]  # fmt: skip
QUERY = {"origin": "Lisbon", "destination": "Oslo", "date": "2025-03-14"}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return create_flight_db(tmp_path / "flights.db", FLIGHTS)


@pytest.fixture
def service(db: Path) -> Iterator[FlightService]:
    with FlightService(db) as svc:
        yield svc


def episode_registry(service: FlightService, episode: str) -> ToolRegistry:
    tools = make_openapi_tools(
        service.openapi_spec(), base_url=service.base_url, headers={EPISODE_HEADER: episode}
    )
    return ToolRegistry(tools)


def call(registry: ToolRegistry, tool_name: str, /, **arguments):
    return registry.execute(ToolCall(id="c", name=tool_name, arguments=arguments))


def test_search_is_sorted_by_price_and_hides_full_flights(service: FlightService) -> None:
    registry = episode_registry(service, "ep-search")
    # Search a date without the planted flight first: FL1004 is the only one.
    other_day = call(registry, "search_flights", **{**QUERY, "date": "2025-03-15"})
    assert other_day.success, other_day.error
    assert [f["id"] for f in other_day.result["flights"]] == ["FL1004"]
    result = call(registry, "search_flights", origin="lisbon", destination=" OSLO ",
                  date="2025-03-14").result  # fmt: skip
    assert [f["id"] for f in result["flights"]] == ["FL1002", "FL1003", "FL1001"]
    assert [f["price"] for f in result["flights"]] == [120.0, 150.0, 180.0]
    assert result["count"] == 3
    back = call(registry, "search_flights", origin="Oslo", destination="Lisbon", date="2025-03-14")
    assert back.result["flights"] == []  # FL1005 has no seats
    assert back.result["sold_out"] == [{"id": "FL1005", "seats": 0, "status": "sold out"}]


def test_full_booking_flow(service: FlightService, db: Path) -> None:
    registry = episode_registry(service, "ep-flow")
    assert call(registry, "search_flights", **QUERY).success
    booked = call(registry, "book_flight", flight_id="FL1003", passenger="Ada Lovelace")
    assert booked.success, booked.error
    booking = booked.result
    assert booking["status"] == "pending" and booking["price"] == 150.0
    assert booking["flight_id"] == "FL1003" and booking["passenger"] == "Ada Lovelace"
    confirmed = call(registry, "confirm_booking", booking_id=booking["booking_id"])
    assert confirmed.result["status"] == "confirmed"
    fetched = call(registry, "get_booking", booking_id=booking["booking_id"])
    assert fetched.result == {**booking, "status": "confirmed"}
    assert list_bookings(db, "ep-flow") == [fetched.result]
    # FL1003 had one seat: it is now full for this episode.
    after = call(registry, "search_flights", **QUERY).result
    assert "FL1003" not in [f["id"] for f in after["flights"]]
    assert {"id": "FL1003", "seats": 0, "status": "sold out"} in after["sold_out"]
    again = call(registry, "book_flight", flight_id="FL1003", passenger="Bob")
    assert not again.success and "HTTP 409" in again.error and "sold out" in again.error


def test_seats_decrease(service: FlightService) -> None:
    registry = episode_registry(service, "ep-seats")
    assert call(registry, "book_flight", flight_id="FL1001", passenger="A").success
    assert call(registry, "book_flight", flight_id="FL1001", passenger="B").success
    flights = call(registry, "search_flights", **QUERY).result["flights"]
    assert next(f for f in flights if f["id"] == "FL1001")["seats"] == 1


def test_planted_sell_out(service: FlightService, db: Path) -> None:
    registry = episode_registry(service, "ep-planted")
    first = call(registry, "search_flights", **QUERY).result
    cheapest = first["flights"][0]
    assert cheapest["id"] == "FL1002" and cheapest["seats"] == 4  # shown as available...
    failed = call(registry, "book_flight", flight_id="FL1002", passenger="Ada")
    assert not failed.success
    assert failed.error == "HTTP 409: flight FL1002 sold out"  # ...but gone when booked
    second = call(registry, "search_flights", **QUERY).result
    assert [f["id"] for f in second["flights"]] == ["FL1003", "FL1001"]
    assert {"id": "FL1002", "seats": 0, "status": "sold out"} in second["sold_out"]
    replanned = call(registry, "book_flight", flight_id="FL1003", passenger="Ada")
    assert replanned.success
    assert [b["flight_id"] for b in list_bookings(db, "ep-planted")] == ["FL1003"]
    # Booking the planted flight without searching first works: nobody bought it yet.
    direct = episode_registry(service, "ep-direct")
    assert call(direct, "book_flight", flight_id="FL1002", passenger="Bob").success


def test_episodes_are_isolated(service: FlightService, db: Path) -> None:
    one, two = episode_registry(service, "ep-1"), episode_registry(service, "ep-2")
    booking = call(one, "book_flight", flight_id="FL1003", passenger="Ada").result
    # FL1003's last seat is gone in episode 1 only.
    assert "FL1003" in [f["id"] for f in call(two, "search_flights", **QUERY).result["flights"]]
    missing = call(two, "get_booking", booking_id=booking["booking_id"])
    assert not missing.success and "HTTP 404" in missing.error
    assert call(two, "book_flight", flight_id="FL1003", passenger="Bob").success
    assert [b["passenger"] for b in list_bookings(db, "ep-1")] == ["Ada"]
    assert [b["passenger"] for b in list_bookings(db, "ep-2")] == ["Bob"]
    assert list_bookings(db, "ep-3") == []
    reset_episode(db, "ep-1")
    assert list_bookings(db, "ep-1") == []
    assert "FL1003" in [f["id"] for f in call(one, "search_flights", **QUERY).result["flights"]]


def test_booking_ids_do_not_depend_on_other_episodes(service: FlightService) -> None:
    # A batch's episodes book concurrently: each one's ids must be what it would get alone.
    first, second = episode_registry(service, "ep-a"), episode_registry(service, "ep-b")
    a1 = call(first, "book_flight", flight_id="FL1004", passenger="Ada").result
    b1 = call(second, "book_flight", flight_id="FL1004", passenger="Bob").result
    a2 = call(first, "book_flight", flight_id="FL1001", passenger="Ada").result
    assert [a1["booking_id"], b1["booking_id"], a2["booking_id"]] == [
        "BK000001", "BK000001", "BK000002"
    ]  # fmt: skip
    assert call(second, "get_booking", booking_id="BK000001").result["passenger"] == "Bob"
    assert call(first, "get_booking", booking_id="BK000001").result["passenger"] == "Ada"


def test_bookings_persist_across_restarts(db: Path) -> None:
    with FlightService(db) as svc:
        booking = call(episode_registry(svc, "ep-p"), "book_flight", flight_id="FL1001",
                       passenger="Ada").result  # fmt: skip
    with FlightService(db) as svc:
        again = call(episode_registry(svc, "ep-p"), "get_booking", booking_id=booking["booking_id"])
        assert again.success and again.result == booking
    assert list_bookings(db, "ep-p") == [booking]


def test_raw_http_errors(service: FlightService) -> None:
    url = service.base_url
    assert httpx.post(f"{url}/bookings", content=b"not json").status_code == 422
    assert httpx.post(f"{url}/bookings", json=["FL1001"]).status_code == 422
    assert httpx.post(f"{url}/bookings", json={"flight_id": "FL1001"}).status_code == 422
    long_name = {"flight_id": "FL1001", "passenger": "x" * 500}
    assert httpx.post(f"{url}/bookings", json=long_name).status_code == 422
    unknown = httpx.post(f"{url}/bookings", json={"flight_id": "FL9999", "passenger": "A"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "flight FL9999 not found"
    missing = httpx.get(f"{url}/flights", params={"origin": "Lisbon"})
    assert missing.status_code == 422 and "destination" in missing.json()["error"]
    bad_date = httpx.get(f"{url}/flights", params={**QUERY, "date": "14/03/2025"})
    assert bad_date.status_code == 422 and "YYYY-MM-DD" in bad_date.json()["error"]
    bad_episode = httpx.get(f"{url}/flights", params=QUERY, headers={EPISODE_HEADER: "a b/c"})
    assert bad_episode.status_code == 400
    assert httpx.get(f"{url}/bookings/BK999999").status_code == 404
    assert httpx.delete(f"{url}/bookings/BK000001").status_code == 405
    created = httpx.post(f"{url}/bookings", json={"flight_id": "FL1001", "passenger": "A"})
    assert created.status_code == 201


def test_spec_operations_and_write(service: FlightService, tmp_path: Path) -> None:
    spec = service.openapi_spec()
    assert spec["openapi"].startswith("3.0")
    assert spec["servers"] == [{"url": service.base_url}]
    operation_ids = {op["operationId"] for item in spec["paths"].values() for op in item.values()}
    assert operation_ids == {"search_flights", "book_flight", "confirm_booking", "get_booking"}
    path = service.write_spec(tmp_path / "flights.json")
    tools = {t.name: t for t in make_openapi_tools(path, headers={EPISODE_HEADER: "w"})}
    assert set(tools) == operation_ids
    book = tools["book_flight"].parameters
    assert book["required"] == ["flight_id", "passenger"]
    assert "description" in book["properties"]["passenger"]
    assert set(tools["search_flights"].parameters["required"]) == {"origin", "destination", "date"}
    assert tools["search_flights"](**QUERY)["count"] == 3
    assert json.loads(path.read_text())["info"]["title"]


def test_create_flight_db_validates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        create_flight_db(tmp_path / "a.db", [FLIGHTS[0], FLIGHTS[0]])
    with pytest.raises(ValueError, match="HH:MM"):
        create_flight_db(tmp_path / "b.db", [{**FLIGHTS[0], "departure": "9am"}])
    with pytest.raises(ValueError, match="missing"):
        create_flight_db(tmp_path / "c.db", [{"id": "FL1"}])
    with pytest.raises(ValueError):
        create_flight_db(tmp_path / "d.db", [{**FLIGHTS[0], "date": "2025-13-40"}])
    # Recreating replaces the old state.
    path = create_flight_db(tmp_path / "e.db", FLIGHTS)
    with FlightService(path) as svc:
        call(episode_registry(svc, "x"), "book_flight", flight_id="FL1001", passenger="A")
    create_flight_db(path, FLIGHTS)
    assert list_bookings(path, "x") == []


def test_service_stops_cleanly(db: Path) -> None:
    svc = FlightService(db)
    url = svc.start()
    assert httpx.get(f"{url}/flights", params=QUERY).status_code == 200
    svc.stop()
    svc.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/flights", params=QUERY, timeout=2)
    with pytest.raises(FileNotFoundError):
        FlightService(db.parent / "missing.db").start()


def test_a_database_from_an_older_version_or_not_a_database_fails_clearly(tmp_path: Path) -> None:
    old = create_flight_db(tmp_path / "old.db", FLIGHTS)
    con = sqlite3.connect(old)
    con.executescript(
        "DROP TABLE bookings; CREATE TABLE bookings (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " booking_id TEXT UNIQUE, episode_id TEXT NOT NULL, flight_id TEXT NOT NULL,"
        " passenger TEXT NOT NULL, status TEXT NOT NULL, price REAL NOT NULL);"
    )  # the schema before booking ids were numbered per episode
    con.close()
    with pytest.raises(ValueError, match="not built by this version"):
        FlightService(old).start()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a flight database"):
        FlightService(junk).start()
