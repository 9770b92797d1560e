"""OpenAPI tools against a small pet-store service described by a YAML spec (fixtures/)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tooltune.registry import ToolError, ToolRegistry
from tooltune.tools.openapi import _AllowList, load_spec, make_openapi_tools, resolve_refs
from tooltune.tools.server import LocalServer
from tooltune.types import ToolCall

SPEC = Path(__file__).parent / "fixtures" / "petstore.yaml"


def pet_app() -> Starlette:
    pets = {1: {"id": 1, "name": "Tom", "species": "cat", "age": 3, "tags": []}}

    async def list_pets(request: Request) -> JSONResponse:
        species = request.query_params.get("species")
        limit = int(request.query_params.get("limit", 50))
        found = [p for p in pets.values() if species in (None, p["species"])]
        return JSONResponse(found[:limit])

    async def add_pet(request: Request) -> JSONResponse:
        body = await request.json()
        pet = {"id": max(pets) + 1, **body, "tags": []}
        pets[pet["id"]] = pet
        return JSONResponse(pet, status_code=201)

    async def get_pet(request: Request) -> JSONResponse:
        pet = pets.get(int(request.path_params["pet_id"]))
        if pet is None:
            return JSONResponse({"detail": "no such pet"}, status_code=404)
        return JSONResponse({**pet, "trace": request.headers.get("x-trace"),
                             "episode": request.headers.get("x-episode-id")})  # fmt: skip

    async def delete_pet(request: Request) -> Response:
        pets.pop(int(request.path_params["pet_id"]), None)
        return Response(status_code=204)

    async def set_tags(request: Request) -> JSONResponse:
        pet = pets[int(request.path_params["pet_id"])]
        pet["tags"] = await request.json()
        return JSONResponse(pet)

    async def tree(request: Request) -> JSONResponse:
        return JSONResponse({"node": request.query_params.get("node")})

    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(2)
        return JSONResponse({"ok": True})

    async def moved(request: Request) -> Response:
        return RedirectResponse("/pets?species=cat", status_code=302)

    async def leave(request: Request) -> Response:
        return RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=302)

    async def big(request: Request) -> Response:
        return PlainTextResponse("x" * 2_000_000)

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"raw_path": request.scope["raw_path"].decode()})

    async def text(request: Request) -> Response:
        return PlainTextResponse("hello")

    return Starlette(
        routes=[
            Route("/pets", list_pets, methods=["GET"]),
            Route("/pets", add_pet, methods=["POST"]),
            Route("/pets/{pet_id}", get_pet, methods=["GET"]),
            Route("/pets/{pet_id}", delete_pet, methods=["DELETE"]),
            Route("/pets/{pet_id}/tags", set_tags, methods=["PUT"]),
            Route("/tree", tree),
            Route("/slow", slow),
            Route("/moved", moved),
            Route("/leave", leave),
            Route("/big", big),
            Route("/echo/{value:path}", echo),
            Route("/text", text),
        ]
    )


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with LocalServer(pet_app()) as server:
        yield server.base_url


@pytest.fixture
def tools(base_url: str) -> dict:
    defs = make_openapi_tools(SPEC, base_url=base_url, headers={"X-Episode-Id": "ep7"}, timeout=1)
    return {t.name: t for t in defs}


@pytest.fixture
def registry(tools: dict) -> ToolRegistry:
    return ToolRegistry(list(tools.values()))


def run(registry: ToolRegistry, tool_name: str, /, **arguments):
    return registry.execute(ToolCall(id="1", name=tool_name, arguments=arguments))


def test_one_tool_per_operation(tools: dict) -> None:
    assert set(tools) == {
        "list_pets", "add_pet", "get_pet", "delete_pets_pet_id", "set_tags", "get_tree", "slow",
        "moved", "leave", "big", "text", "echo_path",
    }  # fmt: skip
    assert tools["list_pets"].description == "List pets, optionally by species."
    assert tools["delete_pets_pet_id"].metadata == {
        "method": "DELETE",
        "path": "/pets/{pet_id}",
        "base_url": tools["list_pets"].metadata["base_url"],
    }


def test_schemas_merge_parameters_and_body(tools: dict) -> None:
    listing = tools["list_pets"].parameters
    assert listing["required"] == []
    assert listing["properties"]["limit"] == {
        "type": "integer", "minimum": 1, "maximum": 50, "description": "At most this many pets.",
    }  # fmt: skip
    add = tools["add_pet"].parameters
    assert set(add["properties"]) == {"name", "species", "age"}
    assert add["required"] == ["name", "species"]
    assert add["properties"]["age"]["type"] == ["integer", "null"]  # nullable
    get = tools["get_pet"].parameters
    assert get["required"] == ["pet_id"]  # path-level parameter
    assert "X-Trace" in get["properties"]
    tags = tools["set_tags"].parameters
    assert tags["properties"]["body"] == {"type": "array", "items": {"type": "string"}}
    assert set(tags["required"]) == {"pet_id", "body"}
    tree = tools["get_tree"].parameters["properties"]["node"]
    assert "recursive" in tree["properties"]["child"]["description"]


def test_calls(registry: ToolRegistry) -> None:
    added = run(registry, "add_pet", name="Rex", species="dog", age=None)
    assert added.success, added.error
    assert added.result["name"] == "Rex"
    pet_id = added.result["id"]
    dogs = run(registry, "list_pets", species="dog")
    assert [p["name"] for p in dogs.result] == ["Rex"]
    assert len(run(registry, "list_pets", limit=1).result) == 1
    got = run(registry, "get_pet", pet_id=pet_id, **{"X-Trace": "t-1"})
    assert got.result["trace"] == "t-1" and got.result["episode"] == "ep7"
    tagged = run(registry, "set_tags", pet_id=pet_id, body=["good", "loud"])
    assert tagged.result["tags"] == ["good", "loud"]
    deleted = run(registry, "delete_pets_pet_id", pet_id=pet_id)
    assert deleted.success and deleted.result == {"status": 204}
    assert run(registry, "text").result == "hello"


def test_http_errors_carry_the_service_message(registry: ToolRegistry) -> None:
    missing = run(registry, "get_pet", pet_id=999)
    assert not missing.success and missing.error == "HTTP 404: no such pet"


def test_argument_validation(tools: dict, registry: ToolRegistry) -> None:
    bad = run(registry, "list_pets", species="fish")
    assert not bad.success and "must be one of" in bad.error
    too_many = run(registry, "list_pets", limit=500)
    assert not too_many.success
    # Direct calls (bypassing the registry) are validated too.
    with pytest.raises(ToolError, match="missing required argument 'species'"):
        tools["add_pet"](name="Rex")
    with pytest.raises(ToolError, match="unknown argument"):
        tools["list_pets"](url="http://evil.example/")


def test_fixed_headers_cannot_be_overridden(tools: dict) -> None:
    for definition in tools.values():
        assert "X-Episode-Id" not in definition.parameters["properties"]


def test_redirects(registry: ToolRegistry) -> None:
    inside = run(registry, "moved")
    assert inside.success and [p["species"] for p in inside.result] == ["cat"]
    outside = run(registry, "leave")
    assert not outside.success
    assert "refused" in outside.error and "169.254.169.254" in outside.error


def test_timeout_and_size_limits(registry: ToolRegistry) -> None:
    slow = run(registry, "slow")
    assert not slow.success and "timed out" in slow.error
    big = run(registry, "big")
    assert not big.success and "larger than" in big.error


def test_path_arguments_are_escaped(tools: dict) -> None:
    with pytest.raises(ToolError, match="valid path segment"):
        tools["echo_path"](value="..")
    # Slashes, '?' and '#' stay inside the one path segment, percent-encoded.
    echoed = tools["echo_path"](value="a/../b?c=1#d")
    assert echoed == {"raw_path": "/echo/a%2F..%2Fb%3Fc%3D1%23d"}
    with pytest.raises(ToolError, match="line break"):
        tools["get_pet"](pet_id=1, **{"X-Trace": "a\r\nX-Episode-Id: other"})


def test_spec_sources(base_url: str, tmp_path: Path) -> None:
    doc = yaml.safe_load(SPEC.read_text())
    as_json = tmp_path / "spec.json"
    as_json.write_text(json.dumps(doc))
    for source in (doc, str(SPEC), as_json, json.dumps(doc, indent=1), SPEC.read_text()):
        names = [t.name for t in make_openapi_tools(source, base_url=base_url)]
        assert "list_pets" in names and len(names) == 12
    # The default base URL is the spec's first server.
    default = make_openapi_tools(doc)[0]
    assert default.metadata["base_url"] == "http://127.0.0.1:1"


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="OpenAPI"):
        load_spec({"swagger": "2.0", "paths": {}})
    with pytest.raises(ValueError, match="local"):
        resolve_refs({"$ref": "http://example.com/schema.json"}, {})
    with pytest.raises(ValueError, match="unresolvable"):
        resolve_refs({"$ref": "#/components/schemas/Nope"}, {"components": {}})
    doc = yaml.safe_load(SPEC.read_text())
    del doc["servers"]
    with pytest.raises(ValueError, match="base_url"):
        make_openapi_tools(doc)
    with pytest.raises(ValueError, match="allowed_base_urls"):
        make_openapi_tools(
            doc, base_url="http://127.0.0.1:5", allowed_base_urls=["http://127.0.0.1:6"]
        )


def test_allow_list_semantics() -> None:
    allow = _AllowList(["http://api.local/v1"])
    assert allow.allows("http://api.local/v1")
    assert allow.allows("http://API.local:80/v1/pets?x=1")
    for url in (
        "http://api.local/v1x",
        "http://api.local/v2/pets",
        "https://api.local/v1/pets",
        "http://api.local:8080/v1/pets",
        "http://user@api.local/v1/pets",
        "http://api.local.evil.com/v1/pets",
        "ftp://api.local/v1/pets",
    ):
        assert not allow.allows(url), url


def test_unreachable_service(tools: dict) -> None:
    doc = yaml.safe_load(SPEC.read_text())
    dead = {t.name: t for t in make_openapi_tools(doc, timeout=1)}  # server url: port 1
    with pytest.raises(ToolError, match="failed: ConnectError"):
        dead["text"]()
