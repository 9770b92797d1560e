"""Tools as typed Python functions, and the registry that runs them safely.

`@tool` turns a function with type hints and a Google-style docstring into a `ToolDefinition`
whose JSON Schema a model can read. The registry validates arguments against that schema before
calling, enforces the per-call timeout (a hung tool answers with a timeout error on time while the
caller carries on), runs the calls of one turn concurrently, and caps how many one turn may make.
Every failure becomes a failed `ToolResponse` with text the model can learn from.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import json
import os
import queue
import re
import threading
import time
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

import jsonschema

from tooltune.config import AgentConfig
from tooltune.types import ToolCall, ToolResponse


class ToolError(Exception):
    """Raised by a tool for an error the model should read (bad input, not found, ...)."""


class ToolRegistryError(ValueError):
    """A tool cannot be registered (duplicate name, too many tools, bad schema)."""


NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


def _validator_for(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A checked validator for `schema`, built once per distinct schema: per-episode tool sets
    (file overlays, flight headers) rebuild the same definitions for every episode, and checking
    a schema against the meta-schema costs milliseconds."""
    try:
        text = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):  # not plain JSON: check it every time
        jsonschema.Draft202012Validator.check_schema(schema)
        return jsonschema.Draft202012Validator(schema)
    return _validator_of_text(text)


@functools.lru_cache(maxsize=4096)
def _validator_of_text(text: str) -> jsonschema.Draft202012Validator:
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@dataclass
class ToolDefinition:
    """Definition of a tool available to the agent.

    `parameters` is a JSON Schema object. The seed's shorter form, a mapping from parameter name
    to property schema, is accepted too and every parameter in it is then required."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any]
    timeout: float | None = None  # overrides the registry's tool_call_timeout
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ToolRegistryError(
                f"tool name {self.name!r} must start with a letter or _ and use only letters, "
                "digits, _, ., - (at most 64 characters)"
            )
        self.parameters = _as_object_schema(self.parameters)
        try:
            self._validator = _validator_for(self.parameters)
        except jsonschema.SchemaError as exc:
            raise ToolRegistryError(
                f"tool {self.name!r} has an invalid schema: {exc.message}"
            ) from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def to_prompt_format(self) -> str:
        """The seed's plain-text description of the tool."""
        required = set(self.parameters.get("required", []))
        lines = []
        for name, info in self.parameters.get("properties", {}).items():
            optional = "" if name in required else ", optional"
            lines.append(
                f"  - {name}: {info.get('description', '')} ({_type_label(info)}{optional})"
            )
        params_str = "\n".join(lines) if lines else "  (none)"
        return f"Tool: {self.name}\nDescription: {self.description}\nParameters:\n{params_str}"

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI `tools` entry for this tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def validate(self, arguments: Any) -> str | None:
        """None when `arguments` fit the schema, else a message that tells the model what to fix."""
        if not isinstance(arguments, dict):
            return (
                f"arguments for {self.name} must be a JSON object, got {type(arguments).__name__}"
            )
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: list(e.path))
        if not errors:
            return None
        return f"invalid arguments for {self.name}: " + "; ".join(
            _explain(e, self.parameters) for e in errors[:3]
        )


# --------------------------------------------------------------------------------------------
# @tool: JSON Schema from type hints and the docstring
# --------------------------------------------------------------------------------------------


def tool(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
) -> Any:
    """Decorator: `@tool` or `@tool(name=..., timeout=...)` -> a `ToolDefinition`."""

    def build(fn: Callable[..., Any]) -> ToolDefinition:
        summary, parameters = schema_from_function(fn)
        return ToolDefinition(
            name=name or fn.__name__,
            description=description or summary,
            parameters=parameters,
            function=fn,
            timeout=timeout,
        )

    return build(function) if function is not None else build


def schema_from_function(fn: Callable[..., Any]) -> tuple[str, dict[str, Any]]:
    """(description, JSON Schema of the parameters) from a function's signature and docstring."""
    summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        schema = _schema_for(hints.get(param.name, Any))
        if param.name in arg_docs:
            schema["description"] = arg_docs[param.name]
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        elif _json_safe(param.default):
            schema["default"] = param.default
        properties[param.name] = schema
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return summary or fn.__name__.replace("_", " "), parameters


