"""Data-parallel updates: 2 gloo processes on CPU take exactly the step 1 process takes on the
same global batch (SFT and GRPO, uneven shards, global gradient clipping).

The test launches this file under torchrun; run as a script, it is the worker."""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
from pathlib import Path

import torch

from tooltune.config import AgentConfig, TaskTier
from tooltune.distributed.ddp import (
    DistContext,
    DistributedGRPO,
    all_reduce_gradients,
    init_distributed,
    sft_step,
    shard,
)
from tooltune.policies.builtin import sequence_logprobs
from tooltune.policies.transformer import Transformer, TransformerConfig
from tooltune.training.grpo import GRPOTrainer
from tooltune.training.sft import collate, masked_nll_sum
from tooltune.types import AgentTrajectory, TokenRecord

VOCAB = 40
LR = 0.5
CLIP = 0.05  # small enough that clipping is active: a local-norm clip would give other weights
CASES = {
    "sft": None,
    "sft_context": dict(context_weight=0.25),
    "grpo_loss_grpo": dict(loss_type="grpo", grad_accum_steps=1),
    "grpo_loss_dapo": dict(loss_type="dapo", grad_accum_steps=2),
    "grpo_empty_share": dict(loss_type="dr_grpo", num_iterations=2),  # rank 1: no signal at all
}


class TinyPolicy:
    """The built-in transformer behind the slice of the token-policy contract trainers use."""

    pad_token_id = 0

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        config = TransformerConfig(vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=2, d_ff=32)
        self.model = Transformer(config)
        self.max_seq_len = config.max_seq_len

    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids, attention_mask=attention_mask)
        return sequence_logprobs(logits, input_ids, attention_mask)

    def clone(self) -> TinyPolicy:
        twin = copy.deepcopy(self)
        for p in twin.model.parameters():
            p.requires_grad_(False)
        return twin

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])


def make_records(n: int = 7) -> list[TokenRecord]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        length = 5 + (i * 3) % 8
        ids = torch.randint(1, VOCAB, (length,), generator=g).tolist()
        prompt = 2 + i % 3
        mask = [0] * prompt + [1] * (length - prompt)
        if length > prompt + 3:
            mask[prompt + 2] = 0  # a tool output inside the episode
        out.append(TokenRecord(ids=ids, mask=mask, logprobs=[0.0] * length))
    return out


def make_groups(policy: TinyPolicy, name: str, group_size: int = 3) -> list[list[AgentTrajectory]]:
    """5 groups (group 3 with equal rewards, skipped; for "grpo_empty_share" group 1 too, so
    rank 1 of 2 keeps nothing); old log-probs = current ones + noise, so ratios differ from 1
    and some get clipped."""
    flat = (1, 3) if name == "grpo_empty_share" else (3,)
    g = torch.Generator().manual_seed(2)
    records = make_records(5 * group_size)
    groups = []
    for k in range(5):
        group = []
        for j in range(group_size):
            rec = records[k * group_size + j]
            with torch.no_grad():
                t = torch.tensor([rec.ids])
                lp = policy.token_logprobs(t, torch.ones_like(t))[0].tolist()
            noise = (0.3 * torch.randn(len(lp), generator=g)).tolist()
            rec.logprobs = [0.0] + [
                (v + e) if m else 0.0 for v, e, m in zip(lp, noise, rec.mask[1:], strict=True)
            ]
            reward = 1.0 if k in flat else float(torch.rand((), generator=g))
            group.append(
                AgentTrajectory(
                    prompt=f"t{k}", task_tier=TaskTier.SIMPLE, total_reward=reward, tokens=rec
                )  # fmt: skip
            )
        groups.append(group)
    return groups


def grpo_config(**overrides) -> AgentConfig:
    base = dict(temperature=1.0, beta=0.1, epsilon=0.2, max_grad_norm=CLIP, num_iterations=1,
                reward_baseline="mean", scale_rewards=True)  # fmt: skip
    return AgentConfig(**{**base, **overrides})


def run_case(name: str, ctx: DistContext) -> torch.Tensor:
    """One update of `name` on this rank's shard; returns the flat parameters after it."""
    policy = TinyPolicy(seed=0)
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=LR)
    if name.startswith("sft"):
        weight = (CASES[name] or {}).get("context_weight", 0.0)
        records = shard(make_records(), ctx)
        sft_step(policy, records, optimizer, ctx, max_grad_norm=CLIP, context_weight=weight)
    else:
        groups = make_groups(policy, name)
        trainer = GRPOTrainer(policy, policy.clone(), optimizer, grpo_config(**CASES[name]))
        DistributedGRPO(trainer, ctx).train_step(shard(groups, ctx))
    return policy.flat()


def reference(name: str) -> torch.Tensor:
    """The same update on one process, with the ordinary (non-distributed) code."""
    policy = TinyPolicy(seed=0)
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=LR)
    if name.startswith("sft"):
        weight = (CASES[name] or {}).get("context_weight", 0.0)
        batch = collate(make_records(), policy.pad_token_id)
        logp = policy.token_logprobs(batch.input_ids, batch.attention_mask)
        context = batch.attention_mask[:, 1:] * (1 - batch.loss_mask)
        loss = masked_nll_sum(policy, batch) - weight * (logp * context).sum()
        (loss / batch.loss_mask.sum()).backward()
        torch.nn.utils.clip_grad_norm_(policy.model.parameters(), CLIP)
        optimizer.step()
    else:
        groups = make_groups(policy, name)
        trainer = GRPOTrainer(policy, policy.clone(), optimizer, grpo_config(**CASES[name]))
        trainer.train_step(groups)
    return policy.flat()


def test_two_gloo_processes_match_one_process(tmp_path: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    start = TinyPolicy(seed=0).flat()
    for name in CASES:
        expected = reference(name)
        assert (expected - start).abs().max() > 1e-3, name  # the step really moved the weights
        for r in range(2):
            torch.testing.assert_close(ranks[r][name], expected, rtol=0, atol=1e-6, msg=name)


def test_single_process_context_is_the_plain_step():
    ctx = DistContext()
    assert not ctx.distributed and ctx.is_main
    assert ctx.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]
    assert shard(list(range(5)), DistContext(rank=1, world_size=2)) == [1, 3]
    assert shard(list(range(5)), ctx) == list(range(5))
    for name in ("sft", "grpo_loss_dapo"):
        torch.testing.assert_close(run_case(name, ctx), reference(name), rtol=0, atol=1e-6)


def test_init_without_torchrun_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("gloo")
    assert (ctx.rank, ctx.world_size, ctx.distributed) == (0, 1, False)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    all_reduce_gradients([p], ctx)  # no process group: untouched
    assert p.grad.tolist() == [3.0, 3.0]


def _worker(out: Path) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed("gloo")
    try:
        result = {name: run_case(name, ctx) for name in CASES}
        torch.save(result, out / f"rank{ctx.rank}.pt")
        ctx.barrier()  # both ranks are done before either tears gloo down
    finally:
        ctx.destroy()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    _worker(parser.parse_args().out)
    # gloo's background threads can abort the interpreter's own shutdown now and then
    # ("terminate called without an active exception"); the work is saved, so leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
