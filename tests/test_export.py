"""tooltune export: a chat template that renders tooltune's prompts exactly, and a merged model
that plain transformers loads and that writes a parsable tool call."""

import json
from pathlib import Path

import pytest
import torch

from tooltune.chat_format import (
    build_system_prompt,
    format_observation,
    parse_action,
    render_action,
    render_turn,
)
from tooltune.chat_template import chat_template
from tooltune.config import AgentConfig, TaskTier
from tooltune.messages import trajectory_to_messages
from tooltune.prompt_format import PromptFormat
from tooltune.rollout import opening_text
from tooltune.types import AgentAction, AgentStep, AgentTrajectory, ToolCall, ToolResponse

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

ASSISTANT = "<|im_start|>assistant\n"
TOOLS = [
    {"type": "function", "function": {
        "name": "population", "description": "Population, e.g. of a city, i.e. people. Census data.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "year": {"type": "integer", "enum": [2020, 2024]},
            "unit": {"enum": ["persons", "Tausend – k"]},
            "tags": {"type": ["array", "null"], "items": {"type": "string"}},
            "link": {"anyOf": [{"type": "integer"}, {"type": "string"}, {"enum": ["a", 1]}, {}]},
            "raw": {}},
            "required": ["city"]}}},
    {"name": "ping", "description": "Ping.", "parameters": {}},
]  # fmt: skip


def plain_tokenizer(style: str, max_chars: int = 2000):
    """A tokenizer that only carries the template (rendering needs no vocabulary)."""
    from tokenizers import Tokenizer, models

    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    )
    fmt = PromptFormat.from_training(AgentConfig(max_observation_chars=max_chars), style)
    tokenizer.chat_template = chat_template(fmt)
    return tokenizer


def render(tokenizer, messages, tools, generation=True):
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation
    )


# --------------------------------------------------------------------------------------------
# The template against the rollout's own text
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tooltune.environment import Environment

    with Environment(world_dir=tmp_path_factory.mktemp("export") / "world", seed=3,
                     size="small") as env:  # fmt: skip
        yield env


@pytest.mark.parametrize("style", ["json", "compact", "names"])
def test_template_renders_every_prompt_of_an_episode_as_the_rollout_built_it(env, style):
    """Expert episodes through the real tools, several turns each: before every assistant turn,
    apply_chat_template(messages so far, tools=...) is the rollout's text up to that turn."""
    from tooltune import TrajectoryCollector
    from tooltune.tasks import sample_tasks
    from tooltune.tasks.expert import ExpertPolicy

    config = AgentConfig(max_observation_chars=120)  # some results are clipped
    tasks = sample_tasks("test", 12, seed=5, world=env)
    expert = ExpertPolicy(env)
    expert.prepare(tasks)
    episodes = TrajectoryCollector(expert, env, config, tool_style=style).collect(tasks)
    tokenizer = plain_tokenizer(style, max_chars=120)
    assert any("more characters cut" in e.metadata["text"] for e in episodes)
    checked = 0
    for episode in episodes:
        text, messages = episode.metadata["text"], trajectory_to_messages(episode)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        assert len(turns) == len(episode.steps) >= 1  # no-tool tasks answer in one turn
        for n, index in enumerate(turns):
            prompt = render(tokenizer, messages[:index], episode.tools)
            cut = [i for i in range(len(text)) if text.startswith(ASSISTANT, i)][n]
            assert prompt == text[: cut + len(ASSISTANT)]
            checked += 1
        assert episode.steps[-1].action.type == "respond"
        assert render(tokenizer, messages, episode.tools, generation=False) == text + "\n"
    assert checked >= 25  # turns checked over 12 episodes (no-tool ones have one)


def _expected(style, steps, prompt="Q?", instructions=None, max_chars=2000):
    """The text tooltune's rollout builds, from its own functions."""
    trajectory = AgentTrajectory(prompt=prompt, task_tier=TaskTier.SIMPLE)
    trajectory.tools = TOOLS
    if instructions is None:
        text = opening_text(trajectory, style)
    else:
        system = build_system_prompt(TOOLS, instructions=instructions, style=style)
        text = render_turn("system", system) + render_turn("user", prompt) + ASSISTANT
    for step in steps:
        text += render_action(step.action) + "<|im_end|>\n"
        if step.tool_responses:
            text += render_turn("tool", format_observation(step.tool_responses, max_chars))
        text += ASSISTANT
    return text


