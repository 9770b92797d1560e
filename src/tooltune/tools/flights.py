"""A stateful flight-booking HTTP service over SQLite, for the OpenAPI tool family.

The model books flights by calling a real HTTP API (through `tooltune.tools.openapi`), so the
service behaves like one: status codes, JSON errors, state that changes between calls. Each
episode (header `X-Episode-Id`) sees its own copy of the seat counts and its own bookings, so the
parallel GRPO samples of one task never interfere. Flights with `sells_out` are a planted failure:
the first search of an episode that shows such a flight is followed by someone else buying its
last seat, so booking it fails with 409 and the model has to search again and re-plan.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from datetime import date as _date
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tooltune.tools.server import LocalServer

EPISODE_HEADER = "X-Episode-Id"
DEFAULT_EPISODE = "default"
_FLIGHT_ID = re.compile(r"^[A-Z]{2}\d{1,5}$")
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_EPISODE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_MAX_PASSENGER = 100

_SCHEMA = """
CREATE TABLE flights (
    id TEXT PRIMARY KEY, origin TEXT NOT NULL, destination TEXT NOT NULL, date TEXT NOT NULL,
    departure TEXT NOT NULL, arrival TEXT NOT NULL, airline TEXT NOT NULL, price REAL NOT NULL,
    seats INTEGER NOT NULL, sells_out INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE episode_seats (
    episode_id TEXT NOT NULL, flight_id TEXT NOT NULL, seats INTEGER NOT NULL,
    PRIMARY KEY (episode_id, flight_id)
);
CREATE TABLE bookings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, booking_id TEXT NOT NULL, episode_id TEXT NOT NULL,
    flight_id TEXT NOT NULL, passenger TEXT NOT NULL, status TEXT NOT NULL, price REAL NOT NULL,
    UNIQUE (episode_id, booking_id)
);
"""


def _validate_flight(f: dict) -> dict:
    required = ("id", "origin", "destination", "date", "departure", "arrival", "airline", "price")
    missing = [k for k in required if k not in f]
    if missing:
        raise ValueError(f"flight {f.get('id', '?')} is missing {missing}")
    if not _FLIGHT_ID.match(str(f["id"])):
        raise ValueError(f"flight id {f['id']!r} must look like 'FL1042'")
    _date.fromisoformat(f["date"])
    for key in ("departure", "arrival"):
        if not _TIME.match(f[key]):
            raise ValueError(f"flight {f['id']}: {key} must be HH:MM, got {f[key]!r}")
    seats = int(f.get("seats", 1))
    if seats < 0 or float(f["price"]) < 0:
        raise ValueError(f"flight {f['id']}: seats and price must be non-negative")
    return {
        "id": f["id"],
        "origin": f["origin"],
        "destination": f["destination"],
        "date": f["date"],
        "departure": f["departure"],
        "arrival": f["arrival"],
        "airline": f["airline"],
        "price": float(f["price"]),
        "seats": seats,
        "sells_out": int(bool(f.get("sells_out", False))),
    }


def create_flight_db(path: str | Path, flights: list[dict]) -> Path:
    """Write a fresh flight database (replacing any old one) holding `flights` as the base state."""
    path = Path(path)
    rows = [_validate_flight(f) for f in flights]
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("flight ids must be unique")
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    con = sqlite3.connect(path)
    try:
        con.executescript(_SCHEMA)
        con.executemany(
            "INSERT INTO flights VALUES (:id, :origin, :destination, :date, :departure, :arrival,"
            " :airline, :price, :seats, :sells_out)",
            rows,
        )
        con.commit()
    finally:
        con.close()
    return path


def list_bookings(db_path: str | Path, episode_id: str = DEFAULT_EPISODE) -> list[dict]:
    """Bookings made in one episode, oldest first: what task checkers read as the end state."""
    con = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute(
            "SELECT booking_id, flight_id, passenger, status, price FROM bookings"
            " WHERE episode_id = ? ORDER BY seq",
            (episode_id,),
        ).fetchall()
    finally:
        con.close()
    return [dict(r) for r in rows]


def reset_episode(db_path: str | Path, episode_id: str) -> None:
    """Forget an episode's bookings and seat changes, so an episode id can be reused."""
    con = sqlite3.connect(Path(db_path))
    try:
        con.execute("DELETE FROM bookings WHERE episode_id = ?", (episode_id,))
        con.execute("DELETE FROM episode_seats WHERE episode_id = ?", (episode_id,))
        con.commit()
    finally:
        con.close()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


