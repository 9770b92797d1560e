"""Native chat templates: episodes rendered through real template families (tests/chat_templates,
each naming its source and licence) with small byte-level BPE tokenizers trained here, no
downloads. Masks must cover exactly the assistant's tokens, turn by turn, against the template's
own rendering of the whole conversation."""

from pathlib import Path

import pytest

from tooltune import AgentConfig
from tooltune.chat_format import build_system_prompt
from tooltune.chat_template import chat_template
from tooltune.native_template import (
    NativeTemplate,
    TemplateError,
    assistant_message,
    template_of,
)
from tooltune.prompt_format import PromptFormat
from tooltune.registry import ToolRegistry
from tooltune.rollout import (
    Completion,
    Policy,
    ScriptedPolicy,
    TrajectoryCollector,
    check_token_record,
    tokenize_trajectory,
)
from tooltune.types import AgentAction, AgentTrajectory

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEMPLATES = Path(__file__).parent / "chat_templates"
CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3 = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
          "<|eom_id|>", "<|python_tag|>"]  # fmt: skip
SPECIALS = {"qwen2_5": CHATML, "qwen3": CHATML, "hermes": CHATML, "llama3_1": LLAMA3}
EOT = {"qwen2_5": "<|im_end|>", "hermes": "<|im_end|>", "llama3_1": "<|eot_id|>"}
CORPUS = ['{"name": "add", "arguments": {"a": 2, "b": 3}}', "tool_call tool_response assistant",
          "What is 2 plus 3? The answer is 5."]  # fmt: skip


