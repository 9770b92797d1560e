"""Shared beginnings run once: which rows share what, and SFT's update is unchanged by it."""

import copy
import functools

import pytest
import torch

from tooltune.config import TaskTier
from tooltune.training.sft import _batches, collate, masked_nll_sum, micro_batches, train_sft
from tooltune.training.shared_prefix import plan_shared_prefix
from tooltune.types import AgentTrajectory, TokenRecord

TEXTS = ["The quick brown fox jumps over the lazy dog. Paris is the capital of France."] * 20


def rand(g: torch.Generator, n: int, vocab: int = 250) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def row(context: list[int], answer: list[int]) -> TokenRecord:
    rec = TokenRecord()
    rec.extend(context, generated=False)
    rec.extend(answer, generated=True, logprobs=[0.0] * len(answer))
    return rec


def test_plan_prefers_each_prompt_to_the_beginning_all_prompts_share():
    """GRPO: two prompts that open with the same system text, three samples each. Running the
    system text once would leave six long continuations; running each prompt once is cheaper."""
    g = torch.Generator().manual_seed(0)
    system = rand(g, 10)
    prompts = [system + [5] + rand(g, 11), system + [6] + rand(g, 7)]  # 22 and 18 tokens
    rows = [row(p, rand(g, 4 + s)) for p in prompts for s in range(3)]
    plan = plan_shared_prefix(collate(rows, pad_id=0))
    assert plan is not None
    assert plan.prefix_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert plan.starts.tolist() == [21, 21, 21, 17, 17, 17]  # each prompt but its last token


def test_plan_shares_the_system_prompt_of_different_questions():
    """SFT: four conversations with the same system prompt and different questions."""
    g = torch.Generator().manual_seed(1)
    system = rand(g, 30)
    rows = [row(system + [10 + b] + rand(g, 3 + b), rand(g, 5)) for b in range(4)]
    batch = collate(rows, pad_id=0)
    plan = plan_shared_prefix(batch)
    assert plan is not None
    assert plan.prefix_index.tolist() == [0, 0, 0, 0]
    assert plan.starts.tolist() == [30] * 4
    assert plan.prefix_ids[0].tolist() == system
    # Two conversations that share nothing are left to the plain path.
    other = row([200 + t for t in range(30)], rand(g, 5))
    assert plan_shared_prefix(collate([rows[0], other], pad_id=0)) is None


def trajectories(tools_of: list[str], seed: int = 0) -> list[AgentTrajectory]:
    """Conversations whose system prompt is the same instructions (12 tokens), then a listing
    of the tools they offer."""
    g = torch.Generator().manual_seed(seed)
    instructions = rand(g, 12)
    systems = {name: instructions + rand(g, 12) for name in sorted(set(tools_of))}
    out = []
    for i, name in enumerate(tools_of):
        traj = AgentTrajectory(prompt=f"q{i}", task_tier=TaskTier.SIMPLE, task_id=f"t{i}")
        traj.tools = [{"type": "function", "function": {"name": name}}]
        rec = TokenRecord()
        rec.extend(systems[name] + rand(g, 4 + i % 3), generated=False)
        rec.extend(rand(g, 3), generated=True, logprobs=[0.0] * 3)
        rec.extend(rand(g, 5), generated=False)  # a tool result
        rec.extend(rand(g, 2 + i % 2), generated=True, logprobs=[0.0] * (2 + i % 2))
        traj.tokens = rec
        out.append(traj)
    return out


def test_batches_are_random_and_of_similar_length():
    records = [TokenRecord(ids=[1] * (3 + i), mask=[0] * (3 + i)) for i in range(64)]
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0)).tolist()
    batches = _batches(records, order, 4, torch.Generator().manual_seed(1))
    assert sorted(id(r) for b in batches for r in b) == sorted(id(r) for r in records)
    assert all(len(b) == 4 for b in batches)
    lengths = [[len(r.ids) for r in b] for b in batches]
    assert all(b == sorted(b) for b in lengths)  # sorted within a chunk of 16 batches
    assert [b[0] for b in lengths] != sorted(b[0] for b in lengths)  # batches in random order
    assert batches == _batches(records, order, 4, torch.Generator().manual_seed(1))


def test_micro_batches_count_a_shared_beginning_once():
    lengths = [10, 10, 10, 10]
    assert micro_batches(lengths, 1, max_tokens=24) == [[0, 1], [2, 3]]
    # 8 shared tokens: 8 + 4 x 2 = 16 positions for all four rows
    assert micro_batches(lengths, 1, max_tokens=24, shared=8) == [[0, 1, 2, 3]]


@pytest.fixture(scope="module")
def hf_policy(tmp_path_factory, tiny_qwen2):
    from tooltune.policies.hf import HFPolicy

    path = tiny_qwen2(tmp_path_factory.mktemp("sft_prefix_qwen2"), TEXTS)
    return HFPolicy.from_pretrained(path)


@pytest.fixture(scope="module")
def builtin_policy():
    from tooltune.policies.builtin import BuiltinPolicy

    return BuiltinPolicy.create(TEXTS, size="tiny", seed=0, vocab_size=300, max_seq_len=256)


def counting(policy):
    """`policy` with its shared-prefix path counted (signature kept: callers read keywords)."""
    policy = copy.deepcopy(policy)
    policy.calls = 0
    inner = policy.prefix_token_logprobs

    @functools.wraps(inner)
    def counted(*a, **k):
        policy.calls += 1
        return inner(*a, **k)

    policy.prefix_token_logprobs = counted
    return policy


@pytest.mark.parametrize("which", ["hf_policy", "builtin_policy"])
def test_sft_with_shared_prompts_gives_the_same_loss_and_gradients(which, request, make_config):
    base = request.getfixturevalue(which)
    trajs = trajectories(["add"] * 4 + ["mul"] * 4)
    batch = collate([t.tokens for t in trajs], pad_id=0)
    grads = []
    for share in (False, True):
        policy = counting(base)
        policy.model.eval()
        loss = masked_nll_sum(policy, batch, share_prefix=share)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in policy.model.parameters()]))
        assert (policy.calls > 0) == share
    (plain, g_plain), (shared, g_shared) = grads
    assert shared == pytest.approx(plain, rel=1e-5)
    for a, b in zip(g_plain, g_shared, strict=True):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max() + 1e-7

    # train_sft's random batches share the instructions (lr 0: the epoch's loss is comparable)
    config = make_config(sft_epochs=1, sft_batch_size=4, warmup_ratio=0.0)
    runs = []
    for share in (False, True):
        policy = counting(base)
        history = train_sft(policy, trajs, config, learning_rate=0.0, share_prefix=share)
        runs.append(history)
        assert (policy.calls == 2) == share  # one shared pass per batch
    assert runs[1].train_loss == pytest.approx(runs[0].train_loss, rel=1e-5)
    for on in (False, True):  # without share_prefix, the config's sft_share_prefix decides
        policy = counting(base)
        config = make_config(sft_epochs=1, sft_batch_size=4, warmup_ratio=0.0, sft_share_prefix=on)
        train_sft(policy, trajs, config, learning_rate=0.0)
        assert policy.calls == (2 if on else 0)
    policy = counting(base)  # ...where the weights are fp32: in bf16 sharing does not pay
    policy.model.to(torch.bfloat16)
    train_sft(policy, trajs, config, learning_rate=0.0)
    assert policy.calls == 0