class _FlightStore:
    """All SQL of the service. One connection, one lock: requests are tiny and serialised."""

    def __init__(self, db_path: Path):
        if not db_path.exists():
            raise FileNotFoundError(f"flight database {db_path} does not exist")
        self.con = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self.con.row_factory = sqlite3.Row
        try:
            (table,) = self.con.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'bookings'"
            ).fetchone() or (None,)
        except sqlite3.DatabaseError as exc:
            self.con.close()
            raise ValueError(f"{db_path} is not a flight database ({exc})") from None
        if table is None or "UNIQUE (episode_id, booking_id)" not in table:
            self.con.close()
            raise ValueError(
                f"{db_path} was not built by this version of tooltune (booking ids are now "
                "numbered per episode): build it again with create_flight_db"
            )
        self.con.execute("PRAGMA journal_mode=WAL")
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.con.close()

    def _seats(self, episode: str, flight_id: str, base: int) -> int:
        row = self.con.execute(
            "SELECT seats FROM episode_seats WHERE episode_id = ? AND flight_id = ?",
            (episode, flight_id),
        ).fetchone()
        return base if row is None else row["seats"]

    def _set_seats(self, episode: str, flight_id: str, seats: int) -> None:
        self.con.execute(
            "INSERT INTO episode_seats VALUES (?, ?, ?) ON CONFLICT (episode_id, flight_id)"
            " DO UPDATE SET seats = excluded.seats",
            (episode, flight_id, seats),
        )

    def search(self, episode: str, origin: str, destination: str, day: str) -> dict:
        with self.lock:
            rows = self.con.execute(
                "SELECT * FROM flights WHERE lower(origin) = lower(?)"
                " AND lower(destination) = lower(?) AND date = ?",
                (origin.strip(), destination.strip(), day),
            ).fetchall()
            available, sold_out, to_sell = [], [], []
            for r in rows:
                seats = self._seats(episode, r["id"], r["seats"])
                if seats <= 0:
                    sold_out.append({"id": r["id"], "seats": 0, "status": "sold out"})
                    continue
                available.append(
                    {
                        "id": r["id"],
                        "origin": r["origin"],
                        "destination": r["destination"],
                        "date": r["date"],
                        "departure": r["departure"],
                        "arrival": r["arrival"],
                        "airline": r["airline"],
                        "price": r["price"],
                        "seats": seats,
                    }
                )
                if r["sells_out"]:
                    to_sell.append(r["id"])
            # Someone else buys the planted flight's seats right after this search shows it.
            self.con.execute("BEGIN")
            for flight_id in to_sell:
                self._set_seats(episode, flight_id, 0)
            self.con.execute("COMMIT")
        available.sort(key=lambda f: (f["price"], f["departure"], f["id"]))
        sold_out.sort(key=lambda f: f["id"])
        return {"count": len(available), "flights": available, "sold_out": sold_out}

    def book(self, episode: str, flight_id: str, passenger: str) -> tuple[int, dict]:
        with self.lock:
            flight = self.con.execute("SELECT * FROM flights WHERE id = ?", (flight_id,)).fetchone()
            if flight is None:
                return 404, {"error": f"flight {flight_id} not found"}
            seats = self._seats(episode, flight_id, flight["seats"])
            if seats <= 0:
                return 409, {"error": f"flight {flight_id} sold out"}
            self.con.execute("BEGIN")
            self._set_seats(episode, flight_id, seats - 1)
            # Numbered within the episode, not the server: concurrent episodes (a batch's
            # tool calls run together) must not change each other's ids, or rollouts and
            # demonstrations stop being reproducible.
            (count,) = self.con.execute(
                "SELECT COUNT(*) FROM bookings WHERE episode_id = ?", (episode,)
            ).fetchone()
            booking_id = f"BK{count + 1:06d}"
            self.con.execute(
                "INSERT INTO bookings (booking_id, episode_id, flight_id, passenger, status, price)"
                " VALUES (?, ?, ?, ?, 'pending', ?)",
                (booking_id, episode, flight_id, passenger, flight["price"]),
            )
            self.con.execute("COMMIT")
        return 201, {
            "booking_id": booking_id,
            "flight_id": flight_id,
            "passenger": passenger,
            "status": "pending",
            "price": flight["price"],
        }

    def get(self, episode: str, booking_id: str) -> dict | None:
        with self.lock:
            row = self.con.execute(
                "SELECT booking_id, flight_id, passenger, status, price FROM bookings"
                " WHERE booking_id = ? AND episode_id = ?",
                (booking_id, episode),
            ).fetchone()
        return None if row is None else dict(row)

    def confirm(self, episode: str, booking_id: str) -> dict | None:
        with self.lock:
            self.con.execute(
                "UPDATE bookings SET status = 'confirmed' WHERE booking_id = ? AND episode_id = ?",
                (booking_id, episode),
            )
        return self.get(episode, booking_id)


