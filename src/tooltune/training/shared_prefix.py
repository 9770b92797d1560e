"""Run the beginning that rows of a batch share once, not once per row.

A GRPO group's samples share their whole prompt; SFT rows that offer the same tools share their
system prompt and tool listing, often half of a row's tokens. `plan_shared_prefix` finds those
beginnings and `prefix_logprobs` scores the batch through the policy's
`prefix_token_logprobs` (each prefix runs once, its keys and values are selected for every row
that continues it, and gradients sum back), with the same scored log-probs as the plain pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch

from tooltune.rollout import accepts_keyword


@dataclass
class PrefixPlan:
    """A batch split into distinct shared prefixes and per-row continuations.

    Row b of the batch is `prefix_ids[prefix_index[b]]` (left-padded) followed by
    `suffix_ids[b]` (right-padded); its continuation starts at token `starts[b]` of the row.
    """

    prefix_ids: torch.Tensor  # [P, S] long, left-padded
    prefix_mask: torch.Tensor  # [P, S]
    suffix_ids: torch.Tensor  # [B, T'] long, right-padded
    suffix_mask: torch.Tensor  # [B, T']
    prefix_index: torch.Tensor  # [B] long
    starts: torch.Tensor  # [B] long


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` have in common."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _groups(rows: list[list[int]], lengths: list[int]) -> tuple[list[int], list[int], int] | None:
    """(group of each row, prefix length of each group, padded positions of the plan) of the
    cheapest grouping, or None when a row is too short to split.

    Rows sorted by their shareable tokens put the rows with long common beginnings next to each
    other. Cutting that order wherever neighbours share fewer than L tokens gives one grouping
    per threshold L; each group's prefix is what all its rows share. The plan computes
    `groups x longest prefix + rows x longest continuation` positions (padding included), and
    the threshold with the fewest wins: samples of one prompt share the whole prompt rather
    than the system prompt all prompts share."""
    order = sorted(range(len(rows)), key=lambda b: rows[b])
    shared = [common_prefix_length(rows[a], rows[b]) for a, b in pairwise(order)]
    best: tuple[int, list[int], list[int]] | None = None
    for threshold in sorted({s for s in shared if s > 0} | {10**9}):
        group_of = [0] * len(rows)
        prefix_len: list[int] = []
        for pos, b in enumerate(order):
            if pos == 0 or shared[pos - 1] < threshold:
                prefix_len.append(len(rows[b]))  # a new group: its prefix shrinks to fit
            else:
                prefix_len[-1] = min(prefix_len[-1], shared[pos - 1])
            group_of[b] = len(prefix_len) - 1
        if min(prefix_len) < 1:
            return None
        longest_rest = max(n - prefix_len[g] for n, g in zip(lengths, group_of, strict=True))
        cost = len(prefix_len) * max(prefix_len) + len(rows) * longest_rest
        if best is None or cost < best[0]:
            best = (cost, group_of, prefix_len)
    assert best is not None
    cost, group_of, prefix_len = best
    # Number groups by their first row, so the plan reads in the batch's order.
    renumber: dict[int, int] = {}
    for g in group_of:
        renumber.setdefault(g, len(renumber))
    lens = [0] * len(renumber)
    for g, n in enumerate(prefix_len):
        lens[renumber[g]] = n
    return [renumber[g] for g in group_of], lens, cost


def plan_shared_prefix(batch: Any) -> PrefixPlan | None:
    """Group the rows of a right-padded `TokenBatch` by the context they share.

    Row b may share its tokens before `f_b - 1`, where `f_b` is its first target token
    (`loss_mask` is 1): the token at `f_b - 1` starts the continuation, so every scored log-prob
    comes from the continuation pass and a prefix needs no logits. Rows are grouped so that the
    plan computes the fewest positions (see `_groups`): a GRPO group's samples share their
    prompt, SFT rows that list the same tools share the system prompt. Returns None when no
    grouping computes fewer positions than the plain batch (padding included), or when a row
    is too short to split.
    """
    ids, attention = batch.input_ids.cpu(), batch.attention_mask.cpu()  # read row by row below
    lengths = [int(n) for n in attention.sum(dim=1).tolist()]
    scored = batch.loss_mask.cpu() > 0
    has_target = scored.any(dim=1).tolist()
    first = scored.float().argmax(dim=1).tolist()  # loss index t refers to token t + 1
    rows = []
    for b, n in enumerate(lengths):
        if n < 3 or not attention[b, :n].all():
            return None  # right padding only, and room for a prefix and a 2-token continuation
        shareable = first[b] if has_target[b] else n - 2  # f_b - 1 = (first + 1) - 1
        rows.append(ids[b, :shareable].tolist())
    grouping = _groups(rows, lengths)
    if grouping is None:
        return None
    index, prefix_len, cost = grouping
    bsz, width = ids.shape
    if len(prefix_len) == bsz or cost >= bsz * width:
        return None
    starts = [prefix_len[g] for g in index]
    pwidth = max(prefix_len)
    swidth = max(n - s for n, s in zip(lengths, starts, strict=True))
    pad = 0  # any valid id: padded positions are masked out
    prefix_ids = torch.full((len(prefix_len), pwidth), pad, dtype=torch.long)
    prefix_mask = torch.zeros((len(prefix_len), pwidth), dtype=batch.attention_mask.dtype)
    suffix_ids = torch.full((bsz, swidth), pad, dtype=torch.long)
    suffix_mask = torch.zeros((bsz, swidth), dtype=batch.attention_mask.dtype)
    for b, (g, s) in enumerate(zip(index, starts, strict=True)):
        n = lengths[b]
        prefix_ids[g, pwidth - s :] = ids[b, :s]
        prefix_mask[g, pwidth - s :] = 1
        suffix_ids[b, : n - s] = ids[b, s:n]
        suffix_mask[b, : n - s] = 1
    device = batch.input_ids.device
    return PrefixPlan(
        prefix_ids.to(device),
        prefix_mask.to(device),
        suffix_ids.to(device),
        suffix_mask.to(device),
        torch.tensor(index, dtype=torch.long, device=device),
        torch.tensor(starts, dtype=torch.long, device=device),
    )


def shared_prefix_logprobs(
    policy: Any, plan: PrefixPlan, width: int, scored: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, width - 1] log-probs laid out like `token_logprobs` of the original batch.

    Scored positions (and everything after each row's prefix) hold the same values as the
    plain pass; positions inside a shared prefix are never scored and hold 0. With `scored`
    [B, width - 1] (the loss mask) a policy that can compute only those positions does.
    """
    steps = plan.suffix_ids.shape[1] - 1
    cols = plan.starts[:, None] + torch.arange(steps, device=plan.starts.device)[None, :]
    kwargs = {}
    if scored is not None and accepts_keyword(policy.prefix_token_logprobs, "scored"):
        kwargs["scored"] = torch.nn.functional.pad(scored, (0, steps)).gather(1, cols)
    suffix = policy.prefix_token_logprobs(
        plan.prefix_ids, plan.prefix_mask, plan.suffix_ids, plan.suffix_mask, plan.prefix_index,
        **kwargs,
    ).float()  # [B, T' - 1]  # fmt: skip
    bsz = suffix.shape[0]
    out = suffix.new_zeros(bsz, width - 1 + steps).scatter(1, cols, suffix)
    return out[:, : width - 1]


def prefix_logprobs(policy: Any, batch: Any) -> torch.Tensor | None:
    """Log-probs of `batch` at its scored positions with shared beginnings run once, or None
    when the policy cannot (no `prefix_token_logprobs`) or nothing is worth sharing."""
    if not hasattr(policy, "prefix_token_logprobs"):
        return None
    plan = plan_shared_prefix(batch)
    if plan is None:
        return None
    return shared_prefix_logprobs(policy, plan, batch.input_ids.shape[1], batch.loss_mask)