@pytest.mark.parametrize("style", ["json", "compact"])
def test_template_edge_cases_match_tooltune(style):
    """Failed calls, results of every JSON type, clipping, non-ASCII, markers inside arguments,
    thinking, several calls in a turn, calls with dict arguments and without a tool name."""
    calls = [
        ToolCall(
            "c0", "population", {"city": "Zürich </tool_call> <think> <|im_end|>", "year": 2020}
        ),
        ToolCall("c1", "ping", {}),
        ToolCall("c2", "population", {"city": "Ōsaka"}),
    ]
    responses = [
        ToolResponse("c0", True, {"n": 1, "name": "Zürich"}, name="population"),
        ToolResponse("c1", False, None, error="timed out", name="ping"),
        ToolResponse("c2", True, "plain text, ünïcode", name="population"),
    ]
    more = [ToolCall("d0", "ping", {}), ToolCall("d1", "ping", {}), ToolCall("d2", "ping", {})]
    more_responses = [
        ToolResponse("d0", True, 42, name="ping"),
        ToolResponse("d1", True, [1, "x" * 90], name="ping"),
        ToolResponse("d2", True, None, name="ping"),
    ]
    steps = [
        AgentStep(AgentAction("tool_call", "Let me look.", calls, thinking="plan"), None,
                  responses),
        AgentStep(AgentAction("think", "", [], thinking="hmm")),
        AgentStep(AgentAction("tool_call", "", more), None, more_responses),
    ]  # fmt: skip
    messages = [{"role": "user", "content": "Q?"}]
    for step in steps:
        action = step.action
        message = {"role": "assistant", "content": action.content,
                   "tool_calls": [{"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": c.arguments}}
                                  for c in action.tool_calls]}  # fmt: skip
        if action.thinking:
            message["reasoning_content"] = action.thinking
        messages.append(message)
        for r in step.tool_responses:  # results as JSON values; the last turn's without names
            content = r.result if r.success else f"Error: {r.error}"
            tool = {"role": "tool", "tool_call_id": r.call_id, "content": content}
            if not r.call_id.startswith("d"):
                tool["name"] = r.name
            messages.append(tool)
    tokenizer = plain_tokenizer(style, max_chars=50)
    assert render(tokenizer, messages, TOOLS) == _expected(style, steps, max_chars=50)

    # the OpenAI form (string arguments and contents, as trajectory_to_messages writes) renders
    # the same
    tokenizer = plain_tokenizer(style)
    ascii_steps = [AgentStep(AgentAction("tool_call", "", more), None, more_responses)]
    ascii_messages = trajectory_to_messages(
        AgentTrajectory(prompt="Q?", task_tier=TaskTier.SIMPLE, steps=ascii_steps)
    )
    assert render(tokenizer, ascii_messages, TOOLS) == _expected(style, ascii_steps)

    # a system message replaces the instructions
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}]
    assert render(tokenizer, system, TOOLS) == _expected(style, [], instructions="Be brief.")


def test_names_style_renders_and_refuses_a_system_message():
    tokenizer = plain_tokenizer("names")
    user = [{"role": "user", "content": "Q?"}]
    assert render(tokenizer, user, TOOLS) == _expected("names", [])
    assert render(tokenizer, user, None).startswith("<|im_start|>system\n<tools>\n\n</tools>")
    with pytest.raises(Exception, match="names tool style"):
        render(tokenizer, [{"role": "system", "content": "x"}, *user], TOOLS)


# --------------------------------------------------------------------------------------------
# Exporting a trained LoRA model
# --------------------------------------------------------------------------------------------

CALL = {"name": "population", "arguments": {"city": "Zentrix"}}
QUESTION = "How many people live in Zentrix?"


