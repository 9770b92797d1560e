"""Data-parallel SFT and GRPO updates under torch.distributed (launch with `torchrun`).

Every rank holds a full policy copy and a shard of the global batch. Losses are normalised by
GLOBAL counts (supervised tokens for SFT; sequences or tokens for GRPO, as its loss_type asks),
so summing the ranks' gradients gives exactly the gradient of the full batch on one process,
whatever the shard sizes. Gradients are summed with one flat all-reduce before clipping, so the
clipping norm is the global one, and every rank then takes the same optimiser step.
GRPO groups are never split across ranks: a sample's advantage needs its whole group.

Process groups come from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT): gloo on CPU, NCCL on GPU. Without those variables everything runs as
a single process and the collectives are no-ops, so the same script works with and without
torchrun. Only rank 0 logs and writes checkpoints.

    torchrun --standalone --nproc_per_node 2 -m tooltune.distributed.ddp sft \\
        --policy runs/x/checkpoints/latest/policy --data demos.jsonl --out runs/ddp-sft
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tooltune.training.grpo import GRPOTrainer
from tooltune.training.optim import AdamW
from tooltune.training.sft import (
    collate,
    own_and_weighted_nll,
    policy_device,
    to_token_records,
    trainable_parameters,
)


@dataclass
class DistContext:
    """Where this process sits in the job. `world_size == 1` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks of a few scalars (float64, one collective)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device())
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def all_reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients of `params` over ranks (see the function of this name)."""
        all_reduce_gradients(params, self)

    def log(self, message: str, log: Callable[[str], None] = print) -> None:
        """Log on rank 0 only."""
        if self.is_main:
            log(message)

    def destroy(self) -> None:
        if self.distributed:
            dist.destroy_process_group()

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """A `DistContext` from torchrun's environment variables (single process without them).

    `backend` defaults to NCCL when CUDA is available and gloo otherwise; with NCCL the process
    uses the GPU of its LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if world <= 1:
        return DistContext(device=device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
        )
    return DistContext(rank, world, local_rank, backend, device)


def shard(items: Sequence[Any], ctx: DistContext) -> list[Any]:
    """This rank's share of a global batch: items rank, rank + W, rank + 2W... (shares differ
    in size by at most one; the global normalisers make uneven shares exact)."""
    return list(items[ctx.rank :: ctx.world_size])


def broadcast_parameters(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (start from identical weights)."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def all_reduce_gradients(params: Sequence[torch.nn.Parameter], ctx: DistContext) -> None:
    """Sum the gradients of `params` over ranks, in one flat all-reduce.

    A parameter that got no gradient on any rank keeps `grad = None` (so the optimiser skips
    it, as it would on one process); one that got a gradient on some rank gets the sum, with
    zeros from the ranks that had none."""
    if not ctx.distributed:
        return
    params = list(params)
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    flat = torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float32)
            for p in params
        ]
        + [has]
    )
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        piece = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
        p.grad = piece.clone() if p.grad is None else p.grad.copy_(piece)
    for p, seen in zip(params, flat[offset:].tolist(), strict=True):
        if seen == 0:
            p.grad = None


def _clip(params: Sequence[torch.nn.Parameter], max_norm: float | None) -> float:
    clip = max_norm if max_norm and max_norm > 0 else math.inf
    with_grad = [p for p in params if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(with_grad, clip)) if with_grad else 0.0


# --------------------------------------------------------------------------------------------
# SFT
# --------------------------------------------------------------------------------------------


def sft_step(
    policy: Any,
    local_records: Sequence[Any],
    optimizer: torch.optim.Optimizer,
    ctx: DistContext,
    *,
    max_len: int | None = None,
    max_grad_norm: float | None = 1.0,
    micro_batches: int = 1,
    context_weight: float = 0.0,
) -> dict[str, float]:
    """One optimiser step on the union of every rank's `local_records` (token records or
    trajectories with one): the mean NLL per supervised token of the GLOBAL batch (plus
    `context_weight` x the context tokens' NLL, as `train_sft`; the reported loss is the
    supervised tokens' alone). Every rank must call it, even with an empty share."""
    params = trainable_parameters(policy)
    device = policy_device(policy)
    parts = []
    if local_records:
        size = math.ceil(len(local_records) / max(1, micro_batches))
        parts = [
            collate(local_records[i : i + size], policy.pad_token_id, max_len).to(device)
            for i in range(0, len(local_records), size)
        ]
    local_tokens = sum(p.loss_mask.sum().item() for p in parts)
    (total_tokens,) = ctx.all_reduce_sum([local_tokens])
    if total_tokens == 0:
        raise ValueError("the global batch has no supervised (mask == 1) token")
    optimizer.zero_grad(set_to_none=True)
    local_nll = 0.0
    for part in parts:
        nll, loss = own_and_weighted_nll(policy, part, context_weight)
        (loss / total_tokens).backward()
        local_nll += nll.item()
    all_reduce_gradients(params, ctx)
    grad_norm = _clip(params, max_grad_norm)
    optimizer.step()
    (total_nll,) = ctx.all_reduce_sum([local_nll])
    return {"loss": total_nll / total_tokens, "tokens": total_tokens, "grad_norm": grad_norm}