_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$"
)
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Google-style docstring -> (summary, {argument: description})."""
    summary_lines: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    arg_indent: int | None = None  # indentation of the argument lines in the Args section
    for line in doc.splitlines():
        stripped = line.strip()
        header = _SECTION.match(stripped)
        if header and not line.startswith((" ", "\t")):
            section, current, arg_indent = header.group(1), None, None
            continue
        if section is None:
            summary_lines.append(stripped)
            continue
        if section not in ("Args", "Arguments", "Parameters") or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(stripped)
        if match and (arg_indent is None or indent <= arg_indent):
            arg_indent = indent
            current = match.group(1).lstrip("*")
            args[current] = match.group(3).strip()
        elif current is not None:  # a continuation line
            args[current] = f"{args[current]} {stripped}".strip()
    summary = " ".join(" ".join(summary_lines).split())
    return summary, args


def _schema_for(hint: Any) -> dict[str, Any]:
    """JSON Schema for one Python type hint."""
    origin = get_origin(hint)
    args = get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    if origin is typing.Annotated:
        schema = _schema_for(args[0])
        for extra in args[1:]:
            if isinstance(extra, str):
                schema["description"] = extra
        return schema
    if origin is Literal:
        values = list(args)
        schema = {"enum": values}
        kinds = {_JSON_TYPES.get(type(v)) for v in values}
        if len(kinds) == 1 and None not in kinds:
            schema["type"] = kinds.pop()
        return schema
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            schema = _schema_for(options[0])
            if type(None) in args and "type" in schema and isinstance(schema["type"], str):
                schema = {**schema, "type": [schema["type"], "null"]}
            if type(None) in args and "enum" in schema:  # an optional choice may be null too
                schema = {**schema, "enum": [*schema["enum"], None]}
            return schema
        return {"anyOf": [_schema_for(a) for a in args]}
    if origin in (list, tuple, set, frozenset, Iterable) or hint in (list, tuple, set):
        schema = {"type": "array"}
        if args and args[0] is not Ellipsis:
            schema["items"] = _schema_for(args[0])
        return schema
    if origin is dict or hint is dict:
        return {"type": "object"}
    if inspect.isclass(hint) and issubclass(hint, enum.Enum):
        return {"enum": [m.value for m in hint]}
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    raise ToolRegistryError(f"cannot describe type {hint!r} in JSON Schema")


_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _as_object_schema(parameters: dict[str, Any] | None) -> dict[str, Any]:
    if not parameters:
        return {"type": "object", "properties": {}, "additionalProperties": False}
    if parameters.get("type") == "object":
        return dict(parameters)
    if all(isinstance(v, dict) for v in parameters.values()):  # the seed's short form
        return {
            "type": "object",
            "properties": dict(parameters),
            "required": list(parameters),
            "additionalProperties": False,
        }
    raise ToolRegistryError(
        "parameters must be a JSON Schema object or a mapping of name -> schema"
    )


def _type_label(info: dict[str, Any]) -> str:
    if "enum" in info:
        return "one of " + ", ".join(json.dumps(v) for v in info["enum"])
    kind = info.get("type", "any")
    return "/".join(kind) if isinstance(kind, list) else kind


def _explain(error: jsonschema.ValidationError, schema: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"missing required argument '{missing}'"
    if error.validator == "additionalProperties":
        allowed = ", ".join(schema.get("properties", {})) or "none"
        extra = re.findall(r"'([^']+)'", error.message)
        return f"unknown argument {', '.join(repr(e) for e in extra)} (allowed: {allowed})"
    if error.validator == "type":
        return f"argument '{where}' must be of type {error.validator_value}, got {json.dumps(error.instance)[:80]}"
    if error.validator == "anyOf" and all("type" in o for o in error.validator_value):
        kinds = " or ".join(str(o["type"]) for o in error.validator_value)
        return f"argument '{where}' must be of type {kinds}, got {json.dumps(error.instance)[:80]}"
    if error.validator == "enum":
        return f"argument '{where}' must be one of {json.dumps(error.validator_value)}, got {json.dumps(error.instance)[:80]}"
    return f"argument '{where}': {error.message[:200]}" if where else error.message[:200]


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


class ToolRegistry:
    """Registry of available tools; executes calls with validation, timeouts and a per-turn cap."""

    def __init__(
        self,
        tools: Iterable[ToolDefinition | Callable[..., Any]] = (),
        config: AgentConfig | None = None,
    ) -> None:
        self.config = config or AgentConfig()
        self.tools: dict[str, ToolDefinition] = {}
        self._closers: list[Callable[[], None]] = []
        for t in tools:
            self.register(t)

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run `closer` when the registry is closed (per-episode state, servers, ...)."""
        self._closers.append(closer)

    def close(self) -> None:
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            closer()

    def __enter__(self) -> ToolRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registration -------------------------------------------------------------------------
    def register(
        self, tool_or_function: ToolDefinition | Callable[..., Any], *, replace: bool = False
    ) -> ToolDefinition:
        """Register a `ToolDefinition`, a `@tool` function, or a plain typed function."""
        definition = (
            tool_or_function
            if isinstance(tool_or_function, ToolDefinition)
            else tool(tool_or_function)
        )
        if definition.name in self.tools and not replace:
            raise ToolRegistryError(f"a tool named {definition.name!r} is already registered")
        if definition.name not in self.tools and len(self.tools) >= self.config.max_tools:
            raise ToolRegistryError(
                f"cannot register {definition.name!r}: the registry already holds max_tools="
                f"{self.config.max_tools} tools (raise max_tools in the config to allow more)"
            )
        self.tools[definition.name] = definition
        return definition

    def get(self, name: str) -> ToolDefinition | None:
        return self.tools.get(name)

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def __len__(self) -> int:
        return len(self.tools)

    def __iter__(self) -> Iterator[ToolDefinition]:
        return iter(self.tools.values())

    def subset(self, names: Iterable[str]) -> ToolRegistry:
        """A registry with only the named tools (unknown names are an error)."""
        names = list(names)
        unknown = [n for n in names if n not in self.tools]
        if unknown:
            raise ToolRegistryError(f"unknown tools: {', '.join(unknown)}")
        return ToolRegistry([self.tools[n] for n in names], config=self.config)

    # -- descriptions -------------------------------------------------------------------------
    def get_tools_prompt(self) -> str:
        """The seed's text description of every tool."""
        return "\n\n".join(t.to_prompt_format() for t in self.tools.values())

    def openai_tools(self) -> list[dict[str, Any]]:
        return [t.to_openai() for t in self.tools.values()]

    # -- execution ----------------------------------------------------------------------------
    def execute(self, call: ToolCall) -> ToolResponse:
        """Execute one tool call; never raises."""
        return self.execute_many([call])[0]

    def execute_many(self, calls: list[ToolCall]) -> list[ToolResponse]:
        """Run the calls of one turn concurrently, at most `max_tool_calls_per_turn` of them.

        Wall time is close to the slowest call. Calls beyond the cap are not run and get an error
        response. Results come back in the order of `calls`."""
        return self.start_many(calls)()

    def start_many(self, calls: list[ToolCall]) -> Callable[[], list[ToolResponse]]:
        """Start the calls of one turn (as `execute_many`) and return a function that waits
        for their responses. A collector starts every episode's calls before it waits for any,
        so all the tool calls of a batch run at once, each on its own thread."""
        limit = self.config.max_tool_calls_per_turn
        responses: list[ToolResponse | None] = [None] * len(calls)
        running: list[tuple[int, _Running]] = []
        for index, call in enumerate(calls):
            if index >= limit:
                responses[index] = _failed(
                    call,
                    f"too many tool calls in one turn: at most {limit} are allowed, so this call "
                    "was not run; make fewer calls per turn",
                )
                continue
            problem, definition = self._check(call)
            if problem is not None:
                responses[index] = _failed(call, problem)
                continue
            timeout = definition.timeout or self.config.tool_call_timeout
            running.append((index, _Running.start(definition, call, timeout)))

        def wait() -> list[ToolResponse]:
            for index, run in running:
                responses[index] = run.wait()
            return [r for r in responses if r is not None]

        return wait

    def _check(self, call: ToolCall) -> tuple[str | None, ToolDefinition | None]:
        if call.parse_error:
            return call.parse_error, None
        definition = self.tools.get(call.name)
        if definition is None:
            known = ", ".join(self.tools) or "none"
            return f"unknown tool {call.name!r}; available tools: {known}", None
        return definition.validate(call.arguments), definition