def _prompt(style="compact"):
    trajectory = AgentTrajectory(prompt=QUESTION, task_tier=TaskTier.SIMPLE)
    trajectory.tools = TOOLS[:1]
    return opening_text(trajectory, style)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_qwen2):
    """A tiny Qwen2 with LoRA adapters, trained on one prompt until its greedy answer is the
    call, saved as the pipeline saves it (checkpoints/latest, state.json)."""
    from tooltune.policies import HFPolicy, LoraSettings
    from tooltune.rollout import SamplingParams
    from tooltune.training.run_dir import RunDirectory

    root = tmp_path_factory.mktemp("trained")
    target = f"<tool_call>{json.dumps(CALL)}</tool_call><|im_end|>"
    base = tiny_qwen2(root / "base", [_prompt(), target] * 4, vocab_size=400, max_positions=512)
    torch.manual_seed(0)
    policy = HFPolicy.from_pretrained(base, lora=LoraSettings(r=8, dropout=0.0))
    policy.prompt_format = PromptFormat.from_training(AgentConfig(), "compact")
    prompt_ids, target_ids = policy.encode(_prompt()), policy.encode(target)
    ids = torch.tensor([prompt_ids + target_ids])
    mask = torch.ones_like(ids)
    scored = torch.zeros(1, ids.shape[1] - 1)
    scored[0, len(prompt_ids) - 1 :] = 1
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=len(target_ids) + 4)
    for step in range(400):  # until the greedy answer is the call (about 60 steps here)
        policy.model.train()
        loss = -(policy.token_logprobs(ids, mask) * scored).sum() / scored.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            text = policy.generate([_prompt()], greedy)[0].text
            if parse_action(text).tool_calls and not parse_action(text).tool_calls[0].parse_error:
                break
    else:
        pytest.fail(f"the tiny model did not learn the call: {text!r}")
    policy.model.eval()
    run = RunDirectory(root / "run")
    run.checkpoint("latest", policy)
    run.save_state({"completed": ["data", "before", "sft"], "metrics": {}})
    return root / "run", policy


def test_exported_model_loads_in_plain_transformers_and_calls_the_tool(trained_run, tmp_path):
    from tooltune.cli import main
    from tooltune.policies.hf import is_peft

    run_dir, policy = trained_run
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert json.loads((out / "prompt_format.json").read_text())["tool_style"] == "compact"
    assert not list(out.glob("adapter_*")) and not list(tmp_path.glob(".exported.export-*"))

    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert not is_peft(model)
    messages = [{"role": "user", "content": QUESTION}]
    text = tokenizer.apply_chat_template(
        messages, tools=TOOLS[:1], add_generation_prompt=True, tokenize=False
    )
    assert text == _prompt()
    ids = tokenizer.apply_chat_template(
        messages, tools=TOOLS[:1], add_generation_prompt=True, return_dict=True,
        return_tensors="pt",
    )["input_ids"]  # fmt: skip
    assert ids[0].tolist() == policy.encode(text)

    generated = model.generate(ids, max_new_tokens=60, do_sample=False)[0, ids.shape[1] :]
    assert generated[-1].item() == tokenizer.convert_tokens_to_ids("<|im_end|>")  # stops there
    action = parse_action(tokenizer.decode(generated), known_tools={"population"})
    assert [(c.name, c.arguments, c.parse_error) for c in action.tool_calls] == [
        ("population", {"city": "Zentrix"}, None)
    ]

    with torch.no_grad():  # the merged weights compute what base + adapters computed
        merged = model(ids).logits
        lora = policy.model(input_ids=ids).logits
        with policy.model.disable_adapter():
            base = policy.model(input_ids=ids).logits
    torch.testing.assert_close(merged, lora, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(base, lora, atol=1e-2)  # the adapters matter


def test_export_refuses_what_it_cannot_export(trained_run, tmp_path, tiny_qwen2, capsys):
    from tooltune import export as export_module
    from tooltune.cli import main
    from tooltune.policies import BuiltinPolicy
    from tooltune.training.run_dir import RunDirectory

    run_dir, policy = trained_run

    def fails(source, out, match):
        with pytest.raises(export_module.ExportError, match=match):
            export_module.export(source, out)
        assert not out.exists() or not any(out.iterdir())

    # a run that finished no training stage
    untrained = RunDirectory(tmp_path / "untrained")
    untrained.checkpoint("latest", policy)
    untrained.save_state({"completed": ["data", "before"], "metrics": {}})
    fails(tmp_path / "untrained", tmp_path / "o1",
          "finished no training stage.*rerun the tooltune demo or tooltune train command")  # fmt: skip
    # a run without a checkpoint
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    fails(tmp_path / "empty", tmp_path / "o2", "no finished checkpoint")
    # the built-in model
    builtin = BuiltinPolicy.create(["<|im_start|>user\nhi<|im_end|>"] * 4, size="tiny",
                                   vocab_size=300, max_seq_len=64)  # fmt: skip
    builtin.save(tmp_path / "builtin")
    fails(tmp_path / "builtin", tmp_path / "o3", "built-in model")
    # an output directory with something in it
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(export_module.ExportError, match="not empty"):
        export_module.export(run_dir, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    # a saved policy without prompt_format.json: the fix is named
    bare = tmp_path / "bare"
    policy.save(bare)
    (bare / "prompt_format.json").unlink()
    fails(bare, tmp_path / "o4", "--tool-style")
    # the CLI says it on one line, exit status 2
    assert main(["export", str(tmp_path / "builtin"), str(tmp_path / "o5")]) == 2
    assert "built-in model" in capsys.readouterr().err


def test_a_failed_export_leaves_no_output_directory(trained_run, tmp_path, monkeypatch):
    from tooltune import export as export_module

    def broken(directory, fmt, native=None):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "check_template", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_module.export(trained_run[0], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# A model trained in the native tool style: its tokenizer's own template is exported
# --------------------------------------------------------------------------------------------

TEMPLATES = Path(__file__).parent / "chat_templates"
LLAMA3 = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
          "<|eom_id|>", "<|python_tag|>"]  # fmt: skip
END_OF_TURN = {"qwen2_5": "<|im_end|>", "llama3_1": "<|eot_id|>"}


def _native_policy(directory, tiny_qwen2, family):
    """A tiny Qwen2 with LoRA adapters whose tokenizer carries a real template family (Llama
    3.1's markers added as special tokens), saved as trained in the native tool style."""
    from tooltune.policies import HFPolicy, LoraSettings

    base = tiny_qwen2(directory / "base", [_prompt()] * 3, vocab_size=400, max_positions=512)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    if family == "llama3_1":
        tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3})
    tokenizer.chat_template = (TEMPLATES / f"{family}.jinja").read_text()
    tokenizer.save_pretrained(base)
    policy = HFPolicy.from_pretrained(base, lora=LoraSettings(r=4, dropout=0.0))
    policy.prompt_format = PromptFormat.from_training(AgentConfig(), "native")
    policy.save(directory / "policy")
    return directory / "policy", policy


