"""A tiny token policy for fast, independent tests of the training algorithms."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tooltune.config import AgentConfig, TaskTier
from tooltune.types import AgentTrajectory, TokenRecord


class ToyLM(nn.Module):
    """Bigram LM: the next token's logits depend only on the current token."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids))


class ToyPolicy:
    """Implements the slice of the token-policy contract the trainers use."""

    pad_token_id = 0

    def __init__(self, vocab: int = 16, dim: int = 8, seed: int = 0):
        torch.manual_seed(seed)
        self.model = ToyLM(vocab, dim)
        self.vocab = vocab

    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids[:, :-1])
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)

    def clone(self) -> ToyPolicy:
        return copy.deepcopy(self)

    def params(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.model.parameters()]).clone()


def record(policy: ToyPolicy, ids: list[int], mask: list[int]) -> TokenRecord:
    """A token record whose sampling log-probs are the policy's current ones (0 off-mask)."""
    with torch.no_grad():
        t = torch.tensor([ids])
        lp = policy.token_logprobs(t, torch.ones_like(t))[0].tolist()
    logprobs = [0.0] + [v if m else 0.0 for v, m in zip(lp, mask[1:], strict=True)]
    return TokenRecord(ids=list(ids), mask=list(mask), logprobs=logprobs)


def trajectory(
    policy: ToyPolicy, ids: list[int], mask: list[int], reward: float, task_id: str = "t0"
) -> AgentTrajectory:
    traj = AgentTrajectory(prompt="toy", task_tier=TaskTier.SIMPLE, task_id=task_id)
    traj.tokens = record(policy, ids, mask)
    traj.total_reward = reward
    return traj


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run several times faster on one thread than on a contended pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def policy() -> ToyPolicy:
    return ToyPolicy()


@pytest.fixture
def toy_policy_cls() -> type[ToyPolicy]:
    return ToyPolicy


@pytest.fixture
def make_record():
    return record


@pytest.fixture
def make_traj():
    return trajectory


@pytest.fixture
def make_config():
    def make(**overrides) -> AgentConfig:
        base = dict(
            beta=0.0,
            epsilon=0.2,
            num_iterations=1,
            loss_type="grpo",
            scale_rewards=True,
            reward_baseline="mean",
            max_grad_norm=1.0,
            grad_accum_steps=1,
            max_new_tokens=4,
            temperature=1.0,
            seed=0,
        )
        base.update(overrides)
        return AgentConfig(**base)

    return make
