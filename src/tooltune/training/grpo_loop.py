"""The GRPO loop. Each step samples a batch of tasks, plays every task `num_generations` times
(a rollout), and updates the policy on those groups of scored episodes with
`GRPOTrainer.train_step` (advantages within each group, then the clipped, KL-penalised loss).

A rollout is a plain function, `(tasks, num_generations, seed) -> episodes`, grouped task by
task and scored (`total_reward`, `success`): the in-process collector, Ray workers or anything
else that plays episodes trains with the same loop. `collector_rollout` makes one from a
`TrajectoryCollector`.

    trainer = GRPOTrainer(policy, policy.clone(), optimizer, config)
    collector = TrajectoryCollector(policy, registry, config, reward_fn=rubric.apply)
    train_grpo(trainer, lambda step: tasks_of(step), collector_rollout(collector), steps=100)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tooltune.training.grpo import GRPOTrainer
from tooltune.types import AgentTrajectory

# (tasks, num_generations, seed) -> num_generations scored episodes per task, in task order
Rollout = Callable[[Sequence[Any], int, int], list[AgentTrajectory]]


@dataclass
class GRPOStep:
    """What one step did: its episodes, grouped task by task, and its metrics (`success_rate`,
    the trainer's metrics, and the mean of every reward term as `reward.<term>`)."""

    step: int
    trajectories: list[AgentTrajectory]
    metrics: dict[str, float]


def step_seed(seed: int, step: int) -> int:
    """The seed a step samples with: every step draws fresh episodes, reproducibly."""
    return seed * 1_000_003 + step


def train_grpo(
    trainer: GRPOTrainer,
    tasks: Callable[[int], Sequence[Any]],
    rollout: Rollout,
    steps: int,
    *,
    start: int = 0,
    seed: int = 0,
    on_step: Callable[[GRPOStep], None] | None = None,
    checkpoint: Callable[[int], None] | None = None,
    checkpoint_every: int = 0,
) -> list[dict[str, float]]:
    """Train `trainer.policy` for steps `start` .. `steps - 1`; returns each step's metrics.

    `tasks(step)` is the step's batch of tasks. After each step `on_step` sees what it did,
    and every `checkpoint_every` steps `checkpoint(steps_done)` may save the policy and the
    trainer's optimizer and scheduler: a run resumed with `start=steps_done` takes the same
    steps as one that was never stopped."""
    n = trainer.config.num_generations
    history = []
    for step in range(start, steps):
        batch = tasks(step)
        torch.manual_seed(step_seed(seed, step))
        trainer.policy.model.eval()
        trajectories = rollout(batch, n, step_seed(seed, step))
        groups = [trajectories[i : i + n] for i in range(0, len(trajectories), n)]
        trainer.policy.model.train()
        metrics = step_metrics(trajectories, trainer.train_step(groups))
        history.append(metrics)
        if on_step is not None:
            on_step(GRPOStep(step, trajectories, metrics))
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            checkpoint(step + 1)
    return history


def step_metrics(
    trajectories: Sequence[AgentTrajectory], trained: dict[str, float]
) -> dict[str, float]:
    """A step's metrics: its success rate, the update's metrics, and each reward term's mean."""
    terms: dict[str, list[float]] = {}
    for t in trajectories:
        for name, value in t.reward_components.items():
            terms.setdefault(f"reward.{name}", []).append(value)
    success = sum(t.success for t in trajectories) / max(len(trajectories), 1)
    return {"success_rate": success, **trained, **{k: sum(v) / len(v) for k, v in terms.items()}}


def collector_rollout(collector: Any) -> Rollout:
    """A rollout that plays through `collector`: a `TrajectoryCollector`, or anything with
    its `sampling` and `collect(tasks, num_samples)` (a `RayRolloutBackend`)."""

    def rollout(tasks: Sequence[Any], num_generations: int, seed: int) -> list[AgentTrajectory]:
        collector.sampling = dataclasses.replace(collector.sampling, seed=seed)
        return collector.collect(tasks, num_samples=num_generations)

    return rollout
