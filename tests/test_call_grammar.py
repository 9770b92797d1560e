"""The grammar of constrained decoding: which turns can still end with valid tool calls."""

import json
import random

import pytest
import torch

from tooltune.call_grammar import CallGrammar
from tooltune.policies.constrained import TokenPieces, best_allowed, constrain
from tooltune.tasks.bfcl import to_openai_tool

BOOK = {
    "name": "book_room",
    "description": "Book a room.",
    "parameters": {
        "type": "dict",  # BFCL's type names
        "properties": {
            "city": {"type": "string"},
            "nights": {"type": "integer"},
            "budget": {"type": "float"},
            "view": {"type": "string", "enum": ["sea", "city"]},
            "guests": {"type": "array", "items": {"type": "string"}},
            "breakfast": {"type": "boolean"},
            "note": {"type": ["string", "null"]},
        },
        "required": ["city", "nights"],
    },
}
GRAMMAR_TOOLS = [to_openai_tool(BOOK), to_openai_tool({"name": "ping"})]
GRAMMAR = CallGrammar(GRAMMAR_TOOLS)


def call(arguments: dict, name: str = "book_room") -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>{body}</tool_call>"


VALID = [
    call({"city": "Oslo", "nights": 2}),
    call({"nights": 3, "city": 'Lisboa "Baixa"', "budget": 80, "view": "sea"}),
    call(
        {
            "city": "Köln",
            "nights": 1,
            "budget": -1.5e2,
            "guests": ["Ann", "Bo"],
            "breakfast": True,
            "note": None,
        }
    ),  # fmt: skip
    call({}, name="ping"),
]


@pytest.mark.parametrize("text", VALID)
def test_every_prefix_of_a_valid_call_is_allowed(text):
    turn = "<think>Book it.</think>\n" + text + "\nDone."
    assert all(GRAMMAR.allows(turn[:n]) for n in range(len(turn) + 1))
    assert GRAMMAR.closed(turn)
    assert not GRAMMAR.closed(turn[: turn.index("</tool_call>")])


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "book_hotel"',  # not an offered tool
        '<tool_call>{"name": "book_room", "arguments": {"town"',  # not a declared argument
        '<tool_call>{"name": "book_room", "arguments": {"city": "A", "city"',  # twice
        '<tool_call>{"name": "book_room", "arguments": {"nights": 2.',  # integer
        '<tool_call>{"name": "book_room", "arguments": {"nights": "2',  # a string for integer
        '<tool_call>{"name": "book_room", "arguments": {"city": Oslo',  # unquoted string
        '<tool_call>{"name": "book_room", "arguments": {"view": "mountain',  # outside the enum
        '<tool_call>{"name": "book_room", "arguments": {"view": "s\\u',  # escapes lead away
        '<tool_call>{"name": "book_room", "arguments": {"city": "A"}',  # nights is required
        '<tool_call>{"name": "book_room", "arguments": {"city": "A\nB',  # raw newline
        '<tool_call>{"name": "book_room", "arguments": {"guests": ["A"}',  # unclosed array
        '<tool_call>{"name": "book_room", "arguments": {"breakfast": tru3',
        '<tool_call>{"name": "book_room", "arguments": {\n',  # not the trained layout
        '<tool_call>{"name": "ping", "arguments": {}}<tool_call>',  # not closed
        '<tool_call>{"name": "ping", "arguments": {}}</tool_call><tool_call>{"name": "x',
    ],
)
def test_a_call_that_breaks_the_schema_is_refused(text):
    assert not GRAMMAR.allows(text)


def test_hermes_templates_may_put_the_json_on_its_own_line():
    text = '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>'
    assert all(GRAMMAR.allows(text[:n]) for n in range(len(text) + 1)) and GRAMMAR.closed(text)
    assert not GRAMMAR.allows("<tool_call>\n\n")
    assert not GRAMMAR.allows('<tool_call>{"name": "ping", "arguments": {}}\n\n')


def test_text_outside_calls_is_free():
    assert GRAMMAR.allows('I cannot book rooms in Oslo { } " \\ 12.5')
    assert GRAMMAR.closed("No call needed.")


def test_an_earlier_checked_call_is_not_read_again():
    good = call({}, name="ping") + " then "
    text = good + '<tool_call>{"name": "pi'
    assert GRAMMAR.allows(text, start=len(good))
    assert GRAMMAR.allows("<tool_call>{bad}</tool_call> " + text, start=len(good) + 30)