def _episode(request: Request) -> str:
    episode = request.headers.get(EPISODE_HEADER, DEFAULT_EPISODE)
    if not _EPISODE.match(episode):
        raise HTTPException(400, f"bad {EPISODE_HEADER} header")
    return episode


def build_flight_app(db_path: str | Path) -> tuple[Starlette, _FlightStore]:
    """The Starlette app of the service and its store (closed by the caller)."""
    store = _FlightStore(Path(db_path))

    async def search_flights(request: Request) -> JSONResponse:
        episode = _episode(request)
        q = request.query_params
        missing = [k for k in ("origin", "destination", "date") if not q.get(k, "").strip()]
        if missing:
            return _error(422, f"missing query parameter(s): {', '.join(missing)}")
        try:
            day = _date.fromisoformat(q["date"]).isoformat()
        except ValueError:
            return _error(422, f"date must be YYYY-MM-DD, got {q['date']!r}")
        return JSONResponse(store.search(episode, q["origin"], q["destination"], day))

    async def book_flight(request: Request) -> JSONResponse:
        episode = _episode(request)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return _error(422, "request body must be a JSON object")
        if not isinstance(body, dict):
            return _error(422, "request body must be a JSON object")
        flight_id, passenger = body.get("flight_id"), body.get("passenger")
        if not isinstance(flight_id, str) or not flight_id.strip():
            return _error(422, "flight_id must be a non-empty string such as 'FL1042'")
        if not isinstance(passenger, str) or not passenger.strip():
            return _error(422, "passenger must be a non-empty string (the traveller's full name)")
        if len(passenger) > _MAX_PASSENGER:
            return _error(422, f"passenger name longer than {_MAX_PASSENGER} characters")
        status, payload = store.book(episode, flight_id.strip().upper(), passenger.strip())
        return JSONResponse(payload, status_code=status)

    async def get_booking(request: Request) -> JSONResponse:
        booking_id = request.path_params["booking_id"]
        found = store.get(_episode(request), booking_id)
        if found is None:
            return _error(404, f"booking {booking_id} not found")
        return JSONResponse(found)

    async def confirm_booking(request: Request) -> JSONResponse:
        booking_id = request.path_params["booking_id"]
        found = store.confirm(_episode(request), booking_id)
        if found is None:
            return _error(404, f"booking {booking_id} not found")
        return JSONResponse(found)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal error in the flight service")

    routes = [
        Route("/flights", search_flights, methods=["GET"]),
        Route("/bookings", book_flight, methods=["POST"]),
        Route("/bookings/{booking_id}", get_booking, methods=["GET"]),
        Route("/bookings/{booking_id}/confirm", confirm_booking, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error}
    )
    return app, store


