import copy
import random

import pytest
import torch

from tooltune.rollout import SamplingParams
from tooltune.training.grpo import GRPOTrainer
from tooltune.training.grpo_loop import collector_rollout, step_seed, train_grpo
from tooltune.training.schedule import make_scheduler

PROMPT = [1, 2, 3]
END = 7


def make_rollout(policy, make_traj, calls=None):
    """Plays each task `n` times with the policy's current log-probs; rewards drawn from the
    seed, so a step's episodes depend on the step and on the policy alone."""

    def rollout(tasks, n, seed):
        if calls is not None:
            calls.append((list(tasks), n, seed))
        rng = random.Random(seed)
        out = []
        for task in tasks:
            for _ in range(n):
                token = rng.choice([4, 5, 6])
                t = make_traj(policy, PROMPT + [token, END], [0, 0, 0, 1, 1], token / 6, task)
                t.reward_components = {"outcome": float(token == 6), "format": 1.0}
                t.success = token == 6
                out.append(t)
        return out

    return rollout


def tasks_of(step):
    return [f"s{step}a", f"s{step}b"]


def test_the_loop_plays_groups_updates_reports_and_checkpoints(policy, make_traj, make_config):
    config = make_config(num_generations=3, beta=0.1)
    trainer = GRPOTrainer(policy, policy.clone(), torch.optim.SGD(policy.model.parameters(), lr=0.1), config)  # fmt: skip
    calls, seen, saved = [], [], []
    before = policy.params()
    history = train_grpo(trainer, tasks_of, make_rollout(policy, make_traj, calls), 3, seed=7,
                         on_step=seen.append, checkpoint=saved.append, checkpoint_every=2)  # fmt: skip
    assert calls == [(tasks_of(s), 3, step_seed(7, s)) for s in range(3)]
    assert [done.step for done in seen] == [0, 1, 2] and saved == [2]
    assert [done.metrics for done in seen] == history
    first = seen[0]
    assert len(first.trajectories) == 6 and first.metrics["num_groups"] == 2  # 2 tasks x 3
    outcomes = [t.reward_components["outcome"] for t in first.trajectories]
    assert first.metrics["reward.outcome"] == pytest.approx(sum(outcomes) / 6)
    assert first.metrics["success_rate"] == pytest.approx(sum(outcomes) / 6)
    assert first.metrics["reward.format"] == 1.0 and "loss" in first.metrics
    assert not torch.equal(policy.params(), before)


def test_a_resumed_loop_takes_the_steps_an_unstopped_one_takes(
    toy_policy_cls, make_traj, make_config
):
    config = make_config(num_generations=2, beta=0.1)

    def trainer_for(policy):
        optimizer = torch.optim.Adam(policy.model.parameters(), lr=0.05)
        scheduler = make_scheduler(optimizer, 4, 0.25)
        return GRPOTrainer(policy, policy.clone(), optimizer, config, scheduler=scheduler)

    straight = toy_policy_cls(seed=1)
    trainer = trainer_for(straight)
    saved = {}

    def checkpoint(done):
        saved[done] = copy.deepcopy((straight.model.state_dict(), trainer.optimizer.state_dict(),
                                     trainer.scheduler.state_dict()))  # fmt: skip

    train_grpo(trainer, tasks_of, make_rollout(straight, make_traj), 4, seed=3,
               checkpoint=checkpoint, checkpoint_every=2)  # fmt: skip

    resumed = toy_policy_cls(seed=1)
    trainer = trainer_for(resumed)  # the reference stays the starting policy, as in a run
    weights, optimizer, scheduler = saved[2]
    resumed.model.load_state_dict(weights)
    trainer.optimizer.load_state_dict(optimizer)
    trainer.scheduler.load_state_dict(scheduler)
    train_grpo(trainer, tasks_of, make_rollout(resumed, make_traj), 4, start=2, seed=3)
    assert torch.allclose(resumed.params(), straight.params(), atol=1e-7)


def test_collector_rollout_seeds_each_call():
    class Collector:
        sampling = SamplingParams(temperature=1.0)

        def collect(self, tasks, num_samples):
            self.played = (tasks, num_samples, self.sampling.seed)
            return []

    collector = Collector()
    first = collector.sampling
    collector_rollout(collector)(["a", "b"], 4, 11)
    assert collector.played == (["a", "b"], 4, 11)
    assert first.seed is None and collector.sampling.temperature == 1.0  # replaced, not changed
