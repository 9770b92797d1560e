"""The main job end to end: `tooltune demo --preset smoke`, and a kill-and-resume run."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tooltune.cli import main
from tooltune.config import ConfigError
from tooltune.training.demo import usable_cpus

TIERS = ("simple", "multi_tool_seq", "multi_tool_par", "complex", "no_tool")
# The suite's 300 s limit catches hangs; a whole pipeline run takes 10-25 s on a quiet 2-core
# machine and took 211 s on a loaded one, so these get more room.
RUNS_THE_PIPELINE = pytest.mark.timeout(900)


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
        "accuracy.png",
        "state.json",
    ):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "latest" / "COMPLETE").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    per_tier = json.loads((run / "config.json").read_text())["pipeline"]["eval_tasks_per_tier"]
    for stage in ("before", "after_sft", "after_grpo"):
        row = metrics[stage]
        assert row["n_test_tasks"] == len(TIERS) * per_tier
        for tier in TIERS:  # a count of solved tasks out of the tier's, not any number
            solved = row["accuracy"][tier] * per_tier
            assert abs(solved - round(solved)) < 1e-9 and 0 <= round(solved) <= per_tier
        assert (
            1.0
            <= row["avg_steps"]
            <= json.loads((run / "config.json").read_text())["config"]["max_turns"]
        )  # every episode takes at least one step, at most max_turns
        for key in ("tool_call_failure_rate", "unnecessary_call_rate"):
            assert 0.0 <= row[key] <= 1.0
    report = (run / "report.md").read_text()
    assert "| Simple |" in report and "After GRPO" in report and "Tool Call Failures" in report
    assert "| No tool needed |" in report
    rm = metrics["reward_model"]  # trained on training tasks' episodes, judged on held-out tasks
    assert rm["n_trajectories"] > 0 and rm["n_train_tasks"] > 0 and rm["n_held_out_tasks"] > 0
    for key in ("held_out_accuracy", "held_out_auc"):
        assert rm[key] is None or 0.0 <= rm[key] <= 1.0, key
    assert "## Reward model" in report and "held-out (" in report
    return metrics


@RUNS_THE_PIPELINE
def test_smoke_demo_writes_a_complete_run(tmp_path, capsys, distinct_grpo_rewards):
    started = time.perf_counter()
    assert main(_demo_args(tmp_path, "run")) == 0
    out = capsys.readouterr().out
    assert "total time" in out
    run = tmp_path / "run"
    metrics = _check_run(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    assert [r["step"] for r in grpo] == list(range(len(grpo))) and grpo
    sft = [r for r in rows if r["stage"] == "sft"]
    assert len(sft) == 2 and sft[1]["train_loss"] < sft[0]["train_loss"]  # SFT learns
    assert metrics["after_sft"]["n_test_tasks"] == metrics["before"]["n_test_tasks"]
    # GRPO did something: it stepped the optimizer on real tokens, and the weights moved
    assert sum(r["optimizer_steps"] for r in grpo) > 0 and sum(r["num_tokens"] for r in grpo) > 0
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in grpo if r["num_tokens"])
    after_sft = torch.load(run / "checkpoints/sft/policy/model.pt", weights_only=True)
    after_grpo = torch.load(run / "checkpoints/latest/policy/model.pt", weights_only=True)
    assert any(not torch.equal(after_sft[k], after_grpo[k]) for k in after_sft)
    print(f"smoke demo took {time.perf_counter() - started:.0f} s")


@RUNS_THE_PIPELINE
def test_the_pipeline_trains_a_hugging_face_model(tmp_path, tiny_qwen2):
    """The pipeline's Hugging Face branch end to end on a tiny local Qwen2 (LoRA adapters):
    every stage runs, the run directory is complete, and the saved policy loads back."""
    from tooltune.training.run_dir import load_policy

    corpus = ["The quick brown fox jumps over the lazy dog.", '{"name": "x"}'] * 20
    model = tiny_qwen2(tmp_path / "qwen2", corpus, vocab_size=300, max_positions=4096)
    # this tokenizer writes ~1 token a character: a complex task's opening (2,500 characters with
    # its tools) needs more than the 2,048-token rows Hugging Face models get by default, or its
    # episode cannot start (0 steps; seed 1's test tasks)
    sets = ["pipeline.sft_tasks=8", "sft_epochs=1", "sft_batch_size=4", "pipeline.val_tasks=0",
            "pipeline.eval_tasks_per_tier=1", "pipeline.grpo_steps=1", "max_new_tokens=12",
            "max_turns=2", "pipeline.reward_model_tasks=2", "max_trajectory_len=4096",
            "pipeline.max_seq_len=4096"]  # fmt: skip
    args = _demo_args(tmp_path, "run", "--model", str(model), "--device", "cpu")
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    run = tmp_path / "run"
    metrics = _check_run(run)
    assert metrics["before"]["n_test_tasks"] == len(TIERS)
    config = json.loads((run / "config.json").read_text())
    assert (
        config["pipeline"]["model"] == str(model) and config["pipeline"]["tool_style"] == "compact"
    )
    assert (run / "checkpoints/latest/policy/adapter_config.json").is_file()  # LoRA adapters
    policy = load_policy(run / "checkpoints/latest/policy", dtype="fp32", device="cpu")
    assert policy.compute_dtype == torch.float32 and len(policy.encode("hello")) > 0


# `tooltune demo`, killed with SIGKILL (no cleanup, as kill -9 or the OOM killer) right after it
# logs the metrics row of GRPO step argv[1]: after the checkpoint before that step, before the
# next checkpoint, so the row must be dropped and the step run again when the run resumes.
# Rewards get the smoke test's nudge, so GRPO steps the optimizer and its state is resumed.
KILLED_IN_GRPO = """
import os, signal, sys
from tooltune.training import pipeline
from tooltune.training.grpo import GRPOTrainer
train_step = GRPOTrainer.train_step
def distinct_rewards(self, groups):
    for group in groups:
        for i, trajectory in enumerate(group):
            trajectory.total_reward += 0.01 * i
    return train_step(self, groups)
