"""Tools generated from an OpenAPI 3 document: one tool per operation, calls made with httpx.

A model meets many real APIs only through their OpenAPI description, so the flight service is
exposed this way rather than through hand-written wrappers. Each operation's path, query and
header parameters and its JSON body are merged into one JSON Schema object, which is what a
model fills in. Requests only ever go to allow-listed base URLs, redirects are followed only
within them, and HTTP errors come back as `ToolError` carrying the service's own message.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
import yaml

from tooltune.registry import ToolDefinition, ToolError
from tooltune.tools.server import http_client, read_limited

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
MAX_RESPONSE_BYTES = 1_000_000
MAX_REDIRECTS = 5
_PARAM_LOCATIONS = ("path", "query", "header")


def load_spec(spec: dict | str | Path) -> dict:
    """A spec as a dict: from a dict, a JSON/YAML file path, or JSON/YAML text."""
    if isinstance(spec, dict):
        return _check_spec(copy.deepcopy(spec))
    text: str
    if isinstance(spec, Path) or ("\n" not in spec and not spec.lstrip().startswith("{")):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"OpenAPI spec file {path} not found")
        text = path.read_text()
    else:
        text = spec
    return _check_spec(yaml.safe_load(text))  # YAML is a superset of JSON


def _check_spec(data: Any) -> dict:
    if not isinstance(data, dict) or not isinstance(data.get("paths"), dict):
        raise ValueError("not an OpenAPI document: expected a mapping with 'paths'")
    if not str(data.get("openapi", "")).startswith("3"):
        raise ValueError("only OpenAPI 3.x documents are supported")
    return data


def resolve_refs(node: Any, root: dict, _seen: tuple[str, ...] = ()) -> Any:
    """Inline local `$ref`s (`#/...`). A recursive reference is cut to an untyped schema."""
    if isinstance(node, list):
        return [resolve_refs(v, root, _seen) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith("#/"):
            raise ValueError(f"only local $refs are supported, got {ref!r}")
        if ref in _seen:
            return {"description": f"(recursive reference to {ref.rsplit('/', 1)[-1]})"}
        target: Any = root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise ValueError(f"unresolvable $ref {ref!r}")
            target = target[part]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        resolved = resolve_refs(target, root, (*_seen, ref))
        return {**resolved, **resolve_refs(siblings, root, _seen)} if siblings else resolved
    return {k: resolve_refs(v, root, _seen) for k, v in node.items()}


def _json_schema(schema: dict | None) -> dict:
    """OpenAPI 3.0 schema -> JSON Schema: `nullable` becomes a null type, OpenAPI-only keys go."""
    if not isinstance(schema, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("nullable", "example", "xml", "externalDocs", "discriminator", "readOnly"):
            continue
        if key in ("properties", "patternProperties") and isinstance(value, dict):
            out[key] = {k: _json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
            out[key] = [_json_schema(v) for v in value]
        else:
            out[key] = copy.deepcopy(value)
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _tool_name(operation: dict, method: str, path: str) -> str:
    name = operation.get("operationId") or f"{method}_{path}"
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name)
    name = re.sub(r"_+", "_", name).strip("_") or method
    if not re.match(r"[A-Za-z_]", name):
        name = "_" + name
    return name[:64]


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"URLs with credentials are not allowed: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname.lower(), port


class _AllowList:
    """Base URLs a tool may reach: same scheme, host and port, and a path under the base path."""

    def __init__(self, base_urls: list[str]):
        self.bases = []
        for url in base_urls:
            path = urlsplit(url).path.rstrip("/") + "/"
            self.bases.append((_origin(url), path))

    def allows(self, url: str) -> bool:
        try:
            origin = _origin(url)
        except ValueError:
            return False
        path = urlsplit(url).path or "/"
        path_dir = path if path.endswith("/") else path + "/"
        return any(origin == o and path_dir.startswith(p) for o, p in self.bases)


class _Operation:
    """One operation: how to turn validated arguments into an HTTP request."""

    def __init__(self, method: str, path: str, operation: dict, path_params: list, fixed: set):
        self.method = method.upper()
        self.path = path
        params: dict[tuple[str, str], dict] = {}
        for p in [*path_params, *operation.get("parameters", [])]:
            if isinstance(p, dict) and p.get("in") in _PARAM_LOCATIONS and "name" in p:
                if p["in"] == "header" and p["name"].lower() in fixed:
                    continue  # a header the host sets (e.g. the episode id) is not the model's
                params[(p["in"], p["name"])] = p
        self.params = list(params.values())
        self.body_schema: dict | None = None
        self.body_required = False
        body = operation.get("requestBody")
        if isinstance(body, dict):
            content = body.get("content", {})
            media = next((m for m in content if m.split(";")[0].strip().endswith("json")), None)
            if media is None and content:
                raise ValueError(f"{method.upper()} {path}: only JSON request bodies are supported")
            if media is not None:
                self.body_schema = _json_schema(content[media].get("schema", {}))
                self.body_required = bool(body.get("required", False))
        self.body_key: str | None = None  # set when the body is passed whole under one argument
        self.body_props: list[str] = []
        self.parameters = self._schema()

    def _schema(self) -> dict:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for p in self.params:
            prop = _json_schema(p.get("schema", {"type": "string"}))
            if p.get("description"):
                prop["description"] = p["description"]
            properties[p["name"]] = prop
            if p.get("required") or p["in"] == "path":
                required.append(p["name"])
        body = self.body_schema
        if body is not None:
            props = body.get("properties") if body.get("type", "object") == "object" else None
            if isinstance(props, dict) and not set(props) & set(properties):
                for name, prop in props.items():
                    properties[name] = prop
                    self.body_props.append(name)
                if self.body_required:
                    required += [r for r in body.get("required", []) if r in props]
            else:
                self.body_key = "body"
                while self.body_key in properties:
                    self.body_key = "_" + self.body_key
                properties[self.body_key] = body
                if self.body_required:
                    required.append(self.body_key)
        return {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }

    def request_parts(self, args: dict) -> tuple[str, dict, dict, Any]:
        """(path, query, headers, json body or None) for `args`."""
        path, query, headers = self.path, {}, {}
        for p in self.params:
            name = p["name"]
            if name not in args or args[name] is None:
                continue
            value = args[name]
            if p["in"] == "path":
                text = _scalar_text(value)
                if text in ("", ".", ".."):
                    raise ToolError(f"argument '{name}' is not a valid path segment: {text!r}")
                path = path.replace("{" + name + "}", quote(text, safe=""))
            elif p["in"] == "query":
                query[name] = value if isinstance(value, list) else _scalar_text(value)
            else:
                text = _scalar_text(value)
                if any(c in text for c in "\r\n\0"):
                    raise ToolError(f"header argument '{name}' contains a line break")
                headers[name] = text
        if "{" in path:
            raise ToolError(f"missing path arguments for {self.path}")
        body = None
        if self.body_key is not None:
            body = args.get(self.body_key)
        elif self.body_props:
            present = {k: args[k] for k in self.body_props if k in args}
            body = present if present or self.body_required else None
        return path, query, headers, body


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _error_message(data: bytes, reason: str) -> str:
    """The service's own error text: the `error`/`detail`/`message` field of a JSON body."""
    text = data[:2000].decode("utf-8", errors="replace")
    try:
        parsed = json.loads(data)
    except ValueError:
        return text.strip()[:500] or reason
    if isinstance(parsed, dict):
        for key in ("error", "detail", "message"):
            if isinstance(parsed.get(key), str):
                return parsed[key][:500]
    return json.dumps(parsed)[:500]


