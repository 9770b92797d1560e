"""The pipeline's reward-model stage: train `AgentRewardModel` on verified episodes of training tasks.

Between "after_sft" and "grpo" the SFT'd policy is sampled on `pipeline.reward_model_tasks`
training tasks (their own seed, never a test task), `SAMPLES_PER_TASK` episodes each at GRPO's
temperature, scored by GRPO's rubric and verified; the expert adds one episode on every second
task so that tasks the policy never solves still show what success looks like. The episodes are
split by task into training and held-out tasks, the reward model is trained, and its held-out
accuracy (success predicted where the `task_completion` logit is > 0) and ROC AUC are reported,
on all held-out episodes and on the policy's own ones. The model is saved to
`checkpoints/reward_model.pt`; with `reward_baseline = "learned"` GRPO loads it as its baseline.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from tooltune.config import ConfigError
from tooltune.rollout import SamplingParams, TrajectoryCollector, tokenize_trajectory
from tooltune.training.reward_model import (
    AgentRewardModel,
    learned_baseline,
    predict,
    roc_auc,
    split_by_group,
    train_reward_model,
)

MODEL_PATH = "checkpoints/reward_model.pt"
SAMPLES_PER_TASK = 2
VAL_FRACTION = 0.25
EPOCHS = 12
# Sized for a CPU: one 32-wide layer over the last 256 tokens (where the answer is) trains on a
# batch of 32 in about 1 s on 2 cores; the model's defaults (2 x 64 over 512) take about 6 s.
MODEL = {"d_model": 32, "nhead": 4, "num_layers": 1, "max_len": 256}
SEED_OFFSET = 3  # task seeds: SFT config.seed, test +1, validation +2, reward model +3


def check_settings(config: Any, settings: Any) -> None:
    """A learned baseline needs a reward model: fail before any training if none will be."""
    if config.reward_baseline == "learned" and settings.reward_model_tasks == 0:
        raise ConfigError(
            'reward_baseline = "learned" needs the reward model the pipeline trains: set '
            "pipeline.reward_model_tasks to at least 2 (e.g. --set pipeline.reward_model_tasks=16)"
        )


def policy_vocab_size(policy: Any) -> int:
    """The number of token ids the policy's embeddings accept (added tokens included)."""
    model = policy.model
    if hasattr(model, "get_input_embeddings"):
        return int(model.get_input_embeddings().num_embeddings)
    return int(model.config.vocab_size)


def collect_episodes(pipeline: Any, tasks: Sequence[Any]) -> list[Any]:
    """Policy samples (GRPO's sampling and rubric) plus expert episodes, all with token ids."""
    cfg, s, policy = pipeline.config, pipeline.settings, pipeline.policy
    rubric = pipeline.env.rubric(cfg)
    sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed * 1_000_003 - 1)  # fmt: skip
    policy.eval()
    sampled = TrajectoryCollector(policy, pipeline.env.registry, cfg, sampling=sampling,
                                  tool_style=s.tool_style, reward_fn=rubric.apply)  # fmt: skip
    episodes = sampled.collect(list(tasks), num_samples=SAMPLES_PER_TASK)
    for t in episodes:
        t.metadata["source"] = "policy"
    expert = pipeline.env.expert()  # None: an environment without one (policy samples only)
    if expert is None:
        return episodes
    expert_tasks = list(tasks)[::2]
    expert.prepare(expert_tasks)
    scripted = TrajectoryCollector(expert, pipeline.env.registry, cfg, tool_style=s.tool_style,
                                   reward_fn=rubric.apply)  # fmt: skip
    for t in scripted.collect(expert_tasks):
        t.metadata["source"] = "expert"
        if t.tokens is None or not t.tokens.ids:
            t.tokens = tokenize_trajectory(t, policy.encode, s.tool_style)
        episodes.append(t)
    return episodes


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _accuracy(probs: Sequence[float], labels: Sequence[bool]) -> float:
    if not labels:
        return float("nan")
    return sum((p >= 0.5) == y for p, y in zip(probs, labels, strict=True)) / len(labels)


