import json
import os
import threading
import time
from typing import Literal

import pytest

from tooltune import AgentConfig, ToolCall, ToolDefinition, ToolError, ToolRegistry, tool
from tooltune import registry as registry_module
from tooltune.registry import ToolRegistryError


@tool
def lookup(
    city: str, field: Literal["population", "area"] = "population", limit: int | None = None
) -> dict:
    """Look up a fact about a city.

    Args:
        city: Name of the city, as written in the atlas.
        field: Which fact to return.
        limit (int): Maximum number of
            results to return.
    """
    if city == "Nowhere":
        raise ToolError("no city called Nowhere; check the spelling")
    return {"city": city, field: 42, "limit": limit}


def call(name, **arguments):
    return ToolCall(id="c1", name=name, arguments=arguments)


def test_schema_from_hints_and_docstring():
    assert lookup.name == "lookup"
    assert lookup.description == "Look up a fact about a city."
    props = lookup.parameters["properties"]
    assert props["city"] == {
        "type": "string",
        "description": "Name of the city, as written in the atlas.",
    }
    assert (
        props["field"]["enum"] == ["population", "area"]
        and props["field"]["default"] == "population"
    )
    assert props["field"]["type"] == "string"
    assert props["limit"]["type"] == ["integer", "null"]
    assert props["limit"]["description"] == "Maximum number of results to return."
    assert lookup.parameters["required"] == ["city"]
    assert lookup.parameters["additionalProperties"] is False
    assert lookup("Paris") == {"city": "Paris", "population": 42, "limit": None}  # still callable


def test_decorator_with_options_and_lists():
    @tool(name="add_all", timeout=2)
    def total(values: list[float], note: str = "") -> float:
        """Add numbers."""
        return sum(values)

    assert total.name == "add_all" and total.timeout == 2
    assert total.parameters["properties"]["values"] == {
        "type": "array",
        "items": {"type": "number"},
    }


def test_register_accepts_definitions_functions_and_seed_style():
    registry = ToolRegistry()
    registry.register(lookup)

    def shout(text: str) -> str:
        """Upper-case text."""
        return text.upper()

    registry.register(shout)
    registry.register(
        ToolDefinition(
            name="echo",
            description="Echo",
            parameters={"text": {"type": "string", "description": "Text"}},
            function=lambda text: text,
        )
    )
    assert registry.names == ["lookup", "shout", "echo"]
    assert registry.execute(call("shout", text="hi")).result == "HI"
    assert (
        registry.execute(call("echo")).error
        == "invalid arguments for echo: missing required argument 'text'"
    )
    with pytest.raises(ToolRegistryError, match="already registered"):
        registry.register(lookup)


def test_prompt_and_openai_formats():
    registry = ToolRegistry([lookup])
    text = registry.get_tools_prompt()
    assert text.startswith("Tool: lookup\nDescription: Look up a fact about a city.\nParameters:\n")
    assert "  - city: Name of the city, as written in the atlas. (string)" in text
    assert "(integer/null, optional)" in text
    (entry,) = registry.openai_tools()
    assert entry["type"] == "function" and entry["function"]["name"] == "lookup"
    json.dumps(entry)


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        ({}, "missing required argument 'city'"),
        ({"city": 3}, "argument 'city' must be of type string, got 3"),
        ({"city": "A", "field": "height"}, 'must be one of ["population", "area"]'),
        ({"city": "A", "colour": "red"}, "unknown argument 'colour' (allowed: city, field, limit)"),
        ({"city": "A", "limit": "5"}, "argument 'limit' must be of type"),
    ],
)
def test_bad_arguments_become_failed_responses(arguments, fragment):
    response = ToolRegistry([lookup]).execute(ToolCall("c1", "lookup", arguments))
    assert response.success is False and response.result is None
    assert fragment in response.error


def test_tool_errors_and_exceptions_are_observations():
    registry = ToolRegistry([lookup])
    r = registry.execute(call("lookup", city="Nowhere"))
    assert not r.success and r.error == "no city called Nowhere; check the spelling"

    @tool
    def broken() -> int:
        """Always fails."""
        return 1 // 0

    registry.register(broken)
    r = registry.execute(call("broken"))
    assert not r.success and r.error.startswith("ZeroDivisionError")
    r = registry.execute(call("missing"))
    assert not r.success and "unknown tool 'missing'" in r.error and "lookup" in r.error


def test_unserialisable_results_become_text():
    @tool
    def weird() -> object:
        """Returns a set."""
        return {"when": object()}

    r = ToolRegistry([weird]).execute(call("weird"))
    assert r.success and r.result["when"].startswith("<object object")


