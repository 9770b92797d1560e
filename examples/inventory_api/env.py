"""An HTTP service described by OpenAPI: served on 127.0.0.1, each operation becomes a tool."""

import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from tooltune import ToolEnv, openapi_tools
from tooltune.tools.server import LocalServer

HERE = Path(__file__).parent
ITEMS = json.loads((HERE / "items.json").read_text())


async def get_item(request):
    item = ITEMS.get(request.path_params["sku"].strip().upper())
    if item is None:
        return JSONResponse({"detail": "no item has this SKU"}, status_code=404)
    return JSONResponse(item)


def expert(task, results):  # SFT data: fetch the item, answer with the field the task asks for
    if not results:
        return {"name": "get_item", "arguments": {"sku": task.metadata["sku"]}}
    field = task.metadata["field"]
    return f"The {field} of {task.metadata['sku']} is {results[-1][0].value[field]}."


def make_env() -> ToolEnv:
    server = LocalServer(Starlette(routes=[Route("/items/{sku}", get_item)]))
    tools = openapi_tools(HERE / "openapi.yaml", base_url=server.start())
    env = ToolEnv(HERE / "tasks.jsonl", tools, expert=expert, name="inventory")
    env.on_close(server.stop)
    return env
