"""Bridge to the Model Context Protocol: use an MCP server's tools, or serve a registry over MCP.

`MCPBridge` connects to an MCP server (a subprocess over stdio, or a server object in the same
process) and turns each of its tools into a `ToolDefinition`, so MCP tools go through the same
registry, validation, timeouts and rollouts as the built-in ones. The MCP client is async; the
bridge runs it on its own event loop in a background thread and the synchronous tool functions
submit calls to it. `serve_registry` goes the other way and exposes a `ToolRegistry` to any
MCP client.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters, stdio_client
from mcp.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

from tooltune.registry import ToolDefinition, ToolError, ToolRegistry
from tooltune.types import ToolCall

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.\-]")
MAX_RESULT_CHARS = 100_000


def _tool_name(name: str, prefix: str) -> str:
    cleaned = _NAME_BAD.sub("_", prefix + name)
    if not re.match(r"[A-Za-z_]", cleaned):
        cleaned = "_" + cleaned
    return cleaned[:64]


def _content_value(block: Any) -> Any:
    """One MCP content block as a JSON value (text parsed as JSON when it is JSON)."""
    if isinstance(block, types.TextContent):
        try:
            return json.loads(block.text)
        except ValueError:
            return block.text
    kind = getattr(block, "type", type(block).__name__)
    summary: dict[str, Any] = {"type": kind}
    for key in ("mime_type", "uri", "name"):
        if getattr(block, key, None) is not None:
            summary[key] = str(getattr(block, key))
    return summary


def _root_cause(exc: BaseException) -> BaseException:
    """The first leaf of nested exception groups (anyio task groups wrap transport errors)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def result_value(result: types.CallToolResult) -> Any:
    """The value a tool call returned; raises ToolError when the server reports an error."""
    if result.is_error:
        text = " ".join(b.text for b in result.content if isinstance(b, types.TextContent))
        raise ToolError(text.strip()[:2000] or "the MCP tool reported an error")
    structured = result.structured_content
    if isinstance(structured, dict):
        # Servers wrap non-object results as {"result": value}; unwrap so values round-trip.
        return structured["result"] if set(structured) == {"result"} else structured
    values = [_content_value(b) for b in result.content]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