def _sleeper(seconds: float, name: str = "sleepy") -> ToolDefinition:
    @tool(name=name)
    def sleepy() -> str:
        """Sleep."""
        time.sleep(seconds)
        return "awake"

    return sleepy


def test_five_half_second_tools_run_concurrently():
    registry = ToolRegistry([_sleeper(0.5, f"sleep{i}") for i in range(5)])
    start = time.perf_counter()
    responses = registry.execute_many([call(f"sleep{i}") for i in range(5)])
    elapsed = time.perf_counter() - start
    assert [r.result for r in responses] == ["awake"] * 5
    assert elapsed < 1.5, elapsed  # one after another: 2.5 s; even two at a time: 1.5 s


def test_hung_tool_times_out_and_caller_keeps_working():
    registry = ToolRegistry([_sleeper(60), lookup], config=AgentConfig(tool_call_timeout=1))
    start = time.perf_counter()
    hung, ok = registry.execute_many([call("sleepy"), call("lookup", city="Rome")])
    assert time.perf_counter() - start < 3
    assert not hung.success and "timed out after 1 s" in hung.error
    assert ok.success and ok.result["city"] == "Rome"
    assert registry.execute(call("lookup", city="Oslo")).success


def test_tool_threads_are_reused_and_a_hung_call_takes_only_its_own(monkeypatch):
    monkeypatch.setattr("tooltune.registry._WORKERS", registry_module._Workers())  # no others
    threads = []

    @tool
    def where() -> str:
        """Which thread runs this."""
        threads.append(threading.current_thread())  # kept, so no two are the same object
        return "here"

    registry = ToolRegistry([_sleeper(3.0), where], config=AgentConfig(tool_call_timeout=0.1))
    for _ in range(4):
        assert all(r.success for r in registry.execute_many([call("where")] * 4))
        time.sleep(0.05)  # the threads go back to waiting
    assert len(threads) == 16 and len(set(threads)) <= 8  # a thread per call would make 16
    hung, ok = registry.execute_many([call("sleepy"), call("where")])
    assert not hung.success and ok.success
    start = time.perf_counter()  # the sleeper still holds a thread: the next call gets another
    assert registry.execute(call("where")).success
    assert time.perf_counter() - start < 1.5  # waiting for the sleeper's thread: 2.9 s


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_tools():
    registry = ToolRegistry([lookup])
    assert registry.execute(call("lookup", city="A")).success  # the parent now has idle threads
    pid = os.fork()
    if pid == 0:  # the child has none of them; without a reset its call would wait forever
        os._exit(0 if registry.execute(call("lookup", city="B")).success else 1)
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0


def test_per_turn_call_limit():
    registry = ToolRegistry([lookup], config=AgentConfig(max_tool_calls_per_turn=2))
    responses = registry.execute_many([ToolCall(str(i), "lookup", {"city": "A"}) for i in range(4)])
    assert [r.success for r in responses] == [True, True, False, False]
    assert "too many tool calls in one turn: at most 2" in responses[3].error
    assert [r.call_id for r in responses] == ["0", "1", "2", "3"]


def test_max_tools_enforced_at_registration():
    registry = ToolRegistry(config=AgentConfig(max_tools=2))
    registry.register(lookup)
    registry.register(_sleeper(0, "a"))
    with pytest.raises(ToolRegistryError, match="max_tools=2"):
        registry.register(_sleeper(0, "b"))


def test_registry_takes_limits_from_default_config():
    registry = ToolRegistry()
    assert (
        registry.config.tool_call_timeout == 30.0 and registry.config.max_tool_calls_per_turn == 5
    )


def test_async_tools_and_parse_errors():
    @tool
    async def later(x: int) -> int:
        """Async double."""
        return 2 * x

    registry = ToolRegistry([later])
    assert registry.execute(call("later", x=4)).result == 8
    bad = ToolCall("c9", "", {}, parse_error="tool call is not valid JSON")
    assert registry.execute(bad).error == "tool call is not valid JSON"


def test_bad_names_and_schemas_refused():
    with pytest.raises(ToolRegistryError, match="tool name"):
        ToolDefinition(name="no spaces", description="", parameters={}, function=print)
    with pytest.raises(ToolRegistryError, match="invalid schema"):
        ToolDefinition(
            name="x", description="", parameters={"type": "object", "properties": 3}, function=print
        )


def test_close_runs_closers_once():
    registry = ToolRegistry()
    closed = []
    registry.on_close(lambda: closed.append(1))
    registry.close()
    registry.close()
    assert closed == [1]
    assert threading.active_count() >= 1
