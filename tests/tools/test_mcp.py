"""The MCP bridge: a stdio test server, an in-process server, and a registry served over MCP."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp.server.mcpserver import MCPServer

from tooltune.registry import ToolError, ToolRegistry, tool
from tooltune.tools.mcp_bridge import MCPBridge, load_mcp_tools, registry_server
from tooltune.types import ToolCall

FIXTURES = Path(__file__).parent / "fixtures"
SRC = Path(__file__).resolve().parents[2] / "src"


def run(registry: ToolRegistry, tool_name: str, /, **arguments):
    return registry.execute(ToolCall(id="1", name=tool_name, arguments=arguments))


@pytest.fixture(scope="module")
def demo() -> Iterator[MCPBridge]:
    command = [sys.executable, str(FIXTURES / "mcp_demo_server.py")]
    with MCPBridge(command, timeout=2.0) as bridge:
        yield bridge


def test_lists_the_server_tools(demo: MCPBridge) -> None:
    names = {t.name: t for t in demo.tools}
    assert set(names) == {"add", "describe_city", "fail", "slow", "shout", "crash"}
    add = names["add"]
    assert add.description == "Add two integers."
    assert add.parameters["required"] == ["a", "b"]
    assert add.parameters["properties"]["a"]["type"] == "integer"
    assert add.metadata["mcp_name"] == "add"


def test_calls_through_the_registry(demo: MCPBridge) -> None:
    registry = ToolRegistry([t for t in demo.tools if t.name != "crash"])
    assert run(registry, "add", a=2, b=40).result == 42
    city = run(registry, "describe_city", name="oslo")
    assert city.result == {"city": "Oslo", "country": "unknown", "letters": 4}
    # The server printing to stdout does not corrupt the protocol.
    assert run(registry, "shout", text="hi").result == "HI"
    assert run(registry, "add", a=1, b=1).result == 2


def test_errors(demo: MCPBridge) -> None:
    registry = ToolRegistry([t for t in demo.tools if t.name != "crash"])
    failed = run(registry, "fail", message="boom")
    assert not failed.success and "fail" in failed.error
    wrong = run(registry, "add", a="two", b=1)
    assert not wrong.success and "integer" in wrong.error
    with pytest.raises(ToolError, match="Unknown tool"):
        demo.call("no_such_tool", {})


def test_timeout_then_recovers(demo: MCPBridge) -> None:
    started = time.perf_counter()
    with pytest.raises(ToolError, match="timed out"):
        demo.call("slow", {"seconds": 8})
    assert time.perf_counter() - started < 5
    assert demo.call("add", {"a": 1, "b": 2}) == 3


def test_crash_is_reported_and_close_is_clean() -> None:
    command = [sys.executable, str(FIXTURES / "mcp_demo_server.py")]
    bridge = MCPBridge(command, timeout=5, prefix="demo_")
    tools = {t.name: t for t in bridge.tools}
    assert "demo_add" in tools
    assert tools["demo_add"](a=1, b=2) == 3
    with pytest.raises(ToolError, match="Connection closed"):
        tools["demo_crash"]()
    with pytest.raises(ToolError):
        tools["demo_add"](a=1, b=2)
    bridge.close()
    with pytest.raises(ToolError, match="not connected"):
        tools["demo_add"](a=1, b=2)


def test_startup_failures_are_clear() -> None:
    with pytest.raises(RuntimeError, match="No such file"):
        MCPBridge(["/nonexistent/mcp-server"], connect_timeout=10)
    script = "import sys; print('missing API key', file=sys.stderr); sys.exit(2)"
    with pytest.raises(RuntimeError, match="missing API key"):
        MCPBridge([sys.executable, "-c", script], connect_timeout=10)
    with pytest.raises(ValueError):
        MCPBridge([])
    with pytest.raises(TypeError):
        MCPBridge("python server.py")  # type: ignore[arg-type]


def test_in_process_server() -> None:
    server = MCPServer("inproc")

    @server.tool()
    def greet(name: str) -> str:
        """Greet someone."""
        return f"hello {name}"

    tools = load_mcp_tools(server, timeout=5)
    registry = ToolRegistry(tools)
    assert run(registry, "greet", name="Ada").result == "hello Ada"
    assert not run(registry, "greet").success


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers.

    Args:
        a: First factor.
        b: Second factor.
    """
    return a * b


@tool
def refuse(reason: str) -> str:
    """Always refuse.

    Args:
        reason: Why.
    """
    raise ToolError(f"refused: {reason}")


def test_registry_server_in_process() -> None:
    server = registry_server(ToolRegistry([multiply, refuse]), name="reg")
    with MCPBridge(server, timeout=5) as bridge:
        tools = {t.name: t for t in bridge.tools}
        assert tools["multiply"].description == "Multiply two numbers."
        assert tools["multiply"].parameters["properties"]["a"]["description"] == "First factor."
        assert tools["multiply"](a=3, b=2.5) == 7.5
        with pytest.raises(ToolError, match="refused: no"):
            tools["refuse"](reason="no")
        with pytest.raises(ToolError, match="missing required argument"):
            bridge.call("multiply", {"a": 1})


def test_serve_registry_over_stdio() -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(FIXTURES / "mcp_registry_server.py")]
    with MCPBridge(command, env=env, timeout=10) as bridge:
        registry = ToolRegistry(bridge.tools)
        assert registry.names == ["multiply", "lookup"]
        assert run(registry, "multiply", a=6, b=7).result == 42
        assert run(registry, "lookup", key="oslo").result == {
            "country": "Norway",
            "population": 709000,
        }
        missing = run(registry, "lookup", key="bergen")
        assert not missing.success and missing.error == "no entry for 'bergen'"
