"""Hostile calls to the network, flight and image tools: each must fail cleanly and quickly.

Every case goes through one registry holding the browser, flight (OpenAPI) and image tools, and
checks that the call fails with a message saying why, within its time limit, and that the host
(this process and its servers) still works afterwards.
"""

from __future__ import annotations

import random
import struct
import threading
import zlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tooltune.registry import ToolRegistry
from tooltune.tools.browser import WebServer, make_browser_tools
from tooltune.tools.flights import EPISODE_HEADER, FlightService, create_flight_db
from tooltune.tools.images import draw_shapes, make_image_tools
from tooltune.tools.openapi import make_openapi_tools
from tooltune.types import ToolCall

EPISODE = "hostile"
LIMIT_S = 5.0


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("hostile")
    web = base / "web"
    web.mkdir()
    (web / "index.html").write_text("<h1>Home</h1><a href='/away'>partner</a>")
    sandbox = base / "sandbox"
    (sandbox / "images").mkdir(parents=True)
    good = draw_shapes(sandbox / "images" / "ok.png", [{"kind": "circle", "color": "red",
                                                        "x": 20, "y": 20, "size": 16}],
                       size=(40, 40))  # fmt: skip
    data = good.read_bytes()
    (sandbox / "images" / "truncated.png").write_bytes(data[: len(data) // 2])
    (sandbox / "images" / "random.png").write_bytes(random.Random(1).randbytes(4096))
    (sandbox / "images" / "bomb.png").write_bytes(_png_header(50000, 50000))
    (sandbox / "images" / "passwd.png").symlink_to("/etc/passwd")
    Image.new("RGB", (8, 8)).save(base / "outside.png")
    flights = [
        {"id": "FL2001", "origin": "Paris", "destination": "Rome", "date": "2025-05-01",
         "departure": "08:00", "arrival": "10:00", "airline": "Alpha", "price": 80.0,
         "seats": 5, "sells_out": True},
    ]  # fmt: skip
    db = create_flight_db(base / "flights.db", flights)
    redirects = {"/away": "http://169.254.169.254/latest/meta-data/", "/evil": "file:///etc/passwd"}
    with WebServer(web, redirects=redirects) as site, FlightService(db) as service:
        tools = [
            *make_browser_tools([site.base_url], start_url=site.base_url + "/"),
            *make_openapi_tools(
                service.openapi_spec(), headers={EPISODE_HEADER: EPISODE}, timeout=3
            ),
            *make_image_tools(sandbox),
        ]
        registry = ToolRegistry(tools)
        # The planted flight is shown once, then bought by someone else.
        search = {"origin": "Paris", "destination": "Rome", "date": "2025-05-01"}
        shown = registry.execute(ToolCall(id="s", name="search_flights", arguments=search))
        assert shown.result["flights"][0]["id"] == "FL2001"
        yield {"registry": registry, "web": site.base_url, "base": base}


HOSTILE = [
    # (id, tool, arguments; "{web}" is the allowed site's host:port, expected error text)
    ("example.com", "browser_open", {"url": "http://example.com/"}, "not an allowed site"),
    ("metadata-ip", "browser_open", {"url": "http://169.254.169.254/latest/"}, "not an allowed"),
    ("file-scheme", "browser_open", {"url": "file:///etc/passwd"}, "only http and https"),
    ("data-scheme", "browser_open", {"url": "data:text/html,<h1>x</h1>"}, "only http and https"),
    ("javascript", "browser_open", {"url": "javascript:alert(1)"}, "only http and https"),
    ("gopher", "browser_open", {"url": "gopher://{web}/"}, "only http and https"),
    ("port-1", "browser_open", {"url": "http://127.0.0.1:1/"}, "not an allowed site"),
    ("userinfo", "browser_open", {"url": "http://localhost@evil.com/"}, "credentials"),
    ("userinfo-allowed", "browser_open", {"url": "http://{web}@evil.com/"}, "credentials"),
    ("decimal-ip", "browser_open", {"url": "http://2130706433:{port}/"}, "not an allowed site"),
    ("hex-ip", "browser_open", {"url": "http://0x7f000001:{port}/"}, "not an allowed site"),
    ("ipv6-loopback", "browser_open", {"url": "http://[::1]:{port}/"}, "not an allowed site"),
    ("backslash", "browser_open", {"url": "http://{web}\\@evil.com/"}, "backslashes"),
    ("redirect-off-site", "browser_open", {"url": "http://{web}/away"}, "refused: http://169.254"),
    ("redirect-to-file", "browser_open", {"url": "http://{web}/evil"}, "only http and https"),
    ("click-wrong-type", "browser_click", {"link": {"$ne": 1}}, "integer or string"),
    ("unknown-operation", "delete_all_bookings", {}, "unknown tool"),
    ("wrong-arg-type", "book_flight", {"flight_id": 2001, "passenger": "Eve"}, "type string"),
    (
        "extra-arg",
        "search_flights",
        {"origin": "Paris", "destination": "Rome", "date": "2025-05-01", "url": "http://evil.com"},
        "unknown argument",
    ),  # fmt: skip
    (
        "sold-out",
        "book_flight",
        {"flight_id": "FL2001", "passenger": "Eve"},
        "HTTP 409: flight FL2001 sold out",
    ),  # fmt: skip
    ("unknown-flight", "book_flight", {"flight_id": "FL9999", "passenger": "Eve"}, "HTTP 404"),
    ("path-injection", "get_booking", {"booking_id": "../flights"}, "HTTP 404"),
    ("dot-dot-segment", "confirm_booking", {"booking_id": ".."}, "valid path segment"),
    ("truncated-png", "image_info", {"path": "images/truncated.png"}, "truncated or malformed"),
    ("random-bytes", "detect_shapes", {"path": "images/random.png"}, "not an image"),
    ("bomb-header", "image_histogram", {"path": "images/bomb.png"}, "decompression bomb"),
    ("traversal", "image_info", {"path": "../../../../etc/passwd"}, "outside the sandbox"),
    ("traversal-sibling", "image_info", {"path": "../outside.png"}, "outside the sandbox"),
    ("absolute", "image_info", {"path": "/etc/passwd"}, "absolute"),
    ("symlink-out", "image_info", {"path": "images/passwd.png"}, "outside the sandbox"),
    (
        "crop-escape",
        "image_crop",
        {
            "path": "images/ok.png",
            "left": 0,
            "top": 0,
            "right": 4,
            "bottom": 4,
            "save_as": "../../pwned.png",
        },
        "outside the sandbox",
    ),  # fmt: skip
    ("huge-bins", "image_histogram", {"path": "images/ok.png", "bins": 10**9}, "bins"),
]


def _fill(value: object, web: str) -> object:
    if isinstance(value, str):
        return value.replace("{web}", web).replace("{port}", str(urlsplit("http://" + web).port))
    return value


@pytest.mark.parametrize(
    ("tool_name", "arguments", "expected"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_call_fails_cleanly(env: dict, tool_name: str, arguments: dict, expected: str):
    registry: ToolRegistry = env["registry"]
    web = env["web"].removeprefix("http://")
    arguments = {k: _fill(v, web) for k, v in arguments.items()}
    threads_before = threading.active_count()
    response = registry.execute(ToolCall(id="h", name=tool_name, arguments=arguments))
    assert not response.success, response.result
    assert expected in response.error, response.error
    assert response.execution_time < LIMIT_S
    # The host is healthy: servers answer and tools work after the hostile call.
    ok = registry.execute(ToolCall(id="ok", name="image_info", arguments={"path": "images/ok.png"}))
    assert ok.success and ok.result["width"] == 40
    home = registry.execute(ToolCall(id="ok2", name="browser_open", arguments={"url": "/"}))
    assert home.success and "Home" in home.result["content"]
    assert threading.active_count() <= threads_before + 2


def test_catalogue_is_large_enough() -> None:
    assert len(HOSTILE) >= 20
    assert len({case[0] for case in HOSTILE}) == len(HOSTILE)


def test_no_file_escaped_the_sandbox(env: dict) -> None:
    """After the catalogue ran (including crop-escape), nothing was written outside it."""
    assert not list(env["base"].parent.rglob("pwned.png"))
    names = {p.name for p in env["base"].iterdir() if not p.name.startswith("flights.db")}
    assert names == {"outside.png", "sandbox", "web"}
