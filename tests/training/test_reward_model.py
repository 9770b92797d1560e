import math
import random

import pytest
import torch

from tooltune.config import TaskTier
from tooltune.training.reward_model import (
    AgentRewardModel,
    RewardModelConfig,
    learned_baseline,
    predict,
    reward_model_term,
    roc_auc,
    split_by_group,
    train_reward_model,
)
from tooltune.types import AgentTrajectory, TokenRecord

VOCAB = 32
MARK_OK, MARK_FAIL = 3, 4


def toy_trajectories(n: int, seed: int) -> list[AgentTrajectory]:
    """Random token sequences; success iff the sequence carries MARK_OK (else MARK_FAIL)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        success = i % 2 == 0
        ids = [rng.randrange(10, VOCAB) for _ in range(rng.randrange(8, 24))]
        ids.insert(rng.randrange(len(ids)), MARK_OK if success else MARK_FAIL)
        t = AgentTrajectory(prompt="p", task_tier=TaskTier.SIMPLE, task_id=f"task{i // 2}")
        t.tokens = TokenRecord(ids=ids, mask=[1] * len(ids), logprobs=[0.0] * len(ids))
        t.success = success
        t.total_reward = 1.2 if success else 0.1
        t.reward_components = {"tool_success": 0.1 if success else -0.1, "efficiency": 0.5}
        out.append(t)
    return out


def test_roc_auc_by_hand():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert roc_auc([1, 2, 3], [0, 1, 1]) == 1.0
    assert math.isnan(roc_auc([1, 2], [1, 1]))


def test_split_keeps_tasks_together():
    trajs = toy_trajectories(40, seed=0)
    train, val = split_by_group(trajs, 0.25, seed=0)
    assert sorted(train + val) == list(range(40))
    assert {trajs[i].task_id for i in train}.isdisjoint({trajs[i].task_id for i in val})
    assert len(val) == 10


def test_learns_separable_labelling():
    trajs = toy_trajectories(240, seed=1)
    model, report = train_reward_model(
        trajs, VOCAB, d_model=32, nhead=4, num_layers=1, epochs=12, batch_size=32,
        learning_rate=3e-3, dropout=0.0, seed=0,
    )  # fmt: skip
    assert report.n_val >= 40
    assert report.val_auc > 0.9
    assert report.val_accuracy > 0.85
    assert report.train_loss[-1] < report.train_loss[0]

    # reward term and learned baseline run on new data and follow the labels
    fresh = toy_trajectories(20, seed=2)
    term = reward_model_term(model)
    ok = [term(t, None) for t in fresh if t.success]
    bad = [term(t, None) for t in fresh if not t.success]
    assert min(ok) > max(bad)
    base = learned_baseline(model)(fresh[:4])
    preds = predict(model, fresh[:4])["total_reward"]
    assert base[0] == pytest.approx((sum(preds) - preds[0]) / 3, abs=1e-5)


def test_untrained_model_shapes_and_errors(tmp_path):
    torch.manual_seed(0)
    model = AgentRewardModel(
        RewardModelConfig(vocab_size=VOCAB, d_model=16, nhead=2, num_layers=1, max_len=8)
    )
    trajs = toy_trajectories(3, seed=0)
    out = predict(model, trajs)  # longer than max_len: truncated to the tail
    assert all(len(v) == 3 for v in out.values())
    assert all(0.0 <= p <= 1.0 for p in out["task_completion"])
    path = tmp_path / "rm.pt"
    model.save(path)
    again = AgentRewardModel.load(path)
    assert predict(again, trajs)["total_reward"] == pytest.approx(out["total_reward"], abs=1e-6)

    trajs[0].tokens = None
    with pytest.raises(ValueError, match="no token ids"):
        predict(model, trajs)
    bad = toy_trajectories(1, seed=0)[0]
    bad.tokens.ids[-1] = VOCAB + 5
    with pytest.raises(ValueError, match="vocabulary"):
        predict(model, [bad])
    with pytest.raises(ValueError):
        reward_model_term(model, head="nope")


def test_learned_baseline_plugs_into_grpo(policy, make_traj, make_config):
    from tooltune.training.grpo import GRPOTrainer

    torch.manual_seed(0)
    rm = AgentRewardModel(RewardModelConfig(vocab_size=16, d_model=16, nhead=2, num_layers=1))
    group = [
        make_traj(policy, [1, 2, 3, tok, 7], [0, 0, 0, 1, 1], r)
        for tok, r in [(5, 1.0), (6, 0.0), (5, 1.0)]
    ]
    preds = predict(rm, group)["total_reward"]
    opt = torch.optim.SGD(policy.model.parameters(), lr=0.1)
    cfg = make_config(reward_baseline="learned", scale_rewards=False)
    trainer = GRPOTrainer(policy, None, opt, cfg, baseline_fn=learned_baseline(rm))
    metrics = trainer.train_step([group])
    rewards = [1.0, 0.0, 1.0]
    expected = [r - (sum(preds) - p) / 2 for r, p in zip(rewards, preds, strict=True)]
    assert metrics["mean_advantage"] == pytest.approx(sum(expected) / 3, abs=1e-5)