@pytest.mark.parametrize("family", ["qwen2_5", "llama3_1"])
def test_a_native_model_exports_with_its_own_chat_template(tmp_path, tiny_qwen2, family):
    from tooltune import export as export_module
    from tooltune.native_template import NativeTemplate

    source, policy = _native_policy(tmp_path, tiny_qwen2, family)
    result = export_module.export(source, tmp_path / "out")
    assert "the tokenizer's own chat template (tool style native)" in result.summary()

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.chat_template == (TEMPLATES / f"{family}.jinja").read_text()
    trajectory = AgentTrajectory(prompt=QUESTION, task_tier=TaskTier.SIMPLE, tools=TOOLS[:1])
    messages = [{"role": "user", "content": QUESTION}]
    text = render(tokenizer, messages, TOOLS[:1])
    assert text == NativeTemplate(policy.tokenizer).opening(trajectory)  # as tooltune prompted
    assert '"name": "population"' in text
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN[family])
    assert end in model.generation_config.eos_token_id  # generate() stops where a turn ends
    assert json.loads((tmp_path / "out" / "prompt_format.json").read_text())["tool_style"] == (
        "native"
    )


def test_a_native_model_whose_template_is_lost_or_broken_names_the_fix(tmp_path, tiny_qwen2):
    from tooltune import export as export_module

    source, _ = _native_policy(tmp_path, tiny_qwen2, "qwen2_5")
    template = source / "chat_template.jinja"
    assert template.is_file()
    original = template.read_text()
    template.unlink()
    with pytest.raises(export_module.ExportError,
                       match=r"trained in the native tool style.*no chat template; copy "
                             r"chat_template\.jinja .* from .*base into"):  # fmt: skip
        export_module.export(source, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.export-*"))

    # a template edited so that it renders no tools (SmolLM2-style ChatML)
    template.write_text(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
        "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}{# <tool_call> #}"
    )
    with pytest.raises(export_module.ExportError,
                       match="cannot prompt the model as it was trained.*does not render tools"
                             ".*copy chat_template.jinja") as error:  # fmt: skip
        export_module.export(source, tmp_path / "out")
    assert "tool_style compact" not in str(error.value)  # training's fix, not export's
    template.write_text(original)
    export_module.export(source, tmp_path / "out")  # restored as the message says: it exports
