"""Which turns can still end with valid tool calls: the grammar of constrained decoding.

A decoder that asks `CallGrammar.allows` of its best token, and of the next best when the
answer is no, writes only calls that name an offered tool and give its declared arguments,
each once, of its declared type (an enum's values exactly), the required ones all present, in
well-formed JSON (as vLLM's guided decoding and llama.cpp's grammars do for a JSON schema).
Text outside calls is free: whether to call at all, and with which values, stays the model's
choice. The call format is tooltune's own (`tooltune.chat_format`), in the layout it renders
(``json.dumps``'s separators, the name first):
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, which Hermes/Qwen chat templates
also write (with the JSON on a line of its own, which is allowed). Free whitespace would give a
model that wants a refused key a way out that never ends (it wrote spaces until its budget ran
out).

The check parses the open call from its marker each time (a few hundred characters): a text
that runs out in the middle is a valid prefix (`_End`), one that breaks a rule is not (`_Bad`).
Every valid prefix can go on (no dead ends: a comma only where an argument is left, an escape
only where an allowed value has one), so greedy decoding under it always closes its calls.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from tooltune.chat_format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

# JSON schema type names (and BFCL's) -> the JSON kinds a value of that type starts as
_KINDS = {
    "string": {"string"},
    "integer": {"integer"},
    "number": {"integer", "number"},  # 3 is a number too
    "float": {"integer", "number"},
    "boolean": {"boolean"},
    "null": {"null"},
    "object": {"object"},
    "dict": {"object"},
    "array": {"array"},
    "tuple": {"array"},
}
_ANY = {"string", "integer", "number", "boolean", "null", "object", "array"}
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# a number longer than this is a model repeating digits, not a value
MAX_NUMBER_CHARS = 32


class _End(Exception):
    """The text ran out where the grammar still had a way on: a valid prefix."""


class _Bad(Exception):
    """The text broke a rule: no continuation makes it a valid call."""


def _kinds(schema: dict) -> set[str]:
    if "enum" in schema and schema["enum"]:
        return {_kind_of(v) for v in schema["enum"]}
    kind = schema.get("type")
    if kind is None:
        alternatives = schema.get("anyOf") or schema.get("oneOf")
        return set().union(*map(_kinds, alternatives)) if alternatives else set(_ANY)
    names = kind if isinstance(kind, list) else [kind]
    return set().union(*(_KINDS.get(str(n), _ANY) for n in names))


def _escaped(value: str) -> bool:
    """Whether JSON writes ``value`` with an escape."""
    return any(c in '"\\' or c < " " for c in value)


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "array" if isinstance(value, list) else "object"


def _part(schema: dict, kind: str) -> dict:
    """The alternative of an ``anyOf``/``oneOf`` schema that a value of ``kind`` follows."""
    for alternative in schema.get("anyOf") or schema.get("oneOf") or []:
        if kind in _kinds(alternative):
            return alternative
    return schema


class _Reader:
    """One pass over a call's text; every method raises `_End` where the text runs out."""

    def __init__(self, text: str, pos: int = 0) -> None:
        self.text, self.pos = text, pos

    def peek(self) -> str:
        if self.pos >= len(self.text):
            raise _End
        return self.text[self.pos]

    def take(self) -> str:
        char = self.peek()
        self.pos += 1
        return char

    def optional(self, char: str) -> None:
        if self.peek() == char:
            self.pos += 1

    def literal(self, word: str) -> None:
        for char in word:
            if self.take() != char:
                raise _Bad

    def string(self, allowed: Collection[str] | None = None) -> str:
        """A JSON string; with ``allowed``, one of those values (checked as it grows)."""
        if allowed is not None and not allowed:
            raise _Bad
        self.literal('"')
        out: list[str] = []
        while True:
            char = self.take()
            if char == '"':
                value = "".join(out)
                if allowed is not None and value not in allowed:
                    raise _Bad
                return value
            if char == "\\":
                if allowed is not None and not any(_escaped(a) for a in allowed):
                    raise _Bad  # an escape could only lead away from every allowed value
                code = self.take()
                if code == "u":
                    digits = "".join(self.take() for _ in range(4))
                    if any(d not in "0123456789abcdefABCDEF" for d in digits):
                        raise _Bad
                    char = chr(int(digits, 16))
                elif code in _ESCAPES:
                    char = _ESCAPES[code]
                else:
                    raise _Bad
            elif char < " ":  # a raw control character (a newline) is not JSON
                raise _Bad
            out.append(char)
            if allowed is not None:
                so_far = "".join(out)
                if not any(a.startswith(so_far) for a in allowed):
                    raise _Bad

    def number(self, integer: bool) -> None:
        start = self.pos
        try:
            if self.peek() == "-":
                self.pos += 1
            if not self.peek().isdigit():
                raise _Bad
            leading_zero = self.take() == "0"
            while self.peek().isdigit():
                if leading_zero:
                    raise _Bad
                self.pos += 1
            if self.peek() == "." and not integer:
                self.pos += 1
                if not self.take().isdigit():
                    raise _Bad
                while self.peek().isdigit():
                    self.pos += 1
            if self.peek() in "eE" and not integer:
                self.pos += 1
                if self.peek() in "+-":
                    self.pos += 1
                if not self.take().isdigit():
                    raise _Bad
                while self.peek().isdigit():
                    self.pos += 1
        finally:
            if self.pos - start > MAX_NUMBER_CHARS:
                raise _Bad
        if self.peek() in ".eE":  # a fraction or exponent where the type is integer
            raise _Bad

    def value(self, schema: dict) -> None:
        kinds = _kinds(schema)
        char = self.peek()
        if char == '"' and "string" in kinds:
            schema = _part(schema, "string")
            enum = schema.get("enum")
            self.string([v for v in enum if isinstance(v, str)] if enum else None)
        elif (char == "-" or char.isdigit()) and kinds & {"integer", "number"}:
            self.number(integer="number" not in kinds)
        elif char in "tf" and "boolean" in kinds:
            self.literal("true" if char == "t" else "false")
        elif char == "n" and "null" in kinds:
            self.literal("null")
        elif char == "{" and "object" in kinds:
            self.object(_part(schema, "object"))
        elif char == "[" and "array" in kinds:
            self.array(_part(schema, "array"))
        else:
            raise _Bad

    def object(self, schema: dict) -> None:
        """An object of ``schema``'s properties (any keys where it declares none), each key
        once, the required ones all present."""
        properties = schema.get("properties")
        free = not properties and schema.get("additionalProperties") is not False
        required = set(schema.get("required") or [])
        seen: set[str] = set()
        self.literal("{")
        if self.peek() != "}":
            while True:
                left = None if free else [k for k in properties or {} if k not in seen]
                key = self.string(left)
                if key in seen:
                    raise _Bad
                seen.add(key)
                self.literal(": ")
                self.value((properties or {}).get(key, {}))
                if self.peek() != ",":
                    break
                if not free and not [k for k in properties or {} if k not in seen]:
                    raise _Bad  # no argument is left to follow the comma
                self.literal(", ")
        if self.take() != "}" or not required <= seen:
            raise _Bad

    def array(self, schema: dict) -> None:
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        self.literal("[")
        if self.peek() != "]":
            while True:
                self.value(items)
                if self.peek() != ",":
                    break
                self.literal(", ")
        self.literal("]")