def _call(
    client: httpx.Client,
    allow: _AllowList,
    method: str,
    url: str,
    query: dict,
    headers: dict,
    body: Any,
) -> Any:
    """Send one request, following redirects only inside the allow-list."""
    for _ in range(MAX_REDIRECTS + 1):
        if not allow.allows(url):
            raise ToolError(f"refused: {url} is not an allowed address for this API")
        try:
            request = client.build_request(
                method, url, params=query or None, headers=headers, json=body
            )
            response = client.send(request, stream=True)
            try:
                data = read_limited(response, MAX_RESPONSE_BYTES, "response")
            finally:
                response.close()
        except httpx.TimeoutException:
            raise ToolError(f"request to {url} timed out") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"request to {url} failed: {type(exc).__name__}") from None
        if response.is_redirect:
            url = urljoin(str(response.url), response.headers.get("location", ""))
            if response.status_code in (301, 302, 303) and method != "HEAD":
                method, body = "GET", None
            query = {}
            continue
        if response.status_code >= 400:
            message = _error_message(data, response.reason_phrase)
            raise ToolError(f"HTTP {response.status_code}: {message}")
        if not data:
            return {"status": response.status_code}
        if "json" in response.headers.get("content-type", ""):
            try:
                return json.loads(data)
            except ValueError:
                raise ToolError("the service returned malformed JSON") from None
        return data.decode("utf-8", errors="replace")
    raise ToolError(f"too many redirects (more than {MAX_REDIRECTS})")