def test_the_best_allowed_token_replaces_a_refused_one():
    """The model's first choice stands where it is allowed; a refused one gives way to the
    most likely allowed token, and a refused end of turn inside a call too."""
    pieces = ['<tool_call>{"name": "', "ping", "pong", '", "arguments": {}}', "</tool_call>", "!"]
    eos = {6}
    logits = torch.tensor([[0.0, 1.0, 3.0, 0.5, 0.2, 0.1, 2.0]])  # "pong" first, then the end
    text = pieces[0]
    out, after = constrain([(2, -0.1)], GRAMMAR, text, logits[0], pieces, eos)
    assert [t for t, _ in out] == [1] and after == text + "ping"
    assert out[0][1] == pytest.approx(float(torch.log_softmax(logits[0], -1)[1]))
    # guesses after a replaced token are dropped; an allowed first choice is kept as it is
    rows = torch.tensor([[0.0, 5.0, 0, 0, 0, 0, 0], [0.0, 0, 0, 5.0, 0, 0, 0], [0.0] * 7])
    out, _ = constrain([(1, -1.0), (2, -1.0), (3, -1.0)], GRAMMAR, text, rows, pieces, eos)
    assert [t for t, _ in out] == [1, 3]
    out, _ = constrain([(6, -0.5)], GRAMMAR, text + "ping", logits[0], pieces, eos)
    assert out[0][0] != 6


FIXED = {"name": "fixed", "parameters": {"type": "object", "properties": {},
                                        "additionalProperties": False}}  # fmt: skip


def walk(grammar: CallGrammar, text: str, rng: random.Random) -> str:
    """A random walk over single characters the grammar allows, until the call closes;
    asserts that every step has one (no dead ends)."""
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "é"]
    for _ in range(600):
        if grammar.closed(text):
            return text
        options = [c for c in alphabet if grammar.allows(text + c, len(text))]
        assert options, text
        # mostly the characters that move a call on, so walks reach values and closings
        structural = [c for c in options if c in '{}[]",:-.0123456789tfn <']
        text += rng.choice(structural if structural and rng.random() < 0.6 else options)
    return text


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["book_room", "ping", "fixed"])
def test_an_allowed_text_always_has_an_allowed_next_character(name, seed):
    """No dead ends: a decoder that follows the grammar can always go on, to a closed call."""
    grammar = CallGrammar([*GRAMMAR_TOOLS, FIXED])
    text = walk(grammar, f'<tool_call>{{"name": "{name}", "arguments": ', random.Random(seed))
    assert grammar.closed(text)


def test_the_search_by_first_character_finds_the_best_allowed_token():
    """Reading the tokens whose first character the grammar allows first finds the token a
    search through every token finds."""
    rng = random.Random(0)
    vocab = ["}", "}}", ",", ", ", ', "', '"', "ci", "city", "ty", "ni", "nights", '": ',
             ": ", "2", "25", ".5", "é", "Köln", "O", "slo", " ", "\n", "</tool_call>",
             "<tool_call>", '{"name": "', "book_room", '", "arguments": {', "sea", "tr",
             "ue"]  # fmt: skip
    texts = ['<tool_call>{"name": "book_room", "arguments": {',
             '<tool_call>{"name": "book_room", "arguments": {"city": "O',
             '<tool_call>{"name": "book_room", "arguments": {"city": "Oslo"',
             '<tool_call>{"name": "book_room", "arguments": {"city": "Oslo", "nights": 2',
             '<tool_call>{"name": "book_room", "arguments": {"view": "',
             "Let me see. "]  # fmt: skip
    for text in texts:
        for _ in range(100):
            logits = torch.tensor([rng.gauss(0, 3) for _ in range(len(vocab) + 1)])
            eos = {len(vocab)}
            fast = best_allowed(GRAMMAR, text, logits, TokenPieces(vocab), eos)
            assert fast == best_allowed(GRAMMAR, text, logits, list(vocab), eos)


def test_entries_without_a_name_are_left_out():
    grammar = CallGrammar([{"function": {"description": "no name"}}, "junk", to_openai_tool(BOOK)])
    assert list(grammar.parameters) == ["book_room"]
    assert not grammar.allows('<tool_call>{"name": "x')