def make_tokenizer(family: str, template: str | None = None):
    """A byte-level BPE tokenizer (exact round trips) with the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = SPECIALS.get(family, CHATML)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(CORPUS, trainer=trainer)
    eos = EOT.get(family, specials[-1])
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=specials[0], eos_token=eos
    )
    hf.chat_template = (
        template if template is not None else (TEMPLATES / f"{family}.jinja").read_text()
    )
    return hf


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class TokenScript(Policy):
    """A token policy that writes fixed turns: each call's prompt ids must be the episode's ids
    so far (checked), and each turn is the encoding of its text plus the end-of-turn token."""

    def __init__(self, tokenizer, turns: list[str], end: str, cut: set[int] = frozenset()):
        self.tokenizer, self.turns, self.end, self.cut = tokenizer, turns, end, cut
        self.calls = 0

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)  # fmt: skip

    def generate(self, prompts, sampling, prompt_token_ids=None):
        assert sampling.stop == [self.end]
        out = []
        for prompt, ids in zip(prompts, prompt_token_ids, strict=True):
            assert self.decode(ids) == prompt  # the collector feeds its exact ids
            text = self.turns[min(self.calls, len(self.turns) - 1)]
            turn_ids = self.encode(text)
            if self.calls in self.cut:  # ran out of tokens: no end-of-turn token
                out.append(Completion(text, turn_ids, [-0.5] * len(turn_ids), "length"))
            else:
                ids = turn_ids + self.encode(self.end)
                out.append(Completion(text, ids, [-0.5] * len(ids)))
        self.calls += 1
        return out


CALLS = {
    "qwen2_5": '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
    "hermes": '<tool_call>\n{ "arguments": {"a": 2, "b": 3}, "name": "add"}\n</tool_call> ',
    "llama3_1": '{"name": "add", "parameters": {"a": 2, "b": 3}}',
}
STABLE = sorted(CALLS)


def run_episode(family: str, turns: list[str], cut: set[int] = frozenset()):
    tokenizer = make_tokenizer(family)
    policy = TokenScript(tokenizer, turns, EOT[family], cut)
    config = AgentConfig(max_turns=4, max_new_tokens=64, max_trajectory_len=4096)
    collector = TrajectoryCollector(policy, ToolRegistry([add]), config, tool_style="native")
    return collector.collect(["What is 2 plus 3?"])[0], policy


def whole_rendering(template: NativeTemplate, trajectory: AgentTrajectory) -> tuple[str, list]:
    """The template's rendering of the whole conversation, and each assistant turn's span in it
    (between the generation prompt before it and the end of the turn)."""
    messages = [{"role": "user", "content": trajectory.prompt}]
    spans = []
    for step in trajectory.steps:
        start = len(template.render(messages, trajectory.tools, True))
        messages.append(assistant_message(step.action))
        closed = template.render(messages, trajectory.tools, False)
        end = closed.rfind(template.end_of_turn) + len(template.end_of_turn)
        spans.append((start, end))
        messages.extend(template.tool_messages(step.tool_responses))
    return template.render(messages, trajectory.tools, False), spans


@pytest.mark.parametrize("family", STABLE)
def test_masks_cover_exactly_the_assistant_turns(family):
    episode, policy = run_episode(family, [CALLS[family], "The answer is 5."])
    assert [s.action.type for s in episode.steps] == ["tool_call", "respond"]
    call = episode.steps[0].action.tool_calls[0]
    assert (call.name, call.arguments, call.parse_error) == ("add", {"a": 2, "b": 3}, None)
    assert episode.steps[0].tool_responses[0].result == 5
    assert episode.final_answer == "The answer is 5."

    template = template_of(policy)
    whole, spans = whole_rendering(template, episode)
    record = episode.tokens
    assert policy.decode(record.ids) == whole.rstrip("\n")  # the template's own text
    # turn by turn: each run of mask 1 is exactly one assistant turn of the whole rendering
    runs, start = [], None
    for i, m in enumerate([*record.mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    assert len(runs) == len(spans) == 2
    for (a, b), (lo, hi) in zip(runs, spans, strict=True):
        prefix = policy.decode(record.ids[:a])
        assert prefix == whole[:lo]  # everything before the turn is prompt, masked out
        assert policy.decode(record.ids[a:b]) == whole[lo:hi]  # the turn and its end marker
        assert all(lp == -0.5 for lp in record.logprobs[a:b])
    assert sum(record.logprobs) == -0.5 * sum(record.mask)
    check_token_record(episode, policy, "native")

    # SFT of the same episode as a demonstration: the same ids and mask, without sampling
    demo = AgentTrajectory(prompt=episode.prompt, task_tier="simple", tools=episode.tools,
                           steps=episode.steps)  # fmt: skip
    tokens = tokenize_trajectory(demo, policy.encode, "native")
    assert (tokens.ids, tokens.mask) == (record.ids, record.mask)


@pytest.mark.parametrize("family", STABLE)
def test_a_turn_that_differs_from_the_template_is_kept_as_written(family):
    """The model's own spelling (extra spaces, a cut-off turn) is trained as it was sampled,
    never re-rendered: the text is kept in `raw`, the end marker added unmasked."""
    odd = CALLS[family].replace('"a": 2', '"a":  2')
    episode, policy = run_episode(family, [odd, "5"], cut={0})
    action = episode.steps[0].action
    assert action.raw == odd and action.tool_calls[0].arguments == {"a": 2, "b": 3}
    record = episode.tokens
    first_turn = record.mask.index(1)
    n = len(policy.encode(odd))
    assert record.mask[first_turn : first_turn + n] == [1] * n
    end = policy.encode(EOT[family])
    assert record.ids[first_turn + n : first_turn + n + len(end)] == end
    assert record.mask[first_turn + n] == 0  # the collector closed the cut-off turn
    check_token_record(episode, policy, "native")


@pytest.mark.parametrize("thinking", [{}, {"enable_thinking": False}], ids=["default", "no_think"])
def test_qwen3_is_refused_as_not_prefix_stable(thinking):
    with pytest.raises(TemplateError, match="not prefix-stable.*compact or json"):
        NativeTemplate(make_tokenizer("qwen3"), **thinking)


def test_template_without_tools_is_refused_with_the_fix():
    chatml = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
        "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )  # SmolLM2-style: no tools
    with pytest.raises(TemplateError, match="does not know"):
        NativeTemplate(make_tokenizer("plain", chatml))  # nor any call format
    with_tags = chatml + "{# <tool_call> #}"
    with pytest.raises(TemplateError, match="does not render tools.*tool_style compact"):
        NativeTemplate(make_tokenizer("plain", with_tags))
    tokenizer = make_tokenizer("plain", chatml)
    tokenizer.chat_template = None
    with pytest.raises(TemplateError, match="no chat template"):
        NativeTemplate(tokenizer)


def test_policies_without_a_template():
    from tooltune.policies.builtin import BuiltinPolicy

    registry = ToolRegistry([add])
    builtin = BuiltinPolicy.create(["hello world"], size="tiny", vocab_size=300, max_seq_len=64)
    with pytest.raises(TemplateError, match="no chat template"):
        TrajectoryCollector(builtin, registry, tool_style="native")
    # a text policy (a scripted expert) reads and writes tooltune's own format instead
    scripted = ScriptedPolicy(['<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}'
                               "</tool_call>", "2"])  # fmt: skip
    collector = TrajectoryCollector(scripted, registry, tool_style="native")
    episode = collector.collect(["1 + 1?"])[0]
    assert episode.final_answer == "2" and collector.tool_style == "json"
    # ... and its episode trains natively: SFT renders it through a model's template
    tokenizer = make_tokenizer("qwen2_5")
    tokens = tokenize_trajectory(episode, tokenizer.encode, "native",
                                 template=NativeTemplate(tokenizer))  # fmt: skip
    text = tokenizer.decode([i for i, m in zip(tokens.ids, tokens.mask, strict=True) if m])
    assert '{"name": "add", "arguments": {"a": 1, "b": 1}}' in text and text.endswith("2<|im_end|>")


def test_llama3_parsing():
    template = NativeTemplate(make_tokenizer("llama3_1"))
    two = template.parse('{"name": "add", "parameters": {"a": 1, "b": 2}}; '
                         '{"name": "add", "parameters": {"a": 3, "b": 4}}', {"add"}, "c")  # fmt: skip
    assert [c.arguments for c in two.tool_calls] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert [c.id for c in two.tool_calls] == ["c_0", "c_1"]
    tagged = template.parse('<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}',
                            {"add"}, "c")  # fmt: skip
    assert tagged.tool_calls[0].name == "add"
    broken = template.parse('{"name": "add", "parameters": {"a": 1', {"add"}, "c")
    assert broken.type == "tool_call" and "not valid JSON" in broken.tool_calls[0].parse_error
    assert broken.tool_calls[0].raw == '{"name": "add", "parameters": {"a": 1'
    unknown = template.parse('{"name": "rm", "parameters": {}}', {"add"}, "c")
    assert "unknown tool" in unknown.tool_calls[0].parse_error
    assert template.parse("It is 3.", {"add"}, "c") == AgentAction("respond", "It is 3.")
    assert template.parse('{"x": 1}', {"add"}, "c").type == "respond"  # JSON, not a call
    assert template.parse("", {"add"}, "c").type == "think"


def test_hermes_parsing_reads_thinking_and_calls():
    template = NativeTemplate(make_tokenizer("qwen2_5"))
    action = template.parse('<think>add them</think>\n<tool_call>\n{"name": "add", "arguments": '
                            '{"a": 1, "b": 2}}\n</tool_call>', {"add"}, "c")  # fmt: skip
    assert action.thinking == "add them" and action.tool_calls[0].arguments == {"a": 1, "b": 2}


def test_native_is_a_prompt_format(tmp_path):
    fmt = PromptFormat(tool_style="native")
    fmt.save(tmp_path)
    assert PromptFormat.read(tmp_path).tool_style == "native"
    with pytest.raises(ValueError, match="own chat template"):
        build_system_prompt([], style="native")
    with pytest.raises(ValueError, match="keeps that template"):
        chat_template(fmt)


def test_hf_policy_rollout_has_no_drift(tmp_path, tiny_qwen2):
    """A real (random) Hugging Face model rolled out natively: token-exact records."""
    torch = pytest.importorskip("torch")
    from tooltune.policies import HFPolicy
    from tooltune.rollout import SamplingParams

    path = tiny_qwen2(tmp_path / "m", CORPUS * 3, max_positions=1024)
    policy = HFPolicy.from_pretrained(path, dtype="fp32", device="cpu")
    policy.tokenizer.chat_template = (TEMPLATES / "qwen2_5.jinja").read_text()
    config = AgentConfig(max_turns=3, max_new_tokens=24, max_trajectory_len=1024)
    torch.manual_seed(0)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=24, seed=1)
    collector = TrajectoryCollector(policy, ToolRegistry([add]), config, sampling=sampling,
                                    tool_style="native", stop_after_cutoffs=None)  # fmt: skip
    for episode in collector.collect(["What is 2 plus 3?"], num_samples=2):
        assert sum(episode.tokens.mask) > 0
        check_token_record(episode, policy, "native")

    # the saved model carries both halves of its prompt: the format and the template
    from tooltune.training.run_dir import load_policy

    policy.prompt_format = PromptFormat(tool_style="native")
    policy.save(tmp_path / "saved")
    loaded = load_policy(tmp_path / "saved", dtype="fp32", device="cpu")
    assert loaded.prompt_format.tool_style == "native"
    assert template_of(loaded).family.name == "hermes"


def test_clipped_tool_results_re_render_as_collected():
    """Tool results are cut to the config's max_observation_chars, and the episode remembers
    it, so SFT and the drift check re-render the same text."""

    def shout(word: str) -> str:
        """Repeat a word."""
        return word * 50

    tokenizer = make_tokenizer("qwen2_5")
    call = '<tool_call>\n{"name": "shout", "arguments": {"word": "ab"}}\n</tool_call>'
    policy = TokenScript(tokenizer, [call, "done"], "<|im_end|>")
    config = AgentConfig(max_turns=3, max_observation_chars=20, max_trajectory_len=4096)
    collector = TrajectoryCollector(policy, ToolRegistry([shout]), config, tool_style="native")
    episode = collector.collect(["shout ab"])[0]
    assert "ab" * 10 + "... [80 more characters cut]" in policy.decode(episode.tokens.ids)
    check_token_record(episode, policy, "native")
    assert tokenize_trajectory(episode, policy.encode, "native").ids == episode.tokens.ids