GRPOTrainer.train_step = distinct_rewards
log_metrics = pipeline.RunDirectory.log_metrics
def log_then_die(run, row):
    log_metrics(run, row)
    if row["stage"] == "grpo" and row["step"] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
pipeline.RunDirectory.log_metrics = log_then_die
from tooltune.cli import main
sys.exit(main(sys.argv[2:]))
"""


@RUNS_THE_PIPELINE
def test_killed_run_resumes_without_lost_or_repeated_steps(tmp_path, distinct_grpo_rewards):
    # every stage, smaller (half the smoke run's time); GRPO checkpoints every step
    sets = ["pipeline.grpo_steps=4", "pipeline.sft_tasks=16", "sft_epochs=1",
            "pipeline.val_tasks=0", "pipeline.eval_tasks_per_tier=1", "pipeline.copy_drill_steps=4",
            "pipeline.reward_model_tasks=4", "max_new_tokens=24"]  # fmt: skip
    args = _demo_args(tmp_path, "run", *[a for s in sets for a in ("--set", s)])
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_IN_GRPO, "2", *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its tool workers, if any outlived it
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
    state = json.loads((run / "state.json").read_text())
    assert "grpo" not in state["completed"] and state["grpo_step"] == 2  # killed mid-GRPO
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    grpo_logged = [r["step"] for r in logged if r["stage"] == "grpo"]
    assert grpo_logged == [0, 1, 2]  # step 2's row came after the last checkpoint
    trainer = torch.load(run / state["checkpoint"] / "trainer.pt", weights_only=False)
    assert trainer["optimizer"]["state"]  # AdamW's moments, which the resumed run loads

    assert main(args) == 0  # with distinct_grpo_rewards, as in the killed process
    _check_run(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "grpo"] == list(range(4))  # 2 once, 3 run
    assert [r["stage"] for r in rows].count("copy_drill") == 1  # kept across the resume
    assert [r["stage"] for r in rows if r["stage"] in ("before", "after_sft", "after_grpo")] == [
        "before",
        "after_sft",
        "after_grpo",
    ]
    assert json.loads((run / "state.json").read_text())["completed"][-1] == "after_grpo"


# `tooltune demo`, killed with SIGKILL right after the SFT checkpoint of step argv[1] is saved.
KILLED_IN_SFT = """
import os, signal, sys
from tooltune.training import pipeline
save_state = pipeline.RunDirectory.save_state
def save_then_die(run, state):
    save_state(run, state)
    if state.get("sft_step") == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
