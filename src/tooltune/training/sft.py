"""Supervised fine-tuning on tokenised agent trajectories.

The loss is the mean negative log-likelihood of the model's own tokens only (`TokenRecord.mask == 1`):
prompts, tool outputs and chat formatting are context, never targets, so the model learns to
produce calls and answers rather than to predict what tools print. (`sft_context_weight` adds the
context tokens back at a small weight, an option for models trained from scratch.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tooltune.allocator import KEEP_FREE_BYTES, keep_freed_pages, release_free_memory
from tooltune.config import data_seed_of
from tooltune.jsonl import read_jsonl
from tooltune.rollout import accepts_keyword
from tooltune.training.optim import AdamW
from tooltune.training.schedule import make_scheduler
from tooltune.training.shared_prefix import common_prefix_length, prefix_logprobs

_clock = time.monotonic  # SFT's checkpoint clock (a test gives it a fake one; patching
# `time.monotonic` itself would also move every thread's timeouts)


@dataclass
class TokenBatch:
    """A right-padded batch of token records, aligned with `token_logprobs` output.

    `loss_mask[b, t]` and `old_logprobs[b, t]` refer to token `t + 1` (the target predicted at
    position `t`), so they line up with the `[B, T-1]` tensor a policy's `token_logprobs` returns.
    """

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    loss_mask: torch.Tensor  # [B, T-1] float
    old_logprobs: torch.Tensor  # [B, T-1] float

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(*(t.to(device) for t in self.astuple()))

    def astuple(self) -> tuple[torch.Tensor, ...]:
        return (self.input_ids, self.attention_mask, self.loss_mask, self.old_logprobs)

    def select(self, index: torch.Tensor | list[int]) -> TokenBatch:
        return TokenBatch(*(t[index] for t in self.astuple()))

    def trimmed(self) -> TokenBatch:
        """The batch cut to its longest row: a micro-batch of short rows drops the padding
        that the whole batch's longest row put there (rows are right-padded)."""
        width = max(2, int(self.attention_mask.sum(dim=1).max()))
        if width >= self.input_ids.shape[1]:
            return self
        return TokenBatch(
            self.input_ids[:, :width],
            self.attention_mask[:, :width],
            self.loss_mask[:, : width - 1],
            self.old_logprobs[:, : width - 1],
        )


def micro_batches(
    lengths: Sequence[int], parts: int, max_tokens: int = 0, shared: int = 0
) -> list[list[int]]:
    """Positions ``0..n-1`` of rows of these lengths, in order, cut into ``parts`` runs of
    near-equal row counts (`grad_accum_steps`), each cut further until its rows times its
    longest row come to at most ``max_tokens`` (0: no cap; a row longer than the cap goes
    alone). Activation memory follows those padded tokens, not the row count; the first
    ``shared`` tokens, which every row has in common and which run once, count once."""
    n = len(lengths)
    size = max(1, math.ceil(n / max(1, parts)))
    out: list[list[int]] = []
    for start in range(0, n, size):
        run: list[int] = []
        widest = 0
        for i in range(start, min(start + size, n)):
            width = max(widest, lengths[i]) - shared
            if run and max_tokens and shared + width * (len(run) + 1) > max_tokens:
                out.append(run)
                run, widest = [], 0
            run.append(i)
            widest = max(widest, lengths[i])
        out.append(run)
    return out


def record_of(item: Any) -> Any:
    """The `TokenRecord` of a trajectory (or the record itself); a clear error if it has none."""
    if hasattr(item, "ids") and hasattr(item, "mask"):
        return item
    tokens = getattr(item, "tokens", None)
    if tokens is None:
        task_id = getattr(item, "task_id", "?")
        raise ValueError(
            f"trajectory {task_id!r} has no token record; collect it with a token policy "
            "(one with encode/token_logprobs) or tokenise it before training"
        )
    return tokens


