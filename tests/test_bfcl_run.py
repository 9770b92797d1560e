"""`tooltune bfcl run` on the shared BFCL samples with scripted and tiny built-in models."""

import json
import shutil
from pathlib import Path

import pytest

from tooltune import bfcl_run
from tooltune.chat_format import parse_prompt
from tooltune.cli import main
from tooltune.rollout import Completion
from tooltune.tasks import bfcl

SHARED = Path(__file__).resolve().parents[2] / "shared" / "bfcl"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/bfcl is not present")


class CannedPolicy:
    """Answers each question (found by its user text) with a fixed reply; records sampling."""

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies
        self.sampling = []

    def generate(self, prompts, sampling, prompt_token_ids=None):
        self.sampling.append(sampling)
        out = []
        for prompt in prompts:
            user = next(m["content"] for m in parse_prompt(prompt) if m["role"] == "user")
            out.append(Completion(self.replies.get(user, "I do not know.")))
        return out


def _call(name, arguments):
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def _user(question):
    return question.messages[-1]["content"]


def test_scripted_run_scores_end_to_end(tmp_path):
    questions = bfcl_run.load_category(SHARED, "simple", limit=5)
    truth = bfcl.reference_predictions(questions)
    good = [_call(c["name"], c["arguments"]) for t in truth for c in t["calls"]]
    wrong = dict(truth[2]["calls"][0]["arguments"])
    wrong[next(iter(wrong))] = "nonsense"
    replies = {
        _user(questions[0]): good[0],
        _user(questions[1]): "<think>easy</think>\n" + good[1],  # thinking is fine
        _user(questions[2]): _call(truth[2]["calls"][0]["name"], wrong),
        _user(questions[3]): '<tool_call>{"name": "calculate_triangle_area", "arguments": {</tool_call>',
        # questions[4]: no call at all
    }  # fmt: skip
    policy = CannedPolicy(replies)
    out = tmp_path / "pred.jsonl"
    result = bfcl_run.run("canned", "simple", data=SHARED, limit=5, out=out, policy=policy,
                          tool_style="compact", batch_size=2)  # fmt: skip
    assert (result.n, result.correct, result.malformed) == (5, 2, 1)
    assert result.accuracy == pytest.approx(0.4)
    assert [e["valid"] for e in result.entries] == [True, True, False, False, False]
    assert "malformed call" in result.entries[3]["reasons"][0]
    assert all(s.temperature == 0.0 for s in policy.sampling) and len(policy.sampling) == 3
    # the file is in `bfcl check`'s format and scores the same there
    q_path, a_path = bfcl_run.category_files(SHARED, "simple")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [q.id for q in questions]
    checked = bfcl.check_files(q_path, a_path, out)
    assert [e["valid"] for e in checked["entries"][:5]] == [e["valid"] for e in result.entries]


def test_prompt_lists_the_functions_in_the_tool_style():
    question = bfcl_run.load_category(SHARED, "multiple", limit=1)[0]
    for style in ("json", "compact", "names"):
        prompt = bfcl_run.question_prompt(question, style)
        assert all(f["name"] in prompt for f in question.functions)
        assert prompt.endswith("<|im_start|>assistant\n")
    question.messages = [{"role": "system", "content": "Be brief."}, *question.messages]
    system = parse_prompt(bfcl_run.question_prompt(question, "compact"))[0]
    assert system["role"] == "system" and system["content"].endswith("Be brief.")