pipeline.RunDirectory.save_state = save_then_die
from tooltune.cli import main
sys.exit(main(sys.argv[2:]))
"""


@RUNS_THE_PIPELINE
def test_a_run_killed_in_sft_resumes_at_its_last_sft_checkpoint(tmp_path, capsys):
    # 8 SFT steps (16 tasks, batches of 4, 2 epochs), a checkpoint after each
    sets = ["pipeline.sft_tasks=16", "sft_epochs=2", "sft_batch_size=4", "pipeline.val_tasks=0",
            "pipeline.eval_tasks_per_tier=1", "pipeline.copy_drill_steps=4",
            "pipeline.grpo_steps=0", "pipeline.sft_checkpoint_minutes=0"]  # fmt: skip
    args = _demo_args(tmp_path, "run", *[a for s in sets for a in ("--set", s)])
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_SFT, "5", *args], capture_output=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=600)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    state = json.loads((run / "state.json").read_text())
    assert state["completed"] == ["data", "before"] and state["sft_step"] == 5  # killed in epoch 2
    trainer = run / state["checkpoint"] / "trainer.pt"
    saved = torch.load(trainer, weights_only=False)["sft"]
    assert len(saved["history"]["step_loss"]) == 5 and saved["history"]["train_loss"] != []

    good = trainer.read_bytes()  # a damaged progress file: a clear error, and nothing lost
    trainer.write_bytes(good[: len(good) // 2])
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "cannot read SFT's progress from" in error and "--fresh" in error, error
    trainer.write_bytes(good)

    assert main(args) == 0
    assert "[sft] resuming after step 5" in capsys.readouterr().out
    _check_run(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows].count("copy_drill") == 1  # not run again, its row kept
    sft = [r for r in rows if r["stage"] == "sft"]
    steps = [loss for r in sft for loss in r["step_loss"]]
    assert [r["epoch"] for r in sft] == [1, 2] and len(steps) == 8
    assert steps[:5] == saved["history"]["step_loss"]  # the killed run's steps, kept
    state = json.loads((run / "state.json").read_text())
    assert "sft_step" not in state and state["processes"] == 2
    assert "in 2 processes (resumed once;" in (run / "report.md").read_text()


def test_hugging_face_models_get_compact_tools_room_for_turns_and_small_micro_batches():
    """SmolLM2: compact tool listings, turns as long as the expert's, capped micro-batches."""
    from tooltune.cli import build_parser
    from tooltune.training.demo import resolve_demo

    def resolve(*argv: str):
        return resolve_demo(build_parser().parse_args(["demo", "--preset", "smoke", *argv]))

    config, settings = resolve("--model", "smollm2-135m")
    assert settings.model == "smollm2-135m" and settings.tool_style == "compact"
    assert config.max_trajectory_len == 3072 and settings.max_seq_len == 3072
    assert config.max_new_tokens >= 397  # the longest demonstrated turn (SmolLM2 tokens)
    assert config.micro_batch_tokens == 4096  # activations, not rows, set the memory
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


def _smollm2_tokenizer_and_default_demo():
    """SmolLM2's tokenizer (read from the bundled GGUF; skipped where it is not installed) and
    the default demo's config and settings."""
    transformers = pytest.importorskip("transformers")
    from tooltune.cli import build_parser
    from tooltune.policies.smollm2 import smollm2_gguf_path
    from tooltune.training.demo import resolve_demo

    try:
        gguf = smollm2_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return tokenizer, *resolve_demo(build_parser().parse_args(["demo"]))