def fit(
    episodes: Sequence[Any],
    vocab_size: int,
    pad_id: int = 0,
    seed: int = 0,
    epochs: int = EPOCHS,
    log: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> tuple[AgentRewardModel, dict[str, Any]]:
    """Train on `episodes` (labelled by `success`, split by task) and summarise held-out quality.

    The summary's held-out figures are on tasks none of whose episodes were trained on; `tasks`
    lists the task ids of each side.
    """
    model, report = train_reward_model(episodes, vocab_size, pad_id=pad_id, epochs=epochs,
                                       val_fraction=VAL_FRACTION, seed=seed, log=log,
                                       **{**MODEL, **kwargs})  # fmt: skip
    train_idx, val_idx = split_by_group(episodes, VAL_FRACTION, seed)  # the split it trained on
    own = [episodes[i] for i in val_idx if episodes[i].metadata.get("source") != "expert"]
    own_probs = predict(model, own)["task_completion"] if own else []
    own_labels = [bool(t.success) for t in own]
    summary = {
        "n_trajectories": len(episodes),
        "n_tasks": len({t.task_id for t in episodes}),
        "n_expert": sum(t.metadata.get("source") == "expert" for t in episodes),
        "success_rate": sum(bool(t.success) for t in episodes) / len(episodes),
        "n_train": report.n_train,
        "n_held_out": report.n_val,
        "n_train_tasks": len({episodes[i].task_id for i in train_idx}),
        "n_held_out_tasks": len({episodes[i].task_id for i in val_idx}),
        "held_out_accuracy": _finite(report.val_accuracy),
        "held_out_auc": _finite(report.val_auc),
        "held_out_total_reward_mse": _finite(report.val_total_mse),
        "held_out_policy_samples": len(own),
        "held_out_policy_accuracy": _finite(_accuracy(own_probs, own_labels)),
        "held_out_policy_auc": _finite(roc_auc(own_probs, own_labels)),
        "train_loss": report.train_loss,
        "val_loss": report.val_loss,
        "tasks": {
            "train": sorted({str(episodes[i].task_id) for i in train_idx}),
            "held_out": sorted({str(episodes[i].task_id) for i in val_idx}),
        },
    }
    return model, summary


def run_stage(pipeline: Any) -> dict[str, Any]:
    """Collect, train, save `MODEL_PATH` atomically, log one metrics row per epoch; the summary."""
    cfg, s = pipeline.config, pipeline.settings
    started = time.perf_counter()
    tasks = pipeline._tasks("train", s.reward_model_tasks, cfg.seed + SEED_OFFSET)
    episodes = collect_episodes(pipeline, tasks)
    collected = time.perf_counter()
    model, summary = fit(episodes, policy_vocab_size(pipeline.policy),
                         pad_id=int(pipeline.policy.pad_token_id), seed=cfg.seed)  # fmt: skip
    path = pipeline.run.dir / MODEL_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    model.save(tmp)
    os.replace(tmp, path)
    summary["seconds"] = {"collect": collected - started, "train": time.perf_counter() - collected}
    losses = zip(summary["train_loss"], summary["val_loss"], strict=True)
    for epoch, (train, val) in enumerate(losses):
        pipeline.run.log_metrics({"stage": "reward_model", "epoch": epoch + 1,
                                  "train_loss": train, "val_loss": val})  # fmt: skip
    pipeline.log(f"[reward_model] trained on {describe(summary)}")
    return summary


def describe(summary: dict[str, Any]) -> str:
    """What the model was trained on and how well it does on held-out tasks, for log and report."""

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0%}"

    def num(x: float | None) -> str:
        return "n/a (one class only)" if x is None else f"{x:.2f}"

    return (
        f"{summary['n_train']} trajectories of {summary['n_train_tasks']} training tasks "
        f"({summary['n_trajectories']} collected on training tasks, {summary['n_expert']} of them "
        f"the expert's, {pct(summary['success_rate'])} successful); held-out ({summary['n_held_out_tasks']} tasks, "
        f"{summary['n_held_out']} trajectories): accuracy {pct(summary['held_out_accuracy'])}, "
        f"AUC {num(summary['held_out_auc'])}; on the policy's own {summary['held_out_policy_samples']} "
        f"held-out samples: accuracy {pct(summary['held_out_policy_accuracy'])}, "
        f"AUC {num(summary['held_out_policy_auc'])}"
    )


def baseline_fn(pipeline: Any) -> Callable[[Sequence[Any]], list[float]]:
    """GRPO's learned baseline from the stage's saved reward model."""
    path = pipeline.run.dir / MODEL_PATH
    if not path.exists():
        raise ConfigError(f"{path} is missing (the reward model stage did not run); use --fresh")
    return learned_baseline(AgentRewardModel.load(path))
