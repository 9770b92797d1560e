"""GRPO with shared prompts: running each group's prompt once gives the same update."""

import copy
import functools

import pytest
import torch

from tooltune.config import TaskTier
from tooltune.policies.builtin import BuiltinPolicy
from tooltune.training.grpo import GRPOTrainer
from tooltune.training.sft import collate
from tooltune.training.shared_prefix import plan_shared_prefix
from tooltune.types import AgentTrajectory, TokenRecord

TEXTS = ["The quick brown fox jumps over the lazy dog. Paris is the capital of France."] * 20


@pytest.fixture(scope="module")
def builtin_policy() -> BuiltinPolicy:
    policy = BuiltinPolicy.create(TEXTS, size="tiny", seed=0, vocab_size=300, max_seq_len=256)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # sharper logits than the default init, so the test is sensitive
        for name, p in policy.model.named_parameters():
            if p.dim() == 2:
                std = 0.1 if name == "embed.weight" else 1.0 * p.shape[1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return policy


@pytest.fixture(scope="module")
def hf_policy(tmp_path_factory, tiny_qwen2):
    from tooltune.policies.hf import HFPolicy

    path = tiny_qwen2(tmp_path_factory.mktemp("grpo_prefix_qwen2"), TEXTS, sharpen=False)
    return HFPolicy.from_pretrained(path)


def groups_for(vocab: int, seed: int = 0) -> list[list[AgentTrajectory]]:
    """Two tasks x 3 samples: a shared prompt, then generated / tool / generated segments of
    different lengths; recorded log-probs are off the policy's so ratios differ from 1."""
    g = torch.Generator().manual_seed(seed)

    def rand(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    groups = []
    for task, prompt_len in enumerate((23, 15)):
        prompt = rand(prompt_len)
        group = []
        for s in range(3):
            rec = TokenRecord()
            rec.extend(prompt, generated=False)
            n1 = 2 + 3 * s + task
            rec.extend(
                rand(n1), generated=True, logprobs=(-3.0 - torch.rand(n1, generator=g)).tolist()
            )
            if s != 1:  # a tool turn for two of the three samples
                rec.extend(rand(5), generated=False)
                rec.extend(rand(3), generated=True, logprobs=[-3.5, -4.0, -2.5])
            traj = AgentTrajectory(prompt="p", task_tier=TaskTier.SIMPLE, task_id=f"t{task}")
            traj.tokens = rec
            traj.total_reward = float(s + task) * 0.5 + 0.1 * s * s
            group.append(traj)
        groups.append(group)
    return groups


class Spy:
    """Counts calls to the shared-prefix path of a policy."""

    def __init__(self, policy):
        self.calls = 0
        inner = policy.prefix_token_logprobs

        @functools.wraps(inner)  # keeps the signature: the trainer reads which keywords it takes
        def counted(*a, **k):
            self.calls += 1
            return inner(*a, **k)

        policy.prefix_token_logprobs = counted


def run_step(policy, share: bool, make_config, groups, **cfg):
    policy = copy.deepcopy(policy)
    for p in policy.parameters():
        p.requires_grad_(True)
    spy = Spy(policy)
    ref = policy.clone()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # a reference that differs from the policy, so the KL term counts
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    ref_spy = Spy(ref)
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    old = cfg.pop("old_logprobs", "recorded")
    trainer = GRPOTrainer(policy, ref, opt, make_config(**cfg), old_logprobs=old,
                          share_prefix=share)  # fmt: skip
    metrics = trainer.train_step(groups)
    grads = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
    return metrics, grads, spy.calls + ref_spy.calls


def assert_same_update(policy, vocab, make_config, **cfg):
    groups = groups_for(vocab)
    recorded = cfg.get("old_logprobs", "recorded") == "recorded"
    m_plain, g_plain, calls_plain = run_step(policy, False, make_config, groups, **dict(cfg))
    m_shared, g_shared, calls_shared = run_step(policy, True, make_config, groups, **dict(cfg))
    assert calls_plain == 0 and calls_shared >= 2  # the policy and the reference pass
    for key in ("loss", "policy_loss", "kl_div", "clip_fraction", "ratio_mean", "grad_norm"):
        assert m_shared[key] == pytest.approx(m_plain[key], rel=1e-5, abs=1e-7), key
    assert (m_plain["clip_fraction"] > 0) == recorded  # recorded log-probs are off-policy
    assert m_plain["kl_div"] > 1e-4
    assert len(g_plain) == len(g_shared) > 0
    for a, b in zip(g_plain, g_shared, strict=True):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max() + 1e-9


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_builtin_shared_prompt_gives_the_same_update(builtin_policy, make_config, loss_type):
    assert_same_update(builtin_policy, 300, make_config, loss_type=loss_type, beta=0.1)


def test_builtin_recompute_and_micro_batches(builtin_policy, make_config):
    assert_same_update(
        builtin_policy, 300, make_config, loss_type="dapo", beta=0.05,
        grad_accum_steps=2, old_logprobs="recompute", num_iterations=2,
    )  # fmt: skip


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_hf_shared_prompt_gives_the_same_update(hf_policy, make_config, loss_type):
    hf_policy.model.eval()
    assert_same_update(hf_policy, 250, make_config, loss_type=loss_type, beta=0.1)


def test_plan_groups_rows_by_prompt():
    vocab = 300
    groups = groups_for(vocab)
    batch = collate([t for g in groups for t in g], pad_id=0)
    plan = plan_shared_prefix(batch)
    assert plan is not None
    assert plan.prefix_index.tolist() == [0, 0, 0, 1, 1, 1]
    # Each continuation starts at its prompt's last token; prefixes are left-padded.
    assert plan.starts.tolist() == [22, 22, 22, 14, 14, 14]
    assert plan.prefix_mask.sum(dim=1).tolist() == [22, 14]
    prompt0 = groups[0][0].tokens.ids[:22]
    assert plan.prefix_ids[0].tolist() == prompt0
    assert plan.suffix_ids[0, 0].item() == groups[0][0].tokens.ids[22]
    # Rows that share nothing are left to the plain path.
    assert plan_shared_prefix(batch.select([0, 3])) is None