def test_the_default_demo_leaves_room_for_every_expert_solution(tmp_path):
    """Every test and held-out-tools task of the default demo can be finished within its limits
    the way the expert solves it, counted in SmolLM2's own tokens: the context before the
    answer turn leaves that turn its `max_new_tokens`, and the whole episode fits the SFT row
    length. (At 2,048 four test bookings that search again after a sold-out flight, in a list
    cut short, could not be finished: no model could solve them.)"""
    import dataclasses

    from tooltune.environment import BuiltinWorld
    from tooltune.evaluation import run_evaluation
    from tooltune.tasks.expert import ExpertPolicy

    tokenizer, config, settings = _smollm2_tokenizer_and_default_demo()
    roomy = dataclasses.replace(config, max_trajectory_len=100_000)
    with BuiltinWorld(tmp_path / "world", seed=config.seed, config=roomy) as env:
        tasks = env.sample_tasks("test", settings.eval_tasks_per_tier, seed=config.seed + 1,
                                 per_group=True)  # fmt: skip
        tasks += env.sample_tasks("heldout_tools", settings.heldout_tools_tasks,
                                  seed=config.seed + 3)  # fmt: skip
        _, trajectories = run_evaluation(ExpertPolicy(tasks), tasks, env, roomy, batch_size=100,
                                         tool_style=settings.tool_style)  # fmt: skip
    longest = 0
    for task, trajectory in zip(tasks, trajectories, strict=True):
        assert trajectory.success, task.id
        text = trajectory.metadata["text"]
        context = len(tokenizer(text[: text.rfind("<|im_start|>assistant")]).input_ids)
        assert context + config.max_new_tokens <= config.max_trajectory_len, (task.id, context)
        assert len(tokenizer(text).input_ids) <= settings.max_seq_len, task.id
        longest = max(longest, context)
    assert longest + config.max_new_tokens > 2048  # the long bookings this is about are here


def test_every_demonstrated_turn_of_the_default_demo_fits_its_max_new_tokens(tmp_path):
    """SFT on a turn longer than `max_new_tokens` teaches one the model cannot finish when it
    runs: the default demo's limit holds the longest turn of its own demonstrations, in SmolLM2's
    tokens (schema tasks' parallel calls with their listed values: 397 since 80aa05c)."""
    from tooltune.env_data import collect_successes
    from tooltune.environment import BuiltinWorld
    from tooltune.rollout import tokenize_trajectory
    from tooltune.training.sft import longest_turn

    tokenizer, config, settings = _smollm2_tokenizer_and_default_demo()
    with BuiltinWorld(tmp_path / "world", seed=config.seed, config=config) as env:
        tasks = env.sample_tasks("train", settings.sft_tasks, seed=config.seed)
        demos, _ = collect_successes(env.expert(), env, tasks, config, settings.tool_style)
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    turns = [longest_turn(tokenize_trajectory(d, encode, settings.tool_style)) for d in demos]
    assert len(demos) > 0.99 * len(tasks)
    assert max(turns) <= config.max_new_tokens
    assert max(turns) > 352  # the long parallel turns this is about are here


def test_the_default_demo_trains_smollm2_and_the_builtin_model_keeps_its_own_preset():
    from tooltune.cli import build_parser
    from tooltune.training.demo import make_settings, resolve_demo

    def resolve(*argv: str):
        return resolve_demo(build_parser().parse_args(["demo", *argv]))

    config, settings = resolve()
    assert settings.model == "smollm2-135m" and settings.tool_style == "compact"
    assert not settings.copy_head and config.sft_context_weight == 0
    assert settings.eval_tasks_per_tier >= 50 and settings.before_tasks_per_tier >= 25
    assert 0 <= settings.train_layers < 30
    assert 0 < config.schema_task_share < 1  # BFCL-style tasks beside the world's own
    config, settings = resolve("--model", "builtin")  # the from-scratch model's own preset
    assert settings.model == "builtin" and settings.copy_head and settings.copy_drill_steps > 0
    assert config.schema_task_share == 0
    assert config.sft_context_weight > 0 and settings.tool_style == "names"
    config, _ = resolve("--model", "smollm2-135m", "--preset", "builtin",
                        "--set", "sft_context_weight=0.05")  # fmt: skip
    assert config.sft_context_weight == 0.05  # an explicit choice still wins
    _, settings = resolve("--set", "pipeline.lora_dropout=0")  # an int where a float is due
    assert settings.lora_dropout == 0.0
    with pytest.raises(ConfigError, match="train_layers"):
        resolve("--set", "pipeline.train_layers=-1")
    _, settings = resolve("--set", "pipeline.lora_layers=6")  # the former name
    assert settings.train_layers == 6
    with pytest.raises(ConfigError, match="former name"):
        make_settings({"lora_layers": 6, "train_layers": 6})


def test_threads_follow_the_cores_the_process_may_use(monkeypatch):
    """Two demos pinned to one core each must not start two threads each."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert usable_cpus() == 1
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert usable_cpus() == 4