def to_token_records(
    items: Sequence[Any], encode: Callable[[str], list[int]] | None = None, tool_style: str = "json"
) -> list[Any]:
    """Token records for SFT: a trajectory's own record when it has one (the exact ids it was
    sampled with), else the trajectory rendered in the chat format and encoded with `encode`
    (mask 1 on the assistant's turns), e.g. expert demonstrations or imported chats."""
    from tooltune.rollout import tokenize_trajectory

    out = []
    for item in items:
        if hasattr(item, "ids") and hasattr(item, "mask"):
            out.append(item)
        elif getattr(item, "tokens", None) is not None:
            out.append(item.tokens)
        elif encode is not None:
            out.append(tokenize_trajectory(item, encode, tool_style))
        else:
            out.append(record_of(item))  # raises the clear "no token record" error
    return out


def collate(
    records: Sequence[Any],
    pad_id: int,
    max_len: int | None = None,
    drop_unscored_tail: bool = False,
) -> TokenBatch:
    """Pad token records (or trajectories carrying them) into one `TokenBatch`.

    Records longer than `max_len` keep their first `max_len` tokens: the policy cannot attend
    further, and the earliest turns are the ones later turns depend on. With
    `drop_unscored_tail` (GRPO) the tokens after a record's last scored token (a tool result
    an episode ended on, say) are dropped: no score of a causal model depends on them, and
    they would widen the batch for nothing. (SFT keeps them: with `sft_context_weight` they
    are targets too.)
    """
    if not records:
        raise ValueError("cannot collate an empty list of records")
    recs = [record_of(r) for r in records]
    for r in recs:
        logprobs = r.logprobs if r.logprobs else [0.0] * len(r.ids)
        if not (len(r.ids) == len(r.mask) == len(logprobs)):
            raise ValueError(
                f"token record lengths differ: ids={len(r.ids)} mask={len(r.mask)} "
                f"logprobs={len(r.logprobs)}"
            )
    lengths = [scored_length(r) if drop_unscored_tail else len(r.ids) for r in recs]
    lengths = [n if max_len is None else min(n, max_len) for n in lengths]
    width = max(2, max(lengths))
    bsz = len(recs)
    input_ids = torch.full((bsz, width), pad_id, dtype=torch.long)
    attention = torch.zeros((bsz, width), dtype=torch.long)
    mask = torch.zeros((bsz, width), dtype=torch.float32)
    logprobs = torch.zeros((bsz, width), dtype=torch.float32)
    for b, (r, n) in enumerate(zip(recs, lengths, strict=True)):
        input_ids[b, :n] = torch.tensor(r.ids[:n], dtype=torch.long)
        attention[b, :n] = 1
        mask[b, :n] = torch.tensor(r.mask[:n], dtype=torch.float32)
        if r.logprobs:
            logprobs[b, :n] = torch.tensor(r.logprobs[:n], dtype=torch.float32)
    return TokenBatch(input_ids, attention, mask[:, 1:].contiguous(), logprobs[:, 1:].contiguous())


def scored_length(record: Any) -> int:
    """Tokens up to and including the last scored one (all of them when none is scored)."""
    last = max((t for t, m in enumerate(record.mask) if m), default=len(record.ids) - 1)
    return last + 1


def longest_turn(record: Any) -> int:
    """Tokens of the record's longest run of scored tokens: its longest model turn."""
    longest = run = 0
    for m in record.mask:
        run = run + 1 if m else 0
        longest = max(longest, run)
    return longest


def policy_device(policy: Any) -> torch.device:
    """Device of the policy's parameters (CPU for a parameterless module)."""
    for p in policy.model.parameters():
        return p.device
    return torch.device("cpu")


