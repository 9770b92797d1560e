"""tooltune's text format: ChatML-style turns, tools in the system prompt, calls as tags.

    <|im_start|>system\n...tools...<|im_end|>\n
    <|im_start|>user\nquestion<|im_end|>\n
    <|im_start|>assistant\n<think>plan</think>\n<tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>\n
    <|im_start|>tool\n<tool_response>{"name": ..., "result": ...}</tool_response><|im_end|>\n
    <|im_start|>assistant\nthe answer<|im_end|>\n

Parsing model text never raises: a call that is not valid JSON, has no name, has non-object
arguments, names an unknown tool or is cut off becomes a `ToolCall` with `parse_error` set, which
the registry answers with a failed response the model can learn from.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Collection, Iterable
from typing import Any

from tooltune.types import AgentAction, ToolCall, ToolResponse

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"
PAD = "<|pad|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = [
    PAD, END_OF_TEXT, IM_START, IM_END, TOOL_CALL_OPEN, TOOL_CALL_CLOSE,
    THINK_OPEN, THINK_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE,
]  # fmt: skip

SYSTEM_INSTRUCTIONS = (
    "You are a helpful assistant that answers by using tools. "
    'To call a tool, write <tool_call>{"name": tool name, "arguments": JSON object}</tool_call>. '
    "Calls that do not depend on each other go in the same turn. Tool results come back in a "
    "tool turn. When you know the answer, reply with it and make no call. When no tool can "
    "help, say so and make no call."
)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


# "native": the model's own chat template lists the tools and frames the turns
# (tooltune.native_template), so tooltune's system prompt is not used
TOOL_STYLES = ("json", "compact", "names", "native")


def build_system_prompt(
    tools: Iterable[dict[str, Any]],
    instructions: str = SYSTEM_INSTRUCTIONS,
    style: str = "json",
) -> str:
    """System prompt with the tools: `json` lists OpenAI tool entries, one per line (what
    pretrained chat models know); `compact` writes one signature line per tool (fewer tokens
    for small models); `names` only names the tools offered, without the instructions, for a
    model trained from scratch: it cannot read prose and learns the call format and each
    tool's arguments from its demonstrations (every step of training and rollout attends over
    the system prompt: 31 tokens of the built-in tokenizer for a typical set, against 106
    with the instructions)."""
    tools = list(tools)
    if style == "json":
        lines = [json.dumps(t, ensure_ascii=False) for t in tools]
    elif style == "compact":
        lines = [_compact_signature(t) for t in tools]
    elif style == "names":
        return "<tools>\n" + ", ".join(t.get("function", t)["name"] for t in tools) + "\n</tools>"
    elif style == "native":
        raise ValueError(
            "the native tool style prompts through the model's own chat template "
            "(tooltune.native_template), which lists the tools itself; tooltune's system prompt "
            "takes json, compact or names"
        )
    else:
        raise ValueError(f"unknown tool style {style!r}; use one of {', '.join(TOOL_STYLES)}")
    return f"{instructions}\n<tools>\n" + "\n".join(lines) + "\n</tools>"


def _compact_signature(entry: dict[str, Any]) -> str:
    fn = entry.get("function", entry)
    schema = fn.get("parameters", {})
    required = set(schema.get("required", []))
    params = []
    for name, info in schema.get("properties", {}).items():
        options = info["anyOf"] if "anyOf" in info and "enum" not in info else [info]
        kind = "|".join(_type_text(option) for option in options)
        params.append(f"{name}{'' if name in required else '?'}: {kind}")
    return f"{fn['name']}({', '.join(params)}) - {first_sentence(fn.get('description', ''))}"


def _type_text(info: dict[str, Any]) -> str:
    """`"a"|"b"` for an enum, `integer|null` for a list of types, `any` without a type."""
    if "enum" in info:
        return "|".join(map(json.dumps, info["enum"]))
    kind = info.get("type", "any")
    return "|".join(kind) if isinstance(kind, list) else kind


def first_sentence(text: str) -> str:
    """The text up to its first full stop; "e.g." and "i.e." end no sentence, so a tool's
    example ("Evaluate an arithmetic expression exactly, e.g. "2**100", ...") stays whole.
    (The exported chat template cuts the same way.)"""
    return re.split(r"(?<!e\.g)(?<!i\.e)\. ", text)[0].rstrip(".")


def render_turn(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def assistant_header() -> str:
    return f"{IM_START}assistant\n"


def render_prompt(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Render `{"role", "content"}` messages (content already in tooltune's text form)."""
    text = "".join(render_turn(m["role"], m["content"]) for m in messages)
    return text + assistant_header() if add_generation_prompt else text


def render_call(call: ToolCall) -> str:
    if call.parse_error and call.raw is not None:
        return call.raw
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    # A JSON string may contain the closing tag or think markers, which the parser would take
    # for structure; "\/" and "\u003c" are legal JSON escapes for "/" and "<".
    body = body.replace(TOOL_CALL_CLOSE, "<\\/tool_call>")
    body = body.replace(THINK_OPEN, "\\u003cthink>").replace(THINK_CLOSE, "\\u003c/think>")
    body = body.replace("<|", "\\u003c|")  # <|im_end|>, <|pad|>...: the parser stops at them
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def render_action(action: AgentAction) -> str:
    """The assistant text for an action (without the turn markers)."""
    parts = []
    if action.thinking:
        parts.append(f"{THINK_OPEN}{action.thinking}{THINK_CLOSE}")
    if action.content:
        parts.append(action.content)
    parts.extend(render_call(c) for c in action.tool_calls)
    return "\n".join(parts)


