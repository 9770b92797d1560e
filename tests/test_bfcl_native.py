"""`tooltune bfcl run` on a model of the native tool style: a tiny random Qwen2 with Qwen2.5's
chat template (tests/chat_templates), saved with prompt_format.json saying tool style native,
asked the shared BFCL samples through its own template and read with the template's parser."""

import json
from pathlib import Path

import pytest

from tooltune import bfcl_run
from tooltune.cli import main
from tooltune.rollout import Completion
from tooltune.tasks import bfcl

transformers = pytest.importorskip("transformers")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "bfcl"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/bfcl is not present")
TEMPLATE = (Path(__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()


@pytest.fixture(scope="module")
def native_model(tmp_path_factory, tiny_qwen2):
    """The saved directory of a tiny random Qwen2 trained (as it says) in tool style native."""
    from tooltune.policies import HFPolicy
    from tooltune.prompt_format import PromptFormat

    path = tmp_path_factory.mktemp("native") / "model"
    texts = [TEMPLATE, (SHARED / "BFCL_v4_simple_python.json").read_text()[:20000]]
    tiny_qwen2(path, texts * 3, vocab_size=600, max_positions=4096)
    policy = HFPolicy.from_pretrained(path, dtype="fp32", device="cpu")
    policy.tokenizer.chat_template = TEMPLATE
    policy.prompt_format = PromptFormat(tool_style="native")
    policy.save(path)
    return path


def test_cli_runs_a_native_model_on_the_shared_samples(native_model, tmp_path, capsys):
    for category in ("simple", "multiple", "parallel"):
        out = tmp_path / f"{category}.jsonl"
        code = main(["bfcl", "run", "--model", str(native_model), "--category", category,
                     "--data", str(SHARED), "-n", "16", "--max-new-tokens", "8",
                     "--batch-size", "16", "--out", str(out), "--json"])  # fmt: skip
        captured = capsys.readouterr()
        assert code == 0, captured.err
        result = json.loads(captured.out)
        assert result["tool_style"] == "native" and result["n"] == 16
        assert 0.0 <= result["accuracy"] <= 1.0 and len(result["entries"]) == 16
        questions = bfcl_run.load_category(SHARED, category, limit=16)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["id"] for r in rows] == [q.id for q in questions]


def test_a_hermes_call_becomes_the_prediction(native_model, monkeypatch):
    """Well-formed `<tool_call>`s as Qwen2.5 writes them are the prediction, and score."""
    from tooltune.native_template import template_of
    from tooltune.training.run_dir import load_policy

    policy = load_policy(native_model, device="cpu")
    questions = bfcl_run.load_category(SHARED, "parallel", limit=2)
    truth = bfcl.reference_predictions(questions)
    replies = [
        "".join(f"<tool_call>\n{json.dumps(call)}\n</tool_call>" for call in truth[0]["calls"]),
        "I would rather not.",
    ]
    asked = []

    def generate(prompts, sampling, **_):
        asked.append((prompts, sampling))
        return [Completion(r, finish_reason="stop") for r in replies]

    monkeypatch.setattr(policy, "generate", generate)
    predictions = bfcl_run.predict(policy, questions, "native")
    prompts, sampling = asked[0]
    template = template_of(policy)
    tools = [bfcl.to_openai_tool(f) for f in questions[0].functions]
    messages = questions[0].messages
    assert prompts[0] == template.render(messages, tools, generation=True)
    assert '"name": "spotify.play"' in prompts[0] and "<tools>" in prompts[0]
    assert prompts[0].endswith("<|im_start|>assistant\n") and sampling.stop == ["<|im_end|>"]
    assert predictions[0]["calls"] == truth[0]["calls"]
    assert predictions[1]["calls"] == []
    result = bfcl_run.score(questions, predictions, "parallel", "tiny", "native")
    assert [e["valid"] for e in result.entries] == [True, False]
    assert result.malformed == 0