class CallGrammar:
    """The calls a turn may make with ``tools`` (OpenAI ``tools`` entries)."""

    def __init__(self, tools: list[dict], open_: str = TOOL_CALL_OPEN,
                 close: str = TOOL_CALL_CLOSE) -> None:  # fmt: skip
        functions = [t.get("function", t) for t in tools if isinstance(t, dict)]
        self.parameters = {f["name"]: f.get("parameters") or {} for f in functions
                           if isinstance(f.get("name"), str)}  # fmt: skip
        self.open, self.close = open_, close

    def allows(self, text: str, start: int = 0) -> bool:
        """Whether the turn ``text`` can still be completed into one whose every call is
        valid. Calls that closed before ``start`` (the text an earlier check allowed) are not
        read again."""
        at = text.rfind(self.open, 0, start + len(self.open) - 1)
        at = at if at >= 0 else text.find(self.open)
        while at >= 0:
            after = at + len(self.open)
            following = text.find(self.open, after)
            segment = text[after:] if following < 0 else text[after:following]
            if not self._segment(segment, last=following < 0):
                return False
            at = following
        return True

    def closed(self, text: str) -> bool:
        """Whether no call is left open in ``text``: the turn may end here."""
        at = text.rfind(self.open)
        return at < 0 or self._complete(text[at + len(self.open) :])

    def _segment(self, segment: str, last: bool) -> bool:
        """A call and the free text after it (``last``: the text may stop inside it)."""
        try:
            self._call(segment)
        except _End:
            return last
        except _Bad:
            return False
        return True

    def _complete(self, segment: str) -> bool:
        try:
            self._call(segment)
        except (_End, _Bad):
            return False
        return True

    def _call(self, segment: str) -> None:
        reader = _Reader(segment)
        reader.optional("\n")  # Hermes/Qwen templates put the JSON on a line of its own
        reader.literal('{"name": ')
        name = reader.string(self.parameters)
        reader.literal(', "arguments": ')
        reader.object(self.parameters[name])
        reader.literal("}")
        reader.optional("\n")
        reader.literal(self.close)