def format_observation(responses: Iterable[ToolResponse], max_chars: int = 2000) -> str:
    """The content of the tool turn that answers one assistant turn: one block per call."""
    blocks = []
    for response in responses:
        item: dict[str, Any] = {"name": response.name}
        if response.success:
            item["result"] = _clip(response.result, max_chars)
        else:
            item["error"] = _clip(response.error or "unknown error", max_chars)
        blocks.append(
            f"{TOOL_RESPONSE_OPEN}{json.dumps(item, ensure_ascii=False)}{TOOL_RESPONSE_CLOSE}"
        )
    return "\n".join(blocks)


def _clip(value: Any, max_chars: int) -> Any:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) <= max_chars:
        return value
    return text[:max_chars] + f"... [{len(text) - max_chars} more characters cut]"


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_THINK = re.compile(re.escape(THINK_OPEN) + r"(.*?)" + re.escape(THINK_CLOSE), re.DOTALL)
_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)
_TRAILING = (IM_END, END_OF_TEXT, PAD)


def parse_action(
    text: str, known_tools: Collection[str] | None = None, id_prefix: str = "call"
) -> AgentAction:
    """Model text -> `AgentAction`. Never raises; problems are recorded on the calls."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    for marker in _TRAILING:
        text = text.split(marker, 1)[0]

    thinking_parts = [m.strip() for m in _THINK.findall(text)]
    rest = _THINK.sub("", text)
    if THINK_OPEN in rest:  # cut off inside <think>: it is all thinking
        before, after = rest.split(THINK_OPEN, 1)
        thinking_parts.append(after.strip())
        rest = before
    # a stray </think> stays until the calls are found: removing it first could join a marker

    calls: list[ToolCall] = []
    for body in _CALL.findall(rest):
        calls.append(parse_call(body, f"{id_prefix}_{len(calls)}", known_tools))
    rest = _CALL.sub("", rest)
    if TOOL_CALL_OPEN in rest:  # an unterminated call, e.g. generation ran out of tokens
        rest, tail = rest.split(TOOL_CALL_OPEN, 1)
        calls.append(
            ToolCall(
                id=f"{id_prefix}_{len(calls)}",
                name="",
                arguments={},
                parse_error=f"tool call not closed: {TOOL_CALL_OPEN} needs a matching {TOOL_CALL_CLOSE}",
                raw=TOOL_CALL_OPEN + tail,
            )
        )
    content = _without_markers(rest).strip()
    thinking = "\n".join(p for p in thinking_parts if p)
    kind = "tool_call" if calls else ("respond" if content else "think")
    return AgentAction(type=kind, content=content, tool_calls=calls, thinking=thinking)


def _without_markers(text: str) -> str:
    """Text with no call or thinking marker left, also none that removing one joins together
    (``<tool</tool_call>_call>``), so the answer never renders as a call."""
    markers = (TOOL_CALL_OPEN, TOOL_CALL_CLOSE, THINK_OPEN, THINK_CLOSE)
    while any(m in text for m in markers):
        for m in markers:
            text = text.replace(m, "")
    return text


def parse_call(body: str, call_id: str, known_tools: Collection[str] | None) -> ToolCall:
    """The JSON body of one call (``{"name": ..., "arguments"|"parameters": {...}}``) as a
    `ToolCall`; a problem becomes its `parse_error` (``raw`` is the body in call tags)."""
    raw = f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"

    def error(message: str, name: str = "") -> ToolCall:
        return ToolCall(id=call_id, name=name, arguments={}, parse_error=message, raw=raw)

    try:
        data = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        return error(
            f'tool call is not valid JSON ({msg}); write {{"name": ..., "arguments": {{...}}}}'
        )
    if not isinstance(data, dict):
        return error('tool call must be a JSON object with "name" and "arguments"')
    name = data.get("name")
    if not isinstance(name, str) or not name:
        return error('tool call has no "name" (a non-empty string)')
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # some models double-encode arguments
        with contextlib.suppress(json.JSONDecodeError):
            arguments = json.loads(arguments)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return error(f'"arguments" of {name} must be a JSON object', name)
    if known_tools is not None and name not in known_tools:
        available = ", ".join(sorted(known_tools)) or "none"
        return error(f"unknown tool {name!r}; available tools: {available}", name)
    return ToolCall(id=call_id, name=name, arguments=arguments)


def parse_prompt(text: str) -> list[dict[str, str]]:
    """Split rendered text back into `{"role", "content"}` messages (an open last turn, such
    as the assistant header, is returned with the content written so far)."""
    messages = []
    for chunk in text.split(IM_START)[1:]:
        role, _, content = chunk.partition("\n")
        closed = IM_END in content
        content = content.split(IM_END, 1)[0]
        if closed or content:
            messages.append({"role": role.strip(), "content": content})
    return messages