def trainable_parameters(policy: Any) -> list[torch.nn.Parameter]:
    params = [p for p in policy.model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters")
    return params


@dataclass
class SFTHistory:
    """What happened during SFT: one entry per epoch, plus per-optimizer-step traces."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    epoch_metrics: list[dict[str, Any]] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    num_train_tokens: int = 0
    dropped_empty: int = 0
    turns_over_budget: int = 0  # conversations with a turn longer than `max_new_tokens`

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "epoch_metrics": self.epoch_metrics,
            "step_loss": self.step_loss,
            "grad_norm": self.grad_norm,
            "lr": self.lr,
            "num_train_tokens": self.num_train_tokens,
            "dropped_empty": self.dropped_empty,
            "turns_over_budget": self.turns_over_budget,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SFTHistory:
        lists = {k: list(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **lists})


@dataclass
class SFTProgress:
    """Where SFT stands after `step` optimizer steps: what `train_sft(resume=...)` needs to take
    the remaining steps an unstopped run takes (the same batches, the same updates)."""

    step: int
    epoch: int
    epoch_step: int  # steps of `epoch` done
    epoch_generator: torch.Tensor  # the batch order's generator as `epoch` began
    torch_rng: torch.Tensor  # torch's global generator (dropout), now
    optimizer: dict[str, Any]  # with AdamW's fp32 master weights
    scheduler: dict[str, Any]
    history: SFTHistory
    epoch_nll: float  # the epoch's sums so far
    epoch_tokens: float

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (no class of ours), so a checkpoint outlives a renamed module."""
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__},
                "history": self.history.to_dict()}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SFTProgress:
        return cls(**{**data, "history": SFTHistory.from_dict(data["history"])})


def scored_token_logprobs(policy: Any, batch: TokenBatch) -> torch.Tensor:
    """`policy.token_logprobs` of the batch, computed at its loss-mask positions only where the
    policy can (``scored=``: a pretrained model's vocabulary-wide logits of context positions
    were most of SFT's memory); the other positions are then 0."""
    if accepts_keyword(policy.token_logprobs, "scored"):
        return policy.token_logprobs(batch.input_ids, batch.attention_mask, scored=batch.loss_mask)
    return policy.token_logprobs(batch.input_ids, batch.attention_mask)


def masked_nll_sum(policy: Any, batch: TokenBatch, share_prefix: bool = True) -> torch.Tensor:
    """Sum over the batch of -log p(token) for mask==1 tokens (keeps the graph). With
    `share_prefix`, beginnings that rows share run once where the policy can (same values)."""
    logp = prefix_logprobs(policy, batch) if share_prefix else None
    if logp is None:
        logp = scored_token_logprobs(policy, batch)
    return -(logp * batch.loss_mask).sum()


