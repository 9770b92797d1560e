import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tooltune.chat_format import (
    IM_END,
    build_system_prompt,
    format_observation,
    parse_action,
    parse_prompt,
    render_action,
    render_prompt,
)
from tooltune.types import AgentAction, ToolCall, ToolResponse

TAGS = ("<", ">", "|")
plain_text = st.text(
    alphabet=st.characters(blacklist_characters="<>|", blacklist_categories=("Cs",)), max_size=60
).map(str.strip)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
calls = st.builds(
    lambda name, args: ToolCall(id="", name=name, arguments=args),
    names,
    st.dictionaries(st.text(max_size=10), json_values, max_size=4),
)


@st.composite
def actions(draw):
    tool_calls = draw(st.lists(calls, max_size=4))
    content = draw(plain_text)
    thinking = draw(plain_text)
    kind = "tool_call" if tool_calls else ("respond" if content else "think")
    return AgentAction(type=kind, content=content, tool_calls=tool_calls, thinking=thinking)


def _strip_ids(action):
    return (
        action.type,
        action.content,
        action.thinking,
        [(c.name, c.arguments, c.parse_error) for c in action.tool_calls],
    )


@settings(max_examples=300, deadline=None)
@given(actions())
def test_render_then_parse_is_identity(action):
    parsed = parse_action(render_action(action) + IM_END)
    assert _strip_ids(parsed) == _strip_ids(action)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises(text):
    action = parse_action(text, known_tools={"search"})
    assert action.type in ("think", "tool_call", "respond")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "<tool_call>",
                "</tool_call>",
                "<think>",
                "</think>",
                "{",
                "}",
                '"name"',
                ":",
                '"x"',
                "[",
                "]",
                ",",
                "a",
                " ",
                "\n",
                '"arguments"',
            ]
        ),
        max_size=40,
    )
)
def test_tag_soup_never_raises(pieces):
    parse_action("".join(pieces), known_tools={"x"})


def test_one_megabyte_of_random_text():
    rng = random.Random(0)
    text = "".join(chr(rng.randrange(0, 0x2FFF)) for _ in range(1_000_000))
    parse_action(text)
    parse_action("<tool_call>" + text)


def test_several_calls_think_and_answer():
    text = '<think>need two facts</think>\nLet me look.\n<tool_call>{"name": "a", "arguments": {"q": 1}}</tool_call>\n<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    action = parse_action(text)
    assert (
        action.type == "tool_call"
        and action.thinking == "need two facts"
        and action.content == "Let me look."
    )
    assert [(c.id, c.name, c.arguments) for c in action.tool_calls] == [
        ("call_0", "a", {"q": 1}),
        ("call_1", "b", {}),
    ]
    answer = parse_action("<think>done</think>The answer is 42.<|im_end|>garbage")
    assert answer.type == "respond" and answer.content == "The answer is 42."
    assert parse_action("<think>still thinking").type == "think"


def test_malformed_calls_are_recorded_errors():
    cases = {
        '<tool_call>{"name": "a", "arguments": {</tool_call>': "not valid JSON",
        '<tool_call>{"arguments": {}}</tool_call>': 'no "name"',
        '<tool_call>{"name": "a", "arguments": [1]}</tool_call>': "must be a JSON object",
        '<tool_call>["a"]</tool_call>': "must be a JSON object",
        '<tool_call>{"name": "zap", "arguments": {}}</tool_call>': "unknown tool 'zap'; available tools: a",
        '<tool_call>{"name": "a", "argu': "not closed",
        "<tool_call>" + "[" * 100000 + "</tool_call>": "not valid JSON",
    }
    for text, fragment in cases.items():
        action = parse_action(text, known_tools={"a"})
        assert action.type == "tool_call", text
        (call,) = action.tool_calls
        assert call.parse_error and fragment in call.parse_error, (text, call.parse_error)
        assert call.raw


def test_double_encoded_arguments_accepted():
    action = parse_action('<tool_call>{"name": "a", "arguments": "{\\"x\\": 2}"}</tool_call>')
    assert action.tool_calls[0].arguments == {"x": 2}


def test_closing_tag_inside_arguments_survives():
    action = AgentAction("tool_call", "", [ToolCall("", "a", {"s": "</tool_call> tricky"})])
    assert parse_action(render_action(action)).tool_calls[0].arguments == {
        "s": "</tool_call> tricky"
    }


def test_prompt_rendering_and_parse_prompt():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "a",
                "description": "A tool",
                "parameters": {
                    "type": "object",
                    "properties": {"q": {"type": "string"}},
                    "required": ["q"],
                },
            },
        }
    ]
    system = build_system_prompt(tools)
    assert '"name": "a"' in system and "<tools>" in system
    assert "a(q: string) - A tool" in build_system_prompt(tools, style="compact")
    b = {"type": "function", "function": {**tools[0]["function"], "name": "b"}}
    assert build_system_prompt([*tools, b], style="names") == "<tools>\na, b\n</tools>"  # no prose
    with pytest.raises(ValueError, match="tool style"):
        build_system_prompt(tools, style="yaml")
    text = render_prompt([{"role": "system", "content": system}, {"role": "user", "content": "hi"}])
    assert text.endswith("<|im_start|>assistant\n")
    messages = parse_prompt(text)
    assert [m["role"] for m in messages] == ["system", "user"] and messages[1]["content"] == "hi"


def test_observation_format_and_clipping():
    obs = format_observation(
        [
            ToolResponse("1", True, {"x": 1}, name="a"),
            ToolResponse("2", False, None, error="boom", name="b"),
            ToolResponse("3", True, "y" * 50, name="c"),
        ],
        max_chars=10,
    )
    blocks = obs.split("\n")
    assert json.loads(blocks[0][len("<tool_response>") : -len("</tool_response>")]) == {
        "name": "a",
        "result": {"x": 1},
    }
    assert '"error": "boom"' in blocks[1]
    assert "40 more characters cut" in blocks[2]