def flight_openapi_spec(base_url: str | None = None) -> dict:
    """The OpenAPI 3.0 document of the service; descriptions are written for a model to read."""
    flight = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "Flight id to pass to book_flight."},
            "origin": {"type": "string"},
            "destination": {"type": "string"},
            "date": {"type": "string", "format": "date"},
            "departure": {"type": "string", "description": "Local departure time, HH:MM."},
            "arrival": {"type": "string", "description": "Local arrival time, HH:MM."},
            "airline": {"type": "string"},
            "price": {"type": "number", "description": "Ticket price in USD."},
            "seats": {"type": "integer", "description": "Seats still available."},
        },
    }
    booking = {
        "type": "object",
        "properties": {
            "booking_id": {"type": "string"},
            "flight_id": {"type": "string"},
            "passenger": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "confirmed"]},
            "price": {"type": "number"},
        },
    }
    error = {"type": "object", "properties": {"error": {"type": "string"}}}
    booking_id_param = {
        "name": "booking_id",
        "in": "path",
        "required": True,
        "description": "Booking id returned by book_flight, e.g. 'BK000001'.",
        "schema": {"type": "string"},
    }

    def err(text: str) -> dict:
        return {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }

    def ok(text: str, ref: str) -> dict:
        return {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
        }

    spec: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "Flight booking service",
            "version": "1.0.0",
            "description": "Search flights between cities, book a seat, then confirm the booking.",
        },
        "paths": {
            "/flights": {
                "get": {
                    "operationId": "search_flights",
                    "summary": "Find flights from one city to another on a date.",
                    "description": "Returns flights with free seats, cheapest first, and the ids of"
                    " matching flights that are sold out. Seat counts can change between searches.",
                    "parameters": [
                        {
                            "name": "origin",
                            "in": "query",
                            "required": True,
                            "description": "Departure city name, e.g. 'Lisbon'.",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "destination",
                            "in": "query",
                            "required": True,
                            "description": "Arrival city name, e.g. 'Oslo'.",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "date",
                            "in": "query",
                            "required": True,
                            "description": "Travel date as YYYY-MM-DD.",
                            "schema": {"type": "string", "format": "date"},
                        },
                    ],
                    "responses": {
                        "200": ok("Matching flights.", "SearchResult"),
                        "422": err("A parameter is missing or malformed."),
                    },
                }
            },
            "/bookings": {
                "post": {
                    "operationId": "book_flight",
                    "summary": "Reserve one seat on a flight for a passenger.",
                    "description": "Creates a booking with status 'pending'; it must then be"
                    " confirmed with confirm_booking. Fails with 409 if the flight is sold out.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/BookingRequest"}
                            }
                        },
                    },
                    "responses": {
                        "201": ok("The new pending booking.", "Booking"),
                        "404": err("No flight with this id."),
                        "409": err("The flight is sold out."),
                        "422": err("The request body is malformed."),
                    },
                }
            },
            "/bookings/{booking_id}": {
                "get": {
                    "operationId": "get_booking",
                    "summary": "Look up a booking and its status.",
                    "parameters": [booking_id_param],
                    "responses": {
                        "200": ok("The booking.", "Booking"),
                        "404": err("No booking with this id."),
                    },
                }
            },
            "/bookings/{booking_id}/confirm": {
                "post": {
                    "operationId": "confirm_booking",
                    "summary": "Confirm a pending booking.",
                    "description": "Sets the booking's status to 'confirmed'. Confirming twice is"
                    " harmless.",
                    "parameters": [booking_id_param],
                    "responses": {
                        "200": ok("The confirmed booking.", "Booking"),
                        "404": err("No booking with this id."),
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Flight": flight,
                "Booking": booking,
                "Error": error,
                "BookingRequest": {
                    "type": "object",
                    "required": ["flight_id", "passenger"],
                    "properties": {
                        "flight_id": {
                            "type": "string",
                            "description": "Id of the flight to book, from search_flights.",
                        },
                        "passenger": {
                            "type": "string",
                            "description": "Full name of the traveller.",
                        },
                    },
                },
                "SearchResult": {
                    "type": "object",
                    "properties": {
                        "count": {"type": "integer"},
                        "flights": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Flight"},
                        },
                        "sold_out": {"type": "array", "items": {"type": "object"}},
                    },
                },
            }
        },
    }
    if base_url:
        spec["servers"] = [{"url": base_url}]
    return spec


class FlightService:
    """The flight service on 127.0.0.1; `with FlightService(db) as svc: url = svc.base_url`."""

    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        self._server: LocalServer | None = None
        self._store: _FlightStore | None = None
        self.base_url: str | None = None

    def start(self) -> str:
        if self.base_url is not None:
            return self.base_url
        app, self._store = build_flight_app(self.db_path)
        self._server = LocalServer(app)
        try:
            self.base_url = self._server.start()
        except Exception:
            self.stop()
            raise
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._store is not None:
            self._store.close()
        self._server = self._store = None
        self.base_url = None

    def openapi_spec(self) -> dict:
        return flight_openapi_spec(self.base_url)

    def write_spec(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.openapi_spec(), indent=2))
        return path

    def __enter__(self) -> FlightService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