def own_and_weighted_nll(
    policy: Any, batch: TokenBatch, context_weight: float, share_prefix: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL of the model's own tokens, that plus `context_weight` x the NLL of the context
    tokens): the first is what SFT reports, the second what it minimises."""
    if not context_weight:
        own = masked_nll_sum(policy, batch, share_prefix)
        return own, own
    logp = policy.token_logprobs(batch.input_ids, batch.attention_mask)
    own = -(logp * batch.loss_mask).sum()
    context = batch.attention_mask[:, 1:] * (1.0 - batch.loss_mask)
    return own, own - context_weight * (logp * context).sum()


@torch.no_grad()
def evaluate_loss(
    policy: Any, records: Sequence[Any], batch_size: int = 16, max_len: int | None = None
) -> float:
    """Mean NLL per supervised token over `records` (no gradients)."""
    device = policy_device(policy)
    was_training = policy.model.training
    policy.model.eval()
    total, count = 0.0, 0.0
    try:
        for start in range(0, len(records), batch_size):
            batch = collate(records[start : start + batch_size], policy.pad_token_id, max_len)
            batch = batch.to(device)
            total += masked_nll_sum(policy, batch).item()
            count += batch.loss_mask.sum().item()
    finally:
        policy.model.train(was_training)
    return total / count if count else float("nan")


def _num_supervised(record: Any, max_len: int | None) -> int:
    rec = record_of(record)
    mask = rec.mask if max_len is None else rec.mask[:max_len]
    return int(sum(mask[1:]))


@keep_freed_pages()  # each step frees, then needs again, the same large blocks
def train_sft(
    policy: Any,
    train_records: Sequence[Any],
    config: Any,
    val_records: Sequence[Any] | None = None,
    *,
    epochs: int | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    max_len: int | None = None,
    callback: Callable[[int, Any], dict[str, Any] | None] | None = None,
    log: Callable[[str], None] | None = None,
    tool_style: str = "json",
    progress: bool = False,
    augment: Callable[[Any], Any] | None = None,
    share_prefix: bool | None = None,
    checkpoint: Callable[[SFTProgress], None] | None = None,
    checkpoint_minutes: float = 10.0,
    resume: SFTProgress | None = None,
) -> SFTHistory:
    """Fine-tune `policy` on token records or trajectories, in place.

    Trajectories without a token record are rendered and encoded with `policy.encode` (see
    `to_token_records`); `tool_style` must match the one used at rollout time.

    Uses AdamW with `config.weight_decay`, warm-up + cosine decay (`config.warmup_ratio`) and
    gradient clipping (`config.max_grad_norm`); one optimizer step per batch of `batch_size`
    records. `config.grad_accum_steps` splits each batch into that many micro-batches to save
    memory, and `config.micro_batch_tokens` further where one would hold more tokens; the loss
    is normalised by the supervised-token count of the whole batch, so the update is the same as
    without splitting (as in GRPO). After every epoch the validation
    loss is computed and `callback(epoch, policy)` runs; a dict it returns is stored in
    `history.epoch_metrics`.

    With `config.sft_context_weight` > 0 the context tokens (prompt, tool output) are targets
    too, at that weight; the reported losses stay those of the model's own tokens.

    `augment(trajectory) -> trajectory` (e.g. `tasks.augment.rename_entities`) is applied to
    every training trajectory afresh each epoch, so no epoch repeats the same text.

    `checkpoint(progress)` is called after a step once `checkpoint_minutes` have passed since
    the last call (or the start), never after the last step; the caller saves the weights with
    the `SFTProgress`. `resume=progress` (the weights loaded into `policy` first, a fresh
    `augment` as at the start) takes the steps that remain, the same ones an unstopped run takes.

    With `share_prefix` (never with a context weight) the beginnings that rows of a
    micro-batch share (at least the system prompt's instructions, ~100 of SmolLM2's ~770 tokens
    a row) run once (`shared_prefix`): the same loss and gradients from fewer positions, 7%
    faster on SmolLM2 in fp32 (2-core Zen 3; benchmarks/sft_step.py). Left to the config
    (`sft_share_prefix`), it is used where the weights are fp32 only: in bf16 the continuations'
    masked attention cost what the shared rows saved (Zen 4). Batches stay random: batches of
    one tool set share their whole system prompt, 23% faster again in fp32, but trained a worse
    model (the default demo solved 120 against 149 of 250 test tasks after SFT; RESULTS.md).
    """
    epochs = config.sft_epochs if epochs is None else epochs
    lr = config.sft_learning_rate if learning_rate is None else learning_rate
    batch_size = config.sft_batch_size if batch_size is None else batch_size
    accum = max(1, int(config.grad_accum_steps))
    token_cap = int(getattr(config, "micro_batch_tokens", 0))
    context_weight = float(getattr(config, "sft_context_weight", 0.0))
    if max_len is None:
        max_len = getattr(policy, "max_seq_len", None)
    history = SFTHistory()
    encode = getattr(policy, "encode", None)

    if share_prefix is None:
        weights = next(iter(policy.model.parameters()), None)
        fp32 = weights is None or weights.dtype == torch.float32
        share_prefix = bool(getattr(config, "sft_share_prefix", False)) and fp32
    share_prefix = share_prefix and not context_weight  # context targets cannot be shared

    def epoch_records(items: Sequence[Any]) -> list[Any]:
        all_records = to_token_records(items, encode, tool_style)
        kept = [r for r in all_records if _num_supervised(r, max_len) > 0]
        history.dropped_empty = len(all_records) - len(kept)
        if not kept:
            raise ValueError("no training record has any supervised (mask == 1) token")
        return kept

    records = epoch_records(train_records)
    budget = int(getattr(config, "max_new_tokens", 0) or 0)
    over = [n for n in map(longest_turn, records) if budget and n > budget]
    history.turns_over_budget = len(over)
    if over and log is not None:  # such a turn is learned but cut off whenever the model runs
        log(f"warning: {len(over)} of {len(records)} training conversations have a model turn "
            f"longer than max_new_tokens ({max(over)} tokens against {budget}); the model "
            "cannot finish such a turn when it runs: raise max_new_tokens")  # fmt: skip
    val = [
        r
        for r in to_token_records(val_records or [], encode, tool_style)
        if _num_supervised(r, max_len) > 0
    ]

    if epochs <= 0:
        return history
    params = trainable_parameters(policy)
    optimizer = AdamW(params, lr=lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(records) / batch_size)
    scheduler = make_scheduler(optimizer, steps_per_epoch * epochs, config.warmup_ratio)
    device = policy_device(policy)
    generator = torch.Generator().manual_seed(data_seed_of(config))
    clip = config.max_grad_norm if config.max_grad_norm and config.max_grad_norm > 0 else math.inf

    total_steps = steps_per_epoch * epochs
    start_epoch, done = 0, 0
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        history = resume.history
        start_epoch, done = resume.epoch, resume.step
        generator.set_state(resume.epoch_generator)
        torch.set_rng_state(resume.torch_rng)
    last_checkpoint = _clock()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=done, desc="SFT", unit="step", dynamic_ncols=True)
    policy.model.train()
    for epoch in range(epochs):
        if epoch < start_epoch:  # resumed: draw the renames the stopped run drew, unused
            if augment is not None:
                for item in train_records:
                    augment(item)
            continue
        epoch_generator = generator.get_state()
        if augment is not None:
            records = epoch_records([augment(item) for item in train_records])
        order = torch.randperm(len(records), generator=generator).tolist()
        epoch_step, epoch_nll, epoch_tokens = 0, 0.0, 0.0
        if resume is not None and epoch == start_epoch:  # the stopped epoch's steps and sums
            r = resume
            epoch_step, epoch_nll, epoch_tokens = r.epoch_step, r.epoch_nll, r.epoch_tokens
        batches = _batches(records, order, batch_size, generator)
        for batch_records in batches[epoch_step:]:
            lengths = [min(len(record_of(r).ids), max_len or math.inf) for r in batch_records]
            ids = [record_of(r).ids for r in batch_records]
            shared = min(common_prefix_length(ids[0], row) for row in ids) if share_prefix else 0
            parts = [
                collate([batch_records[i] for i in run], policy.pad_token_id, max_len).to(device)
                for run in micro_batches(lengths, accum, token_cap, shared)
            ]
            batch_tokens = sum(p.loss_mask.sum().item() for p in parts)
            optimizer.zero_grad(set_to_none=True)
            batch_nll = 0.0
            for k, part in enumerate(parts):
                nll, loss = own_and_weighted_nll(policy, part, context_weight, share_prefix)
                (loss / batch_tokens).backward()
                batch_nll += nll.item()
                if k + 1 < len(parts):  # the next part's sizes differ: kept pages would add up
                    release_free_memory(KEEP_FREE_BYTES)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            release_free_memory(KEEP_FREE_BYTES)
            history.lr.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
            history.step_loss.append(batch_nll / batch_tokens)
            history.grad_norm.append(float(grad_norm))
            epoch_nll += batch_nll
            epoch_tokens += batch_tokens
            done, epoch_step = done + 1, epoch_step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history.step_loss[-1]:.3f}")
            due = _clock() - last_checkpoint >= 60 * checkpoint_minutes
            if checkpoint is not None and due and done < total_steps:
                checkpoint(SFTProgress(done, epoch, epoch_step, epoch_generator,
                                       torch.get_rng_state(), optimizer.state_dict(),
                                       scheduler.state_dict(), history, epoch_nll, epoch_tokens))  # fmt: skip
                last_checkpoint = _clock()
        history.num_train_tokens += int(epoch_tokens)
        history.train_loss.append(epoch_nll / epoch_tokens)
        history.val_loss.append(evaluate_loss(policy, val, batch_size, max_len) if val else None)
        metrics = callback(epoch, policy) if callback is not None else None
        history.epoch_metrics.append(dict(metrics or {}))
        if log is not None:
            val_text = "n/a" if history.val_loss[-1] is None else f"{history.val_loss[-1]:.4f}"
            log(
                f"sft epoch {epoch + 1}/{epochs}: train_loss={history.train_loss[-1]:.4f} "
                f"val_loss={val_text} {metrics or ''}".rstrip()
            )
    if bar is not None:
        bar.close()
    return history


def _batches(
    records: Sequence[Any], order: list[int], batch_size: int, generator: torch.Generator
) -> list[list[Any]]:
    """One epoch's batches of similar length (less padding), in random order: `order` (a
    random permutation) is cut into chunks of 16 batches and sorted by length within a chunk."""
    chunk = batch_size * 16
    batches: list[list[Any]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(record_of(records[i]).ids))
        batches += [
            [records[i] for i in part[s : s + batch_size]] for s in range(0, len(part), batch_size)
        ]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def load_chat_jsonl(path: str | Path) -> list[Any]:
    """Read a JSONL file of OpenAI-style chats into `AgentTrajectory` objects.

    Each line is `{"messages": [...], "tools": [...]}` (tools optional), the format of most public
    tool-calling SFT sets. Blank lines are skipped; a malformed line raises a ValueError naming
    its line number, so a bad file fails loudly instead of training on half of it.
    """
    name = Path(path).name
    rows = [(f"{path}:{n}", f"{name}:{n}", row) for n, row in read_jsonl(path)]
    return _chats(rows)


def load_chat_rows(rows: Any, name: str = "dataset") -> list[Any]:
    """Chats given as objects, not a file: a `datasets.Dataset` (e.g. from
    `load_dataset("json", ...)` or the Hub), or any iterable of dicts, each with `messages` and
    optionally `tools`, `task_id`, `task_tier`, as in `load_chat_jsonl`. A `None` is read as an
    absent key: `datasets` gives every row every key any row has. A bad row names its index."""
    if isinstance(rows, dict) or callable(getattr(rows, "keys", None)):
        raise ValueError(f"{name}: a mapping of splits (a DatasetDict?), not rows of chats: "
                         "pass one split, e.g. dataset['train']")  # fmt: skip
    return _chats([(f"{name} row {i}", f"{name}:{i}", row) for i, row in enumerate(rows)])


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _chats(rows: list[tuple[str, str, Any]]) -> list[Any]:
    """(where, source, row) to trajectories: `where` starts a row's errors, `source` goes into
    its metadata."""
    from tooltune.messages import trajectory_from_messages

    out = []
    for where, source, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise ValueError(f"{where}: expected an object with a 'messages' list")
        tools = row.get("tools") or []
        if not isinstance(tools, list):
            raise ValueError(f"{where}: 'tools' must be a list")
        try:
            traj = trajectory_from_messages(
                _without_none(row["messages"]), task_tier=row.get("task_tier") or "simple",
                tools=_without_none(tools),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{where}: cannot convert messages ({exc})") from exc
        if row.get("task_id") is not None:
            traj.task_id = str(row["task_id"])
        traj.metadata.setdefault("source", source)
        out.append(traj)
    return out