def train_sft_distributed(
    policy: Any,
    records: Sequence[Any],
    config: Any,
    ctx: DistContext,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    max_len: int | None = None,
    log: Callable[[str], None] = print,
) -> list[float]:
    """`train_sft`'s loop with every global batch split over the ranks. All ranks shuffle
    with the same seed, so they agree on each batch. Returns the per-epoch training loss."""
    from tooltune.training.schedule import make_scheduler

    epochs = config.sft_epochs if epochs is None else epochs
    batch_size = config.sft_batch_size if batch_size is None else batch_size
    lr = config.sft_learning_rate if learning_rate is None else learning_rate
    max_len = max_len if max_len is not None else getattr(policy, "max_seq_len", None)
    records = to_token_records(records, getattr(policy, "encode", None))
    broadcast_parameters(policy.model, ctx)
    params = trainable_parameters(policy)
    optimizer = AdamW(params, lr=lr, weight_decay=config.weight_decay)
    steps = math.ceil(len(records) / batch_size) * epochs
    scheduler = make_scheduler(optimizer, steps, config.warmup_ratio)
    generator = torch.Generator().manual_seed(int(getattr(config, "seed", 0)))
    policy.model.train()
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(records), generator=generator).tolist()
        total, tokens = 0.0, 0.0
        for start in range(0, len(order), batch_size):
            batch = [records[i] for i in order[start : start + batch_size]]
            metrics = sft_step(
                policy, shard(batch, ctx), optimizer, ctx, max_len=max_len,
                max_grad_norm=config.max_grad_norm, micro_batches=config.grad_accum_steps,
                context_weight=config.sft_context_weight,
            )  # fmt: skip
            scheduler.step()
            total += metrics["loss"] * metrics["tokens"]
            tokens += metrics["tokens"]
        losses.append(total / tokens)
        ctx.log(f"sft epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}", log)
    return losses


# --------------------------------------------------------------------------------------------
# GRPO
# --------------------------------------------------------------------------------------------


class DistributedGRPO:
    """Data-parallel `GRPOTrainer.train_step`: each rank passes its own groups (for example
    `shard(groups, ctx)`, or the groups its own rollouts produced) and all ranks take the
    update of the union of those groups (`train_step(groups, collective=ctx)`). Starts every
    rank from rank 0's weights; one optimiser step per iteration (the trainer's
    `minibatch_size` must be None)."""

    def __init__(self, trainer: GRPOTrainer, ctx: DistContext) -> None:
        if trainer.minibatch_size:
            raise ValueError(
                "DistributedGRPO takes one step per iteration: use minibatch_size=None"
            )
        self.trainer = trainer
        self.ctx = ctx
        broadcast_parameters(trainer.policy.model, ctx)

    def train_step(self, local_groups: Sequence[Sequence[Any]]) -> dict[str, float]:
        return self.trainer.train_step(local_groups, collective=self.ctx)


# --------------------------------------------------------------------------------------------
# Rank-0 side effects
# --------------------------------------------------------------------------------------------


def save_on_main(policy: Any, directory: str | Path, ctx: DistContext) -> None:
    """Rank 0 saves the policy; every rank waits until the checkpoint is complete."""
    if ctx.is_main:
        policy.save(directory)
    ctx.barrier()


def main(argv: Sequence[str] | None = None) -> int:
    """`torchrun ... -m tooltune.distributed.ddp sft --policy DIR --data JSONL --out DIR`."""
    from tooltune.config import load_config
    from tooltune.messages import read_trajectories
    from tooltune.training.run_dir import load_policy

    parser = argparse.ArgumentParser(prog="python -m tooltune.distributed.ddp")
    sub = parser.add_subparsers(dest="command", required=True)
    sft = sub.add_parser("sft", help="data-parallel SFT on a trajectories JSONL")
    sft.add_argument("--policy", required=True, help="a saved policy directory")
    sft.add_argument("--data", required=True, help="trajectories JSONL (write_trajectories)")
    sft.add_argument("--out", required=True, help="where rank 0 saves the trained policy")
    sft.add_argument("--config", default=None, help="a config file (TOML/YAML/JSON)")
    sft.add_argument("--epochs", type=int, default=None)
    sft.add_argument("--batch-size", type=int, default=None, help="GLOBAL batch, all ranks")
    sft.add_argument("--lr", type=float, default=None)
    sft.add_argument("--backend", choices=["gloo", "nccl"], default=None)
    args = parser.parse_args(argv)

    ctx = init_distributed(args.backend)
    try:
        config = load_config(args.config, [])
        torch.manual_seed(config.seed)
        policy = load_policy(args.policy).to(ctx.device)
        records = read_trajectories(args.data)
        ctx.log(f"rank 0 of {ctx.world_size} ({ctx.backend or 'single process'}): "
                f"{len(records)} trajectories")  # fmt: skip
        train_sft_distributed(
            policy, records, config, ctx, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.lr,
        )  # fmt: skip
        save_on_main(policy, args.out, ctx)
        ctx.log(f"saved {args.out}")
    finally:
        ctx.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