class MCPBridge:
    """A live connection to one MCP server, with its tools as `ToolDefinition`s.

    `server` is a command line (`["python", "server.py"]`, run as a stdio subprocess) or an
    in-process `MCPServer` / low-level `Server`. Use as a context manager or call `close()`.
    """

    def __init__(
        self,
        server: list[str] | MCPServer | Server,
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 30.0,
        prefix: str = "",
    ):
        self.timeout = timeout
        self.prefix = prefix
        self._errlog = None
        if isinstance(server, (list, tuple)):
            if not server or not all(isinstance(p, str) for p in server):
                raise ValueError("an MCP server command must be a non-empty list of strings")
            # The server's stderr, shown when it fails to start; closed in close().
            self._errlog = tempfile.TemporaryFile("w+")  # noqa: SIM115
            params = StdioServerParameters(
                command=server[0], args=list(server[1:]), env=env, cwd=cwd
            )
            self._target: Any = stdio_client(params, errlog=self._errlog)
            self.description = " ".join(server)
        elif isinstance(server, (MCPServer, Server)):
            self._target = server
            self.description = f"in-process server {server.name!r}"
        else:
            raise TypeError("server must be a command list or an MCP server object")
        self._loop = asyncio.new_event_loop()
        self._client: Client | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._error: BaseException | None = None
        self._listed: list[types.Tool] = []
        self._thread = threading.Thread(target=self._run, name="tooltune-mcp", daemon=True)
        self._thread.start()
        if not self._ready.wait(connect_timeout):
            self.close()
            raise RuntimeError(f"MCP server {self.description} did not connect in time")
        if self._error is not None:
            detail = self._stderr_tail()
            self.close()
            raise RuntimeError(
                f"could not connect to MCP server {self.description}: "
                f"{_root_cause(self._error)!r}" + (f"\nserver stderr:\n{detail}" if detail else "")
            )
        atexit.register(self.close)
        self.tools = [self._definition(t) for t in self._listed]

    # -- the event loop thread ----------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._closed.set()
            self._ready.set()
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with Client(self._target, read_timeout_seconds=self.timeout) as client:
                cursor, listed = None, []
                for _ in range(100):
                    page = await client.list_tools(cursor=cursor)
                    listed.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                self._listed, self._client = listed, client
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # reported to the constructor or to later calls
            self._error = exc
        finally:
            self._client = None

    def _stderr_tail(self) -> str:
        if self._errlog is None:
            return ""
        try:
            self._errlog.seek(0)
            return self._errlog.read()[-2000:].strip()
        except (OSError, ValueError):
            return ""

    # -- calls --------------------------------------------------------------------------------
    def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """Call tool `name` on the server and return its value (ToolError on any failure)."""
        client = self._client
        if client is None or self._closed.is_set():
            raise ToolError(f"the MCP server {self.description} is not connected")
        future = asyncio.run_coroutine_threadsafe(
            client.call_tool(name, arguments, read_timeout_seconds=self.timeout), self._loop
        )
        try:
            result = future.result(self.timeout + 1)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ToolError(f"MCP tool {name!r} timed out after {self.timeout:g} s") from None
        except Exception as exc:
            raise ToolError(f"MCP tool {name!r} failed: {_root_cause(exc)}"[:2000]) from None
        return result_value(result)

    def _definition(self, listed: types.Tool) -> ToolDefinition:
        remote = listed.name

        def call_remote(**arguments: Any) -> Any:
            return self.call(remote, arguments)

        schema = dict(listed.input_schema or {"type": "object", "properties": {}})
        schema.setdefault("type", "object")
        return ToolDefinition(
            name=_tool_name(remote, self.prefix),
            description=listed.description or listed.title or remote,
            parameters=schema,
            function=call_remote,
            timeout=self.timeout + 2,
            metadata={"mcp_server": self.description, "mcp_name": remote},
        )

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        if self._stop is not None and not self._closed.is_set():
            with contextlib.suppress(RuntimeError):  # the loop already stopped
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)
        if self._errlog is not None:
            self._errlog.close()
            self._errlog = None
        atexit.unregister(self.close)

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._closed.is_set()

    def __enter__(self) -> MCPBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_mcp_tools(
    server: list[str] | MCPServer | Server,
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 30.0,
    prefix: str = "",
) -> list[ToolDefinition]:
    """The tools of an MCP server as `ToolDefinition`s; the connection lives until exit.

    Use `MCPBridge` directly to close the connection (and stop the subprocess) earlier.
    """
    return MCPBridge(server, env=env, cwd=cwd, timeout=timeout, prefix=prefix).tools


# --------------------------------------------------------------------------------------------
# Serving a registry
# --------------------------------------------------------------------------------------------


def registry_server(registry: ToolRegistry, name: str = "tooltune") -> Server:
    """A low-level MCP `Server` whose tools are the registry's; calls go through `execute`."""
    counter = iter(range(1, 1 << 62))

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t.name, description=t.description, input_schema=t.parameters)
                for t in registry
            ]
        )

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        call = ToolCall(
            id=f"mcp-{next(counter)}", name=params.name, arguments=params.arguments or {}
        )
        response = await anyio.to_thread.run_sync(registry.execute, call, abandon_on_cancel=True)
        if not response.success:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=response.error or "tool failed")],
                is_error=True,
            )
        text = json.dumps(response.result, ensure_ascii=False)
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + "... [truncated]"
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)],
            structured_content={"result": response.result},
        )

    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


def serve_registry(registry: ToolRegistry, name: str = "tooltune") -> None:
    """Serve the registry's tools over MCP on stdin/stdout until the client disconnects."""
    server = registry_server(registry, name)

    async def main() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    anyio.run(main)
