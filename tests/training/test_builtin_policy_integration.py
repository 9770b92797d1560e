"""The trainers against the real built-in transformer policy (tiny config)."""

import pytest
import torch

from tooltune.policies.builtin import BuiltinPolicy
from tooltune.training.grpo import GRPOTrainer
from tooltune.training.sft import train_sft
from tooltune.types import TokenRecord


@pytest.fixture
def builtin():
    texts = ["What is 1+2? The answer is 3.", "What is 2+2? The answer is 4."] * 20
    return BuiltinPolicy.create(
        texts, size="tiny", seed=0, vocab_size=300, d_model=32, n_layers=1, n_heads=2, d_ff=64,
        max_seq_len=64,
    )  # fmt: skip


def completion_logprob(policy, prompt, answer):
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        lp = policy.token_logprobs(ids, torch.ones_like(ids))[0]
    return lp[len(prompt) - 1 :].sum().item()


def test_grpo_step_on_builtin_policy(builtin, make_traj, make_config):
    prompt = builtin.encode("What is 1+2? The answer is")
    good, bad = builtin.encode(" 3."), builtin.encode(" 4.")
    mask = lambda ans: [0] * len(prompt) + [1] * len(ans)  # noqa: E731
    group = [
        make_traj(builtin, prompt + ans, mask(ans), r)
        for ans, r in [(good, 1.0), (bad, 0.0), (good, 1.0), (bad, 0.0)]
    ]
    before = completion_logprob(builtin, prompt, good), completion_logprob(builtin, prompt, bad)
    opt = torch.optim.Adam(builtin.model.parameters(), lr=3e-3)
    trainer = GRPOTrainer(builtin, builtin.clone(), opt, make_config(beta=0.05))
    metrics = trainer.train_step([group])
    assert metrics["logprob_drift"] < 1e-4  # recorded log-probs match the trainer's
    assert metrics["kl_div"] == pytest.approx(0.0, abs=1e-6)
    after = completion_logprob(builtin, prompt, good), completion_logprob(builtin, prompt, bad)
    assert after[0] > before[0] and after[1] < before[1]


def test_sft_on_builtin_policy(builtin, make_config):
    ids = builtin.encode("What is 1+2? The answer is 3.")
    rec = TokenRecord(ids=ids, mask=[0] * (len(ids) - 3) + [1] * 3, logprobs=[0.0] * len(ids))
    cfg = make_config(sft_epochs=10, sft_learning_rate=1e-2, sft_batch_size=4)
    hist = train_sft(builtin, [rec] * 8, cfg)
    assert hist.train_loss[-1] < 0.5 * hist.train_loss[0]
