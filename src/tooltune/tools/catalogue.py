"""Which built-in tool belongs to which family, and which family is held out.

A family is the unit the built-in world wires and offers: every tool of a family is built from
the same resource (the search index, the world database, the flight service, ...), and a task
offers whole families. The `registry` family (`geo_lookup`, `corp_registry`, in
`tooltune.tools.heldout`) is never offered in training, so the `heldout_tools` split measures
transfer to tools a model has never seen.
"""

from __future__ import annotations

FAMILIES: dict[str, list[str]] = {
    "search": ["search", "open_document"],
    "python": ["run_python"],
    "math": ["calculate", "solve_equation", "simplify_expression", "differentiate", "integrate"],
    "files": ["list_files", "read_file", "write_file", "append_file", "search_files"],
    "database": ["sql_query", "list_tables", "describe_table"],
    "flights": ["search_flights", "book_flight", "confirm_booking", "get_booking"],
    "browser": ["browser_open", "browser_click", "browser_find", "browser_back"],
    "images": [
        "image_info",
        "image_crop",
        "image_histogram",
        "image_dominant_colors",
        "detect_shapes",
    ],
    "registry": ["geo_lookup", "corp_registry"],  # the held-out tools, never seen in training
}
BUILTIN_FAMILIES = [f for f in FAMILIES if f != "registry"]
HELDOUT_TOOLS = FAMILIES["registry"]
TOOL_FAMILY = {name: family for family, names in FAMILIES.items() for name in names}
BUILTIN_TOOLS = [
    name for family, names in FAMILIES.items() if family != "registry" for name in names
]
