"""Generated functions made callable: a JSON-Schema function doc as a tool that checks its
arguments and answers with a small deterministic confirmation.

The schema tasks (`tooltune.tasks.schema_tasks`) offer functions drawn from random schemas; they
have no real behaviour, but an episode must still run call -> observation -> answer. The
registry validates the arguments against the doc's schema before the call (types, enums,
required parameters) and the tool refuses parameters the doc does not declare, so a wrong call
fails as a real tool's would. A right call
returns `{"function", "status": "accepted", "id"}`, where the id is a hash of the arguments in
BFCL's comparison form (strings normalised, numbers as floats, defaults filled in): every call
the AST checker accepts gets the same id, so the task can ask the final answer to report it.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from tooltune.registry import ToolDefinition, ToolError

_STRIP = re.compile(r"[ ,./\-_*^]")  # BFCL's `normalize_string` (tooltune.tasks.bfcl)


def canonical(value: Any) -> Any:
    """A value in the form the AST checker compares: strings normalised, numbers as floats."""
    if isinstance(value, str):
        return _STRIP.sub("", value).lower().replace("'", '"')
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return str(value)


def call_id(doc: dict, arguments: dict) -> str:
    """The confirmation id of a call: the function's initials and six hex digits of a hash of
    its arguments (defaults filled in, compared as the AST checker compares them)."""
    properties = (doc.get("parameters") or {}).get("properties", {})
    filled = {k: p["default"] for k, p in properties.items() if "default" in p}
    filled.update(arguments)
    text = json.dumps([doc["name"], canonical(filled)], sort_keys=True)
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:6].upper()
    words = [w for w in re.split(r"[^A-Za-z]+|(?<=[a-z])(?=[A-Z])", doc["name"]) if w]
    prefix = "".join(w[0] for w in words).upper()[:4] or "FN"
    return f"{prefix}-{digest}"


def _unknown(schema: dict, value: dict, where: str) -> str | None:
    """The first argument (or nested field) the schema does not declare."""
    properties = schema.get("properties", {})
    for key, item in value.items():
        if key not in properties:
            return repr(where + key)
        if isinstance(item, dict) and properties[key].get("type") == "object":
            found = _unknown(properties[key], item, f"{where}{key}.")
            if found:
                return found
    return None


def make_schema_tool(doc: dict) -> ToolDefinition:
    """A tool for one generated function doc (`name`, `description`, `parameters`)."""

    def run(**arguments: Any) -> dict:
        unknown = _unknown(doc.get("parameters") or {}, arguments, "")
        if unknown:  # the schema shown has no additionalProperties; a real API would refuse
            raise ToolError(f"{doc['name']} has no parameter {unknown}")
        return {"function": doc["name"], "status": "accepted", "id": call_id(doc, arguments)}

    return ToolDefinition(
        name=doc["name"],
        description=doc.get("description", ""),
        parameters=doc["parameters"],
        function=run,
        metadata={"generated": True},
    )