def _folder_with(tmp_path, category, source="simple_python", answers=True, count=3):
    """A BFCL folder holding the first `count` shared questions under another category name."""
    lines = (SHARED / f"BFCL_v4_{source}.json").read_text().splitlines()[:count]
    rows = [json.loads(line) for line in lines]
    for i, row in enumerate(rows):
        row["id"] = f"{category}_{i}"
    (tmp_path / f"BFCL_v4_{category}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if answers:
        (tmp_path / "possible_answer").mkdir(exist_ok=True)
        shutil.copy(SHARED / "possible_answer" / f"BFCL_v4_{source}.json",
                    tmp_path / "possible_answer" / f"BFCL_v4_{category}.json")  # fmt: skip
    return tmp_path, [r["question"][0][-1]["content"] for r in rows]


def test_irrelevance_is_correct_without_a_call(tmp_path):
    data, users = _folder_with(tmp_path, "irrelevance", answers=False)
    policy = CannedPolicy(
        {users[1]: _call("anything", {}), users[2]: "<tool_call>{oops</tool_call>"}
    )
    result = bfcl_run.run("canned", "irrelevance", data=data, policy=policy, tool_style="compact")
    assert [e["valid"] for e in result.entries] == [True, False, False]


def test_constrained_runs_need_a_token_policy(capsys, tmp_path):
    """`--constrained` decodes a token policy's calls under each question's functions; a
    policy without tokens is refused with the reason."""
    with pytest.raises(ValueError, match="token policy"):
        bfcl_run.run("canned", "simple", data=SHARED, limit=1, policy=CannedPolicy({}),
                     constrained=True)  # fmt: skip
    args = ["bfcl", "run", "--category", "simple", "--data", str(SHARED), "-n", "2",
            "--max-new-tokens", "6", "--json", "--model", "builtin", "--constrained"]  # fmt: skip
    code, stdout, _ = _cli(capsys, *args, "--out", str(tmp_path / "p.jsonl"))
    assert code == 0 and json.loads(stdout)["n"] == 2


def test_several_categories_in_one_run(capsys, tmp_path):
    """`--category a,b`: the model loaded once, a predictions file each in the --out folder, a
    line each and the total."""
    args = ["bfcl", "run", "--category", "simple,parallel", "--data", str(SHARED), "-n", "2",
            "--max-new-tokens", "4", "--model", "builtin", "--out", str(tmp_path)]  # fmt: skip
    code, stdout, _ = _cli(capsys, *args)
    assert code == 0 and stdout.count("bfcl simple:") == 1 and stdout.count("bfcl parallel:") == 1
    assert "(simple, parallel): 0/4 entries" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builtin-parallel.jsonl",
                                                          "builtin-simple.jsonl"]  # fmt: skip
    code, stdout, _ = _cli(capsys, *args, "--json")
    assert [r["category"] for r in json.loads(stdout)["results"]] == ["simple", "parallel"]


def test_bad_data_says_what_is_wrong(tmp_path):
    data, _ = _folder_with(tmp_path, "live_simple", answers=False)
    with pytest.raises(ValueError, match="live_simple has no possible answers"):
        bfcl_run.load_category(data, "live_simple")
    with pytest.raises(ValueError, match="unknown category 'nope'; known: simple, multiple"):
        bfcl_run.load_category(data, "nope")
    with pytest.raises(ValueError, match="no questions for category parallel"):
        bfcl_run.load_category(data, "parallel")
    data, _ = _folder_with(tmp_path, "live_simple", answers=True)
    (data / "BFCL_v4_live_simple.json").write_text('{"id": "live_simple_0"\n')
    with pytest.raises(ValueError, match=r"BFCL_v4_live_simple.json:1:"):
        bfcl_run.load_category(data, "live_simple")


def _cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_runs_a_tiny_builtin_model_and_a_run_directory(capsys, tmp_path):
    out = tmp_path / "p.jsonl"
    args = ["bfcl", "run", "--category", "parallel", "--data", str(SHARED), "-n", "2",
            "--max-new-tokens", "4", "--json"]  # fmt: skip
    code, stdout, _ = _cli(capsys, *args, "--model", "builtin", "--out", str(out))
    result = json.loads(stdout)
    assert code == 0 and result["n"] == 2 and result["tool_style"] == "names"
    assert result["correct"] == 0 and len(out.read_text().splitlines()) == 2
    # a demo run directory: its latest checkpoint, prompted in its saved tool style
    from tooltune.policies import BuiltinPolicy
    from tooltune.prompt_format import PromptFormat

    questions = bfcl_run.load_category(SHARED, "parallel", limit=2)
    policy = BuiltinPolicy.create([bfcl_run.question_prompt(q, "compact") for q in questions],
                                  vocab_size=300, max_seq_len=4096)  # fmt: skip
    policy.prompt_format = PromptFormat(tool_style="compact")
    policy.save(tmp_path / "run" / "checkpoints" / "latest" / "policy")
    code, stdout, _ = _cli(capsys, *args, "--model", str(tmp_path / "run"), "--out", str(out))
    assert code == 0 and json.loads(stdout)["tool_style"] == "compact"
    code, _, err = _cli(capsys, *args, "--model", str(tmp_path / "nowhere"))
    assert code == 2 and "--model must be builtin" in err
    code, _, err = _cli(capsys, "bfcl", "run", "--category", "simple", "--data", str(tmp_path))
    assert code == 2 and "no questions for category simple" in err
