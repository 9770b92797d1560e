"""A to-do list MCP server over stdio. Every call names a session: one list per session, so a
trainer can give each episode its own list on one running server."""

from collections import defaultdict

from mcp.server.mcpserver import MCPServer

server = MCPServer("todo")
LISTS: defaultdict[str, list[str]] = defaultdict(list)


@server.tool()
def add_item(session: str, item: str) -> dict:
    """Add an item to the to-do list."""
    LISTS[session].append(item)
    return {"added": item}


@server.tool()
def count_items(session: str) -> int:
    """How many items the to-do list holds."""
    return len(LISTS[session])


@server.tool()
def list_items(session: str) -> list[str]:
    """Every item of the to-do list, oldest first."""
    return LISTS[session]


if __name__ == "__main__":
    server.run()
