"""The built-in tool families, one module each.

| module | tools |
|---|---|
| `search` | BM25 `search`, `open_document` over a corpus folder |
| `code_runner` | `run_python` in a sandboxed child process |
| `math_solver` | sympy maths behind a whitelist parser (`math_parser`), in worker processes (`math_worker`) |
| `files` | `list_files`, `read_file`, `write_file`, `append_file`, `search_files` in a sandbox root |
| `database` | read-only SQL over SQLite or a SQLAlchemy URL, behind `sql_guard` |
| `openapi` + `flights` | tools generated from an OpenAPI spec; the flight-booking HTTP service |
| `browser` | a text browser over pages served on 127.0.0.1 |
| `images` | Pillow image tools and the shape detector |
| `mcp_bridge` | tools of an MCP server, and a registry served over MCP |
| `heldout` | `geo_lookup`, `corp_registry`: the held-out family, never offered in training |
| `schema_functions` | a generated function doc as a tool (schema tasks): checks arguments, returns an id |

`catalogue` says which tool belongs to which family and which family is held out.

Each module has a `make_*_tools(resource, ...)` factory; `tooltune.environment.BuiltinWorld`
wires them to the built-in world, one registry per episode.
"""