def _failed(call: ToolCall, error: str, elapsed: float = 0.0) -> ToolResponse:
    return ToolResponse(call.id, False, None, error=error, execution_time=elapsed, name=call.name)


class _Workers:
    """Daemon threads that run tool calls, kept between calls: starting a thread waits for it
    to run, ~1 ms a call while torch's threads hold the cores. A hung call keeps its thread;
    a new thread starts whenever no idle one is left."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the threads (a forked child has none of them)."""
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1  # an idle worker takes it
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._work, name="tooltune-tool", daemon=True).start()

    def _work(self) -> None:
        while True:
            self._jobs.get()()  # jobs never raise: `_Running._target` catches everything
            with self._lock:
                self._idle += 1


_WORKERS = _Workers()
if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_WORKERS.reset)


class _Running:
    """One tool call running on a worker thread, so a hung tool can be abandoned on time."""

    def __init__(self, definition: ToolDefinition, call: ToolCall, timeout: float) -> None:
        self.definition, self.call, self.timeout = definition, call, timeout
        self.done = threading.Event()
        self.outcome: tuple[bool, Any] = (False, "tool did not run")
        self.started = time.perf_counter()

    @classmethod
    def start(cls, definition: ToolDefinition, call: ToolCall, timeout: float) -> _Running:
        run = cls(definition, call, timeout)
        _WORKERS.submit(run._target)
        return run

    def _target(self) -> None:
        try:
            value = self.definition.function(**self.call.arguments)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
            self.outcome = (True, _jsonable(value))
        except ToolError as exc:
            self.outcome = (False, str(exc) or type(exc).__name__)
        except Exception as exc:  # any tool failure becomes an error observation
            self.outcome = (False, f"{type(exc).__name__}: {exc}")
        finally:
            self.done.set()

    def wait(self) -> ToolResponse:
        remaining = self.started + self.timeout - time.perf_counter()
        finished = self.done.wait(max(remaining, 0.0))
        elapsed = time.perf_counter() - self.started
        if not finished:
            return _failed(
                self.call, f"tool {self.call.name!r} timed out after {self.timeout:g} s", elapsed
            )
        ok, value = self.outcome
        if not ok:
            return _failed(self.call, value, elapsed)
        return ToolResponse(self.call.id, True, value, execution_time=elapsed, name=self.call.name)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _jsonable(value: Any) -> Any:
    """Tool results must survive JSON; anything else is shown as text."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))
