"""The pipeline's reward-model stage: data from training tasks only, held-out figures on other
tasks, and `reward_baseline = "learned"` through a real (tiny) demo run."""

import json
import random

import pytest

from tooltune.config import AgentConfig, ConfigError, TaskTier
from tooltune.training import reward_stage
from tooltune.training.pipeline import AgentTrainingPipeline, PipelineSettings
from tooltune.types import AgentTrajectory, TokenRecord


def toy_episodes(n_tasks: int, seed: int = 0) -> list[AgentTrajectory]:
    """Two policy samples a task (success iff the ids carry token 3) and one expert episode."""
    rng = random.Random(seed)
    out = []
    for task in range(n_tasks):
        for k, source in enumerate(("policy", "policy", "expert")):
            success = source == "expert" or (task + k) % 3 == 0
            ids = [rng.randrange(10, 32) for _ in range(12)]
            ids.insert(rng.randrange(len(ids)), 3 if success else 4)
            t = AgentTrajectory(
                prompt="p", task_tier=TaskTier.SIMPLE, task_id=f"train-9-{task:05d}"
            )
            t.tokens = TokenRecord(ids=ids, mask=[1] * len(ids), logprobs=[0.0] * len(ids))
            t.success, t.total_reward = success, 1.0 if success else 0.1
            t.metadata["source"] = source
            out.append(t)
    return out


def test_fit_reports_figures_on_held_out_tasks_only():
    episodes = toy_episodes(16)
    model, summary = reward_stage.fit(episodes, 32, seed=0, epochs=3, d_model=16, num_layers=1)
    train, held_out = set(summary["tasks"]["train"]), set(summary["tasks"]["held_out"])
    assert train.isdisjoint(held_out) and train | held_out == {t.task_id for t in episodes}
    assert summary["n_held_out_tasks"] == len(held_out) == 4  # a quarter of the tasks
    assert summary["n_train"] + summary["n_held_out"] == summary["n_trajectories"] == 48
    assert summary["n_expert"] == 16 and summary["held_out_policy_samples"] == 8
    for key in ("held_out_accuracy", "held_out_auc", "held_out_policy_accuracy"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert len(summary["train_loss"]) == len(summary["val_loss"]) == 3
    text = reward_stage.describe(summary)
    assert "held-out (4 tasks" in text and "AUC" in text


def test_auc_of_one_class_is_reported_as_missing_not_as_a_number():
    episodes = [t for t in toy_episodes(8) if t.metadata["source"] == "expert" or not t.success]
    for t in episodes:
        t.success = t.metadata["source"] == "expert"  # the policy never succeeds
    _, summary = reward_stage.fit(episodes, 32, seed=0, epochs=1, d_model=16, num_layers=1)
    assert summary["held_out_policy_auc"] is None
    assert "n/a (one class only)" in reward_stage.describe(summary)


def test_a_learned_baseline_without_a_reward_model_is_a_config_error(tmp_path):
    config = AgentConfig(reward_baseline="learned")
    with pytest.raises(ConfigError, match="pipeline.reward_model_tasks"):
        AgentTrainingPipeline(None, config, PipelineSettings(reward_model_tasks=0), tmp_path)
    with pytest.raises(ConfigError, match="reward_model_tasks"):
        PipelineSettings(reward_model_tasks=1)  # one task cannot be split into train/held-out
    AgentTrainingPipeline(None, config, PipelineSettings(reward_model_tasks=2), tmp_path)


def test_demo_with_learned_baseline_trains_the_reward_model_on_training_tasks(
    tmp_path, monkeypatch, distinct_grpo_rewards
):
    """A tiny smoke run: the stage sees only training tasks, and every GRPO group's advantages
    come from the reward model's baseline."""
    from tooltune.cli import main

    seen_tasks, baseline_calls = [], []
    collect = reward_stage.collect_episodes

    def spy_collect(pipeline, tasks):
        seen_tasks.extend(tasks)
        return collect(pipeline, tasks)

    make_baseline = reward_stage.learned_baseline

    def spy_baseline(model, *args):
        inner = make_baseline(model, *args)

        def baseline(group):
            values = inner(group)
            baseline_calls.append((len(group), values))
            return values

        return baseline

    monkeypatch.setattr(reward_stage, "collect_episodes", spy_collect)
    monkeypatch.setattr(reward_stage, "learned_baseline", spy_baseline)
    run = tmp_path / "run"
    sets = ["reward_baseline=learned", "sft_epochs=1", "pipeline.sft_tasks=16",
            "pipeline.val_tasks=0", "pipeline.copy_drill_steps=0", "pipeline.eval_tasks_per_tier=1",
            "pipeline.grpo_steps=1", "pipeline.reward_model_tasks=4"]  # fmt: skip
    argv = ["demo", "--preset", "smoke", "--out", str(run), "--world", str(tmp_path / "world")]
    assert main([*argv, *[a for s in sets for a in ("--set", s)]]) == 0

    assert len(seen_tasks) == 4 and all(t.split == "train" for t in seen_tasks)
    state = json.loads((run / "state.json").read_text())
    rm = state["metrics"]["reward_model"]
    ids = set(rm["tasks"]["train"]) | set(rm["tasks"]["held_out"])
    assert ids == {t.id for t in seen_tasks} and not any(i.startswith("test-") for i in ids)
    assert set(rm["tasks"]["train"]).isdisjoint(rm["tasks"]["held_out"])
    assert rm["n_trajectories"] == 4 * 2 + 2  # two samples a task, the expert on two tasks
    assert state["completed"].index("reward_model") == state["completed"].index("grpo") - 1
    assert (run / reward_stage.MODEL_PATH).is_file()

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    assert len(grpo) == 1 and grpo[0]["num_groups"] == 2 and grpo[0]["skipped_groups"] == 0
    assert len(baseline_calls) == 2  # one call per group, each one value per sample
    assert all(len(values) == n for n, values in baseline_calls)
    assert len([r for r in rows if r["stage"] == "reward_model"]) == len(rm["train_loss"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["reward_model"]["n_trajectories"] == 10
    assert "## Reward model" in (run / "report.md").read_text()


def test_grpo_draws_its_tasks_by_data_seed(tmp_path):
    """GRPO's tasks follow `data_seed`; unset, `seed`, as before it existed."""

    class Draws:
        seeds: list[int] = []

        def sample_tasks(self, split, n, seed, per_group=False):
            self.seeds.append(seed)
            return []

    def first_step_seed(**kw):
        pipeline = AgentTrainingPipeline(None, AgentConfig(**kw), PipelineSettings(), tmp_path)
        pipeline.env = Draws()
        pipeline._grpo_tasks(0)
        return pipeline.env.seeds[-1]

    assert first_step_seed() == first_step_seed(data_seed=0)
    assert first_step_seed(data_seed=1) == first_step_seed(seed=1) != first_step_seed()
    assert first_step_seed(seed=1, data_seed=0) == first_step_seed()
