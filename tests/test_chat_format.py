import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tooltune.chat_format import (
    END_OF_TEXT,
    IM_END,
    PAD,
    THINK_CLOSE,
    THINK_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    build_system_prompt,
    format_observation,
    parse_action,
    parse_prompt,
    render_action,
    render_prompt,
)
from tooltune.types import AgentAction, ToolCall, ToolResponse

TAGS = ("<", ">", "|")
MARKERS = (TOOL_CALL_OPEN, TOOL_CALL_CLOSE, THINK_OPEN, THINK_CLOSE)
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
def test_tag_soup_gives_known_calls_or_recorded_errors_and_no_stray_markers(pieces):
    text = "".join(pieces)
    action = parse_action(text, known_tools={"x"})
    kind = "tool_call" if action.tool_calls else ("respond" if action.content else "think")
    assert action.type == kind
    assert len(action.tool_calls) <= text.count(TOOL_CALL_OPEN)  # a call needs its marker
    for i, call in enumerate(action.tool_calls):
        assert call.id == f"call_{i}"
        if call.parse_error is None:  # parsed: a known tool with an arguments object
            assert call.name == "x" and isinstance(call.arguments, dict) and call.raw is None
        else:  # not parsed: the reason, and the text the model wrote, kept for the feedback
            assert call.parse_error.strip() and call.arguments == {}
            assert call.raw.startswith(TOOL_CALL_OPEN)
    unclosed = [c for c in action.tool_calls if c.parse_error and "not closed" in c.parse_error]
    assert unclosed in ([], action.tool_calls[-1:])  # only the last call can run to the end
    # no marker is left in the answer; a closing think marker never inside the thinking
    assert not any(marker in action.content for marker in MARKERS), action.content
    assert THINK_CLOSE not in action.thinking
    assert action.content == action.content.strip()
    if THINK_OPEN not in text:  # nothing is thinking, and every <tool_call> makes a call
        assert action.thinking == ""
        assert bool(action.tool_calls) == (TOOL_CALL_OPEN in text)


def test_one_megabyte_of_random_text():
    rng = random.Random(0)
    text = "".join(chr(rng.randrange(0, 0x2FFF)) for _ in range(1_000_000))
    assert not any(m in text for m in (*MARKERS, IM_END, END_OF_TEXT, PAD))  # all > 8 chars
    plain = parse_action(text)  # no markers: all of it is the answer, stripped
    assert plain.type == "respond" and plain.tool_calls == [] and plain.thinking == ""
    assert plain.content == text.strip()
    cut = parse_action(TOOL_CALL_OPEN + text)  # the call runs to the end: one unclosed call
    (call,) = cut.tool_calls
    assert call.name == "" and call.arguments == {} and "not closed" in call.parse_error
    assert call.raw == TOOL_CALL_OPEN + text
    assert cut.type == "tool_call" and cut.content == "" and cut.thinking == ""
    closed = parse_action(TOOL_CALL_OPEN + text + TOOL_CALL_CLOSE)  # closed: a JSON error
    (call,) = closed.tool_calls
    assert (
        "not valid JSON" in call.parse_error and call.raw == TOOL_CALL_OPEN + text + TOOL_CALL_CLOSE
    )
    assert closed.content == ""


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
    described = {**tools[0]["function"], "description": 'Add, e.g. "1+2", i.e. sums. Returns x.'}
    assert '- Add, e.g. "1+2", i.e. sums\n' in build_system_prompt(
        [{"type": "function", "function": described}], style="compact"
    )  # "e.g." and "i.e." end no sentence
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


def test_removing_a_stray_marker_never_joins_a_new_one():
    """`<tool</tool_call>_call>` loses its stray `</tool_call>`; what is left must not be a marker."""
    for text in (
        "<tool</tool_call>_call>x",
        "<thi</think>nk>x</tool_call>",
        "a<tool_c</think>all>b",
    ):
        action = parse_action(text)
        assert not action.tool_calls and action.type == "respond"
        for marker in ("<tool_call>", "</tool_call>", "<think>", "</think>"):
            assert marker not in action.content
