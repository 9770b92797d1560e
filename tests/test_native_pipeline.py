"""Tool style native through the whole pipeline, on a tiny random Qwen2 whose tokenizer carries
Qwen2.5's real chat template (tests/chat_templates): SFT on expert demonstrations, evaluation,
a GRPO step, the saved model evaluated by `tooltune eval` as its prompt_format.json says, and
`tooltune export`, reloaded in plain transformers. Nothing here depends on what the random model
learns: the checks read the prompts and token records that were built."""

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch

from tooltune.messages import read_trajectories

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

TEMPLATE = (Path(__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
QWEN_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud."
# a user environment (as `tooltune train --env` and `tooltune eval --env` read one): one tool,
# sums as tasks, an expert that calls the tool and then answers
ENV = textwrap.dedent('''
    from tooltune import ToolEnv, tool

    @tool
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    def expert(task, results):
        if not results:
            return {"name": "add", "arguments": {"a": int(task.prompt.split()[2]), "b": 1}}
        return f"It is {results[-1][0].value:g}."

    rows = [{"id": f"t{i}", "prompt": f"What is {i} + 1?", "answer": i + 1,
             "group": "even" if i % 2 == 0 else "odd"} for i in range(10)]
    env = ToolEnv(rows, [add], expert=expert, name="sums")
''')


def test_native_tool_style_end_to_end(tmp_path, tiny_qwen2, capsys, monkeypatch,
                                      distinct_grpo_rewards):  # fmt: skip
    from tooltune import AgentConfig, load_env
    from tooltune.cli import main
    from tooltune.native_template import NativeTemplate
    from tooltune.training import sft
    from tooltune.training.grpo import GRPOTrainer
    from tooltune.training.pipeline import AgentTrainingPipeline, PipelineSettings
    from tooltune.training.run_dir import load_policy

    (tmp_path / "env.py").write_text(ENV)
    # the BPE learns the template's text, so an opening is ~300 tokens, not one a character
    model_dir = tiny_qwen2(tmp_path / "qwen", [TEMPLATE] * 3, vocab_size=600, max_positions=2048)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(model_dir)

    sft_inputs = []  # (tool style, token records) of what SFT trains on
    to_token_records = sft.to_token_records

    def recording(items, encode=None, tool_style="json"):
        records = to_token_records(items, encode, tool_style)
        sft_inputs.append((tool_style, records))
        return records

    monkeypatch.setattr(sft, "to_token_records", recording)
    grpo_texts = []  # the episodes GRPO steps on
    train_step = GRPOTrainer.train_step  # distinct_grpo_rewards' (groups' rewards differ)

    def recording_step(self, groups):
        grpo_texts.extend(t.metadata["text"] for group in groups for t in group)
        return train_step(self, groups)

    monkeypatch.setattr(GRPOTrainer, "train_step", recording_step)

    from tooltune.policies import pointwise

    compiles = []  # torch_compile: asked once, with the model's dtype and device; failure logged

    def failing(dtype, device):
        compiles.append((dtype, str(device)))
        return "RuntimeError: no compiler"

    monkeypatch.setattr(pointwise, "compile_pointwise", failing)

    config = AgentConfig(max_turns=2, max_new_tokens=8, num_generations=2, sft_epochs=1,
                         sft_batch_size=2, max_trajectory_len=2048, seed=0)  # fmt: skip
    settings = PipelineSettings(model=str(model_dir), tool_style="native", sft_tasks=4,
                                val_tasks=0, eval_tasks_per_tier=1, grpo_steps=1,
                                max_seq_len=2048, device="cpu", dtype="fp32",
                                saved_trajectories=2, reward_model_tasks=2,
                                torch_compile=True)  # fmt: skip
    run = tmp_path / "run"
    logged = []
    with load_env(str(tmp_path / "env.py")) as env:
        pipeline = AgentTrainingPipeline(env, config, settings, run, log=logged.append,
                                         progress=False)  # fmt: skip
        pipeline.run_all()
    assert compiles == [(torch.float32, "cpu")]
    failed = "stay eager: torch.compile failed (RuntimeError: no compiler)"
    assert any(failed in m for m in logged)
    state = json.loads((run / "state.json").read_text())
    assert state["completed"][-1] == "after_grpo"
    saved = run / "checkpoints" / "latest" / "policy"
    assert json.loads((saved / "prompt_format.json").read_text())["tool_style"] == "native"
    policy = load_policy(saved, dtype="fp32", device="cpu")
    native = NativeTemplate(policy.tokenizer)

    # SFT trained on the expert's episodes rendered through the template: its call as Qwen2.5
    # writes one, its answer, each closed by <|im_end|>, and nothing else masked in
    assert {style for style, _ in sft_inputs} == {"native"}
    record = sft_inputs[0][1][0]
    text = policy.decode(record.ids)
    assert text.startswith(QWEN_SYSTEM) and '"name": "add"' in text
    written = policy.decode([i for i, m in zip(record.ids, record.mask, strict=True) if m])
    call = r'<tool_call>\n\{"name": "add", "arguments": \{"a": \d+, "b": 1\}\}\n</tool_call>'
    assert re.fullmatch(call + r"<\|im_end\|>It is \d+\.<\|im_end\|>", written), written

    # every stage ran (the reward model's episodes rendered natively too); evaluations and
    # GRPO prompted through the template; GRPO stepped on real tokens
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in rows]
    assert sorted(set(stages), key=stages.index) == [
        "before", "sft", "after_sft", "reward_model", "grpo", "after_grpo"]  # fmt: skip
    [grpo] = [r for r in rows if r["stage"] == "grpo"]
    assert grpo["num_tokens"] > 0 and grpo["optimizer_steps"] > 0
    assert grpo_texts and all(text.startswith(QWEN_SYSTEM) for text in grpo_texts)
    samples = read_trajectories(run / "trajectories.jsonl")
    assert {t.metadata.get("stage") for t in samples} >= {"before", "after_sft", "after_grpo"}
    for t in samples:
        assert t.metadata["text"].startswith(native.opening(t))

    # tooltune eval on the saved directory prompts as its prompt_format.json says: natively
    out = tmp_path / "eval.jsonl"
    code = main(["eval", "--policy", str(saved), "--env", str(tmp_path / "env.py"), "-n", "1",
                 "--json", "--trajectories", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "tool style native" in captured.err
    assert json.loads(captured.out.splitlines()[-1])["n_tasks"] == 2  # one task a group
    evaluated = read_trajectories(out)
    assert len(evaluated) == 2
    for t in evaluated:
        assert t.metadata["text"].startswith(native.opening(t))

    # export: merged weights, the tokenizer's own template, loadable with plain transformers
    exported = tmp_path / "exported"
    assert main(["export", str(run), str(exported)]) == 0, capsys.readouterr().err
    assert "own chat template (tool style native)" in capsys.readouterr().out
    model = transformers.AutoModelForCausalLM.from_pretrained(exported)
    loaded = transformers.AutoTokenizer.from_pretrained(exported)
    assert loaded.chat_template == TEMPLATE and not list(exported.glob("adapter_*"))
    episode = evaluated[0]
    messages = [{"role": "user", "content": episode.prompt}]
    prompt = loaded.apply_chat_template(messages, tools=episode.tools, add_generation_prompt=True,
                                        tokenize=False)  # fmt: skip
    assert prompt == native.opening(episode)  # what the model was prompted with in tooltune
    ids = loaded.apply_chat_template(messages, tools=episode.tools, add_generation_prompt=True,
                                     return_dict=True, return_tensors="pt")["input_ids"]  # fmt: skip
    assert ids[0].tolist() == episode.tokens.ids[: ids.shape[1]]  # the same ids, too
    conversation = [*messages,
                    {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                     "function": {"name": "add", "arguments": {"a": 2, "b": 1}}}]},
                    {"role": "tool", "name": "add", "content": "3"}]  # fmt: skip
    rendered = loaded.apply_chat_template(conversation, tools=episode.tools,
                                          add_generation_prompt=True, tokenize=False)  # fmt: skip
    assert rendered.startswith(prompt) and rendered.endswith(
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 1}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    im_end = loaded.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id
    policy.model.eval()  # no LoRA dropout
    with torch.no_grad():  # the merged weights compute what the trained LoRA model computed
        lora = policy.model(input_ids=ids).logits
        torch.testing.assert_close(model(ids).logits, lora, atol=1e-4, rtol=1e-4)
        with policy.model.disable_adapter():
            assert not torch.equal(policy.model(input_ids=ids).logits, lora)  # training moved it
