"""Greedy decoding under a call grammar, through the real decode loop."""

import pytest

transformers = pytest.importorskip("transformers")

from tooltune.call_grammar import CallGrammar  # noqa: E402
from tooltune.policies.hf import HFPolicy  # noqa: E402
from tooltune.rollout import SamplingParams  # noqa: E402

TEXT = '<tool_call>{"name": "search", "arguments": {"query": "capital of France", "k": 3}}'
TOOLS = [{"name": "search", "parameters": {
    "type": "object", "required": ["query"],
    "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
}}]  # fmt: skip


def test_constrained_rows_write_only_what_the_grammar_allows(tmp_path, tiny_qwen2, same_greedy):
    """A random model continuing an open call writes a call of the offered tool (where free
    it writes something else), checked guesses change nothing, and a row without a grammar
    is left free."""
    policy = HFPolicy.from_pretrained(tiny_qwen2(tmp_path / "m", [TEXT] * 20))
    grammar = CallGrammar(TOOLS)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=40, stop=[])
    opened = [policy.encode('<tool_call>{"name": "'), policy.encode("<tool_call>{")]
    prompts = [policy.encode("hello ") + o for o in opened] + [policy.encode("hello")]

    def run(grammars, guesses: int):
        policy.num_speculative_tokens, policy.drafter = guesses, None
        return policy.generate([""] * 3, greedy, prompts, grammars=grammars,
                               generated_before=[*opened, []])  # fmt: skip

    free = run(None, 0)
    plain = run([grammar, grammar, None], 0)
    guessed = run([grammar, grammar, None], 4)
    for before, completion in zip(opened, plain[:2], strict=True):
        turn = policy.decode(before) + completion.text
        assert all(grammar.allows(turn[:n]) for n in range(len(turn) + 1)), turn
    assert [c.text for c in plain[:2]] != [c.text for c in free[:2]]
    assert plain[2].token_ids == free[2].token_ids
    same_greedy(guessed, plain)


def test_grammars_need_greedy_decoding(tmp_path, tiny_qwen2):
    policy = HFPolicy.from_pretrained(tiny_qwen2(tmp_path / "m", [TEXT] * 20))
    sampled = SamplingParams(temperature=1.0, max_new_tokens=4, seed=0)
    with pytest.raises(ValueError, match="greedy"):
        policy.generate(["hello"], sampled, grammars=[CallGrammar(TOOLS)])


@pytest.mark.parametrize("template, works", [("qwen2_5", True), ("llama3_1", False)])
def test_native_templates_that_write_hermes_calls_are_constrained(tmp_path, tiny_qwen2,
                                                                  template, works):  # fmt: skip
    """A chat template whose calls are <tool_call>{json}</tool_call> (Qwen2.5's) is decoded
    under the grammar in the native tool style; one with another call format is refused."""
    from pathlib import Path

    from tooltune import ToolRegistry, TrajectoryCollector, tool

    @tool
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    source = (Path(__file__).parents[1] / "chat_templates" / f"{template}.jinja").read_text()
    path = tiny_qwen2(tmp_path / "m", [source] * 3, vocab_size=600, max_positions=2048)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = source
    tokenizer.save_pretrained(path)
    policy = HFPolicy.from_pretrained(path)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    seen = []
    generate = policy.generate
    policy.generate = lambda *a, **k: seen.append(k.get("grammars")) or generate(*a, **k)

    def collector():
        return TrajectoryCollector(policy, ToolRegistry([add]), sampling=greedy,
                                   tool_style="native", constrained_calls=True)  # fmt: skip

    if not works:
        with pytest.raises(ValueError, match="Hermes"):
            collector()
        return
    collector().collect_trajectory("What is 2 + 3?")
    assert seen and all(g is not None and g.parameters.keys() == {"add"} for g in seen[0])
