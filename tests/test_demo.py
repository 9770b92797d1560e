"""The main job end to end: `tooltune demo --preset smoke`, and a kill-and-resume run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tooltune.cli import main
from tooltune.config import ConfigError

TIERS = ("simple", "multi_tool_seq", "multi_tool_par", "complex")


def _demo_args(tmp_path: Path, run: str, *extra: str) -> list[str]:
    return [
        "demo",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path / run),
        "--world",
        str(tmp_path / "world"),
        *extra,
    ]


def _check_run(run: Path) -> dict:
    for name in (
        "config.json",
        "metrics.jsonl",
        "trajectories.jsonl",
        "report.md",
        "report.html",
        "metrics.json",
        "curves.png",
        "state.json",
    ):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "latest" / "COMPLETE").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    for stage in ("before", "after_sft", "after_grpo"):
        row = metrics[stage]
        assert set(TIERS) <= set(row["accuracy"])
        assert all(0.0 <= row["accuracy"][t] <= 1.0 for t in TIERS)
        for key in ("avg_steps", "tool_call_failure_rate", "unnecessary_call_rate"):
            assert row[key] >= 0
        assert row["n_test_tasks"] > 0
    report = (run / "report.md").read_text()
    assert "| Simple |" in report and "After GRPO" in report and "Tool Call Failures" in report
    rm = metrics["reward_model"]  # trained on training tasks' episodes, judged on held-out tasks
    assert rm["n_trajectories"] > 0 and rm["n_train_tasks"] > 0 and rm["n_held_out_tasks"] > 0
    for key in ("held_out_accuracy", "held_out_auc"):
        assert rm[key] is None or 0.0 <= rm[key] <= 1.0, key
    assert "## Reward model" in report and "held-out (" in report
    return metrics


def test_smoke_demo_writes_a_complete_run(tmp_path, capsys):
    started = time.perf_counter()
    assert main(_demo_args(tmp_path, "run")) == 0
    out = capsys.readouterr().out
    assert "total time" in out
    metrics = _check_run(tmp_path / "run")
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    assert [r["step"] for r in grpo] == list(range(len(grpo))) and grpo
    sft = [r for r in rows if r["stage"] == "sft"]
    assert len(sft) == 2 and sft[1]["train_loss"] < sft[0]["train_loss"]  # SFT learns
    assert metrics["after_sft"]["n_test_tasks"] == metrics["before"]["n_test_tasks"]
    print(f"smoke demo took {time.perf_counter() - started:.0f} s")


@pytest.mark.slow
def test_killed_run_resumes_without_lost_or_repeated_steps(tmp_path):
    args = _demo_args(tmp_path, "run", "--set", "pipeline.grpo_steps=4")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tooltune.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state_path = tmp_path / "run" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if state_path.exists() and json.loads(state_path.read_text()).get("grpo_step", 0) >= 2:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the run never reached GRPO step 2")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(args) == 0
    _check_run(tmp_path / "run")
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows if r["stage"] == "grpo"] == list(range(4))
    assert [r["stage"] for r in rows].count("copy_drill") == 1  # kept across the resume
    assert [r["stage"] for r in rows if r["stage"] in ("before", "after_sft", "after_grpo")] == [
        "before",
        "after_sft",
        "after_grpo",
    ]


def test_hugging_face_models_get_compact_tools_room_for_turns_and_small_micro_batches():
    """SmolLM2: compact tool listings, turns as long as the expert's, two rows a micro-batch."""
    from tooltune.cli import build_parser
    from tooltune.training.demo import resolve_demo

    def resolve(*argv: str):
        return resolve_demo(build_parser().parse_args(["demo", "--preset", "smoke", *argv]))

    config, settings = resolve("--model", "smollm2-135m")
    assert settings.model == "smollm2-135m" and settings.tool_style == "compact"
    assert config.max_trajectory_len == 2048 and settings.max_seq_len == 2048
    assert config.max_new_tokens >= 144  # the expert's longest turn: 58-132 SmolLM2 tokens
    assert config.grad_accum_steps == config.sft_batch_size // 2
    config, settings = resolve("--model", "smollm2-135m", "--set", "max_trajectory_len=4096",
                               "--set", "pipeline.tool_style=json")  # fmt: skip
    assert config.max_trajectory_len == 4096 and settings.tool_style == "json"
    _, settings = resolve("--model", "smollm2-135m", "--device", "cpu")
    assert settings.device == "cpu" and settings.dtype == "auto"
    with pytest.raises(ConfigError, match="pipeline.device"):
        resolve("--model", "smollm2-135m", "--device", "gpu0")
    config, settings = resolve()  # the built-in model keeps the preset
    assert settings.tool_style == "names" and config.max_trajectory_len == 1536
    assert config.grad_accum_steps == 1 and config.max_new_tokens == 48


def test_the_default_demo_trains_the_copy_head_model_and_hf_models_go_without_its_aids():
    from tooltune.cli import build_parser
    from tooltune.training.demo import resolve_demo

    def resolve(*argv: str):
        return resolve_demo(build_parser().parse_args(["demo", *argv]))

    config, settings = resolve()
    assert settings.copy_head and settings.copy_drill_steps > 0 and config.sft_context_weight > 0
    config, settings = resolve("--model", "smollm2-135m")
    assert not settings.copy_head and config.sft_context_weight == 0
    config, _ = resolve("--model", "smollm2-135m", "--set", "sft_context_weight=0.05")
    assert config.sft_context_weight == 0.05  # an explicit choice still wins