def make_openapi_tools(
    spec: dict | str | Path,
    *,
    base_url: str | None = None,
    allowed_base_urls: list[str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> list[ToolDefinition]:
    """One `ToolDefinition` per operation of `spec`, calling the API at `base_url`.

    `base_url` defaults to the spec's first server URL; requests (and redirects) may only reach
    `allowed_base_urls` (default: just the base URL). `headers` are sent with every request and
    cannot be set by the model (the flight tools pass the episode id this way).
    """
    doc = load_spec(spec)
    base = base_url or next(
        (s.get("url") for s in doc.get("servers", []) if isinstance(s, dict)), None
    )
    if not base:
        raise ValueError("no base_url given and the spec has no servers entry")
    base = base.rstrip("/")
    _origin(base)  # validates scheme and host
    allow = _AllowList(allowed_base_urls or [base])
    if not allow.allows(base + "/"):
        raise ValueError(f"base_url {base} is not among allowed_base_urls")
    fixed_headers = dict(headers or {})
    fixed = {h.lower() for h in fixed_headers}

    client = http_client(timeout)  # one pooled client per tool set

    tools: list[ToolDefinition] = []
    seen: set[str] = set()
    for path, item in doc["paths"].items():
        item = resolve_refs(item, doc)
        if not isinstance(item, dict):
            continue
        for method in METHODS:
            operation = item.get(method)
            if not isinstance(operation, dict):
                continue
            name = _tool_name(operation, method, path)
            if name in seen:
                raise ValueError(f"two operations share the tool name {name!r}")
            seen.add(name)
            op = _Operation(method, path, operation, item.get("parameters", []), fixed)
            description = (
                " ".join(s for s in (operation.get("summary"), operation.get("description")) if s)
                or f"{method.upper()} {path}"
            )
            tools.append(_make_tool(name, description, op, base, allow, fixed_headers, client))
    return tools


def _make_tool(
    name: str,
    description: str,
    op: _Operation,
    base: str,
    allow: _AllowList,
    fixed_headers: dict,
    client: httpx.Client,
) -> ToolDefinition:
    definition: ToolDefinition

    def call_operation(**arguments: Any) -> Any:
        problem = definition.validate(arguments)
        if problem:
            raise ToolError(problem)
        path, query, headers, body = op.request_parts(arguments)
        return _call(
            client,
            allow,
            op.method,
            base + path,
            query,
            {**headers, **fixed_headers},
            body,
        )

    definition = ToolDefinition(
        name=name,
        description=description,
        parameters=op.parameters,
        function=call_operation,
        metadata={"method": op.method, "path": op.path, "base_url": base},
    )
    return definition
