"""Every example environment trains end to end at smoke size on the built-in model, through
`tooltune train`, and a trained run evaluates through `tooltune eval --env`."""

import json
from pathlib import Path

import pytest

from tooltune.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Smaller than the smoke preset (no copy drill, reward model or validation rollouts): these
# test the plumbing of each kind of environment, `tooltune demo --preset smoke` the rest.
FAST = ["pipeline.copy_drill_steps=0", "pipeline.reward_model_tasks=0", "pipeline.val_tasks=0",
        "pipeline.sft_tasks=16", "sft_epochs=1", "pipeline.max_seq_len=768",
        "max_trajectory_len=768"]  # fmt: skip
RUNS_THE_PIPELINE = pytest.mark.timeout(900)  # a loaded 2-core machine is many times slower


def _train(name: str, out: Path, *extra: str) -> list[str]:
    sets = [arg for s in FAST for arg in ("--set", s)]
    return ["train", "--env", str(EXAMPLES / name / "env.py"), "--model", "builtin",
            "--preset", "smoke", "--out", str(out), *sets, *extra]  # fmt: skip


def _check_run(run: Path, groups: set[str]) -> dict:
    for name in ("config.json", "metrics.jsonl", "metrics.json", "report.md", "report.html",
                 "state.json", "demonstrations.jsonl", "trajectories.jsonl"):  # fmt: skip
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "latest" / "COMPLETE").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    for stage in ("before", "after_sft", "after_grpo"):
        assert set(metrics[stage]["accuracy"]) == groups | {"overall"}
        assert metrics[stage]["n_test_tasks"] > 0
    report = (run / "report.md").read_text()
    assert "| Group |" in report and "Seed target" not in report
    return metrics


def _grpo_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == "grpo"]


@RUNS_THE_PIPELINE
def test_calculator_trains_reports_its_reward_and_resumes(tmp_path, capsys):
    run = tmp_path / "calc"
    assert main(_train("calculator", run)) == 0
    metrics = _check_run(run, {"sum", "product"})
    assert "expert demonstrations" in (run / "report.md").read_text()
    rows = _grpo_rows(run)
    assert rows and all("reward.one_call" in r and "reward.outcome" in r for r in rows)
    capsys.readouterr()
    assert main(_train("calculator", run)) == 0  # resumed: every stage done, nothing rerun
    out = capsys.readouterr().out
    assert "resuming" in out and "[sft]" not in out
    assert json.loads((run / "metrics.json").read_text()) == metrics
    argv = ["eval", "--env", str(EXAMPLES / "calculator" / "env.py"), "--policy",
            str(run / "checkpoints" / "latest" / "policy"), "-n", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_tasks"] == 4 and set(printed["accuracy"]) == {"sum", "product", "overall"}


@RUNS_THE_PIPELINE
def test_inventory_api_trains_on_its_openapi_service(tmp_path):
    run = tmp_path / "inventory"
    assert main(_train("inventory_api", run)) == 0
    _check_run(run, {"stock", "price", "name"})
    demos = (run / "demonstrations.jsonl").read_text()
    assert '"get_item"' in demos and '"stock"' in demos  # the service's answers, over HTTP


@RUNS_THE_PIPELINE
def test_todo_mcp_trains_with_a_list_per_episode(tmp_path):
    run = tmp_path / "todo"
    assert main(_train("todo_mcp", run)) == 0
    _check_run(run, {"one item", "several items"})
    assert "demonstrations" in (run / "report.md").read_text()


def test_examples_are_short():
    sizes = {p.parent.name: len(p.read_text().splitlines()) for p in EXAMPLES.glob("*/env.py")}
    assert len(sizes) >= 3 and max(sizes.values()) <= 60 and min(sizes.values()) <= 30
    smallest = min(sizes, key=sizes.get)
    whole = (EXAMPLES / smallest / "env.py").read_text()
    assert whole in (EXAMPLES / "README.md").read_text()  # the README shows it whole


def test_train_refuses_an_env_file_without_an_environment(tmp_path, capsys):
    (tmp_path / "env.py").write_text("x = 1\n")
    assert main(["train", "--env", str(tmp_path / "env.py"), "--model", "builtin",
                 "--preset", "smoke", "--out", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "defines no environment: looked for `env`" in err


def test_train_refuses_the_builtin_model_without_sft_data(tmp_path, capsys):
    (tmp_path / "tasks.jsonl").write_text(json.dumps({"prompt": "1+1?", "answer": 2}) + "\n")
    (tmp_path / "env.py").write_text(
        "from pathlib import Path\nfrom tooltune import ToolEnv, tool\n\n"
        "@tool\ndef add(a: int, b: int) -> int:\n    'Add.'\n    return a + b\n\n"
        "env = ToolEnv(Path(__file__).with_name('tasks.jsonl'), [add])\n"
    )
    argv = ["train", "--env", str(tmp_path / "env.py"), "--model", "builtin", "--preset",
            "smoke", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    assert "give the environment demonstrations= or expert=" in capsys.readouterr().err
    assert not (tmp_path / "run" / "state.json").exists()  # refused before training started
