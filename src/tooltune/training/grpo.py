"""Group Relative Policy Optimization over recorded agent trajectories.

Each task is rolled out `num_generations` times; a sample's advantage is its reward relative to its
group (mean, min or a learned baseline), optionally divided by the group's reward std. The policy
is updated with the token-level PPO-clipped objective, using the sampling log-probs recorded at
rollout time as the old policy, plus a k3 KL penalty towards a frozen reference policy. Only the
model's own tokens (mask == 1) enter the loss; prompts and tool outputs are context. The loop
around it (rollouts, steps, checkpoints) is `tooltune.training.grpo_loop`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tooltune.allocator import KEEP_FREE_BYTES, release_free_memory
from tooltune.config import LOSS_TYPES
from tooltune.rollout import accepts_keyword
from tooltune.training.sft import (
    TokenBatch,
    collate,
    micro_batches,
    policy_device,
    trainable_parameters,
)
from tooltune.training.shared_prefix import prefix_logprobs

BASELINES = ("mean", "min", "learned")

# A learned baseline maps one group of trajectories to one baseline value per trajectory.
BaselineFn = Callable[[Sequence[Any]], Sequence[float]]


class Collective(Protocol):
    """The processes of a data-parallel update (`tooltune.distributed.ddp.DistContext`)."""

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]: ...

    def all_reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None: ...


def group_advantages(
    rewards: torch.Tensor,
    baseline: str = "mean",
    scale: bool = True,
    learned: Sequence[float] | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Advantages of one group's rewards: `(r - b) / std(r)` (std only when `scale`).

    `b` is the group mean, the group minimum, or the per-sample `learned` baseline. The std is the
    unbiased sample std of the group's rewards. Unlike the seed, the "min" baseline is not re-centred
    afterwards, so it really is a different baseline from "mean".
    """
    if baseline == "mean":
        b = rewards.mean()
    elif baseline == "min":
        b = rewards.min()
    elif baseline == "learned":
        if learned is None or len(learned) != len(rewards):
            raise ValueError("the learned baseline must give one value per trajectory")
        b = torch.as_tensor(list(learned), dtype=rewards.dtype)
    else:
        raise ValueError(f"unknown reward_baseline {baseline!r}; expected one of {BASELINES}")
    adv = rewards - b
    if scale and len(rewards) > 1:
        adv = adv / (rewards.std() + eps)
    return adv


@dataclass
class LossTerms:
    """The loss of one (micro-)batch and the sums needed to report batch-level statistics."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl_loss: torch.Tensor
    kl_sum: float
    clipped: float
    ratio_sum: float
    drift_sum: float
    tokens: float


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float,
    beta: float,
    loss_type: str,
    *,
    num_seqs: int | None = None,
    num_tokens: float | None = None,
    constant: float = 1.0,
) -> LossTerms:
    """Token-level clipped GRPO loss for `[B, T]` log-probs and `[B]` advantages.

    Per token: `-min(r*A, clip(r, 1-eps, 1+eps)*A) + beta * k3`, with `r = exp(logp - old)`
    and `k3 = exp(ref - logp) - (ref - logp) - 1` (non-negative, unbiased for KL(pi || ref)).

    `loss_type`, how mask==1 tokens are averaged (TRL's names):
      * "grpo":    mean over each sequence's tokens, then mean over sequences;
      * "dapo":    sum over all tokens / number of tokens in the batch;
      * "dr_grpo": sum over all tokens / (num_seqs * constant).
    `num_seqs` / `num_tokens` are the sizes of the whole optimisation batch; passing them when
    this call sees only a micro-batch makes the micro-batch losses add up to the full-batch loss.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    clipped_ratio = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon)
    pg = -torch.minimum(ratio * adv, clipped_ratio * adv)
    if ref_logp is not None:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1.0
    else:
        kl = torch.zeros_like(logp)

    num_seqs = logp.shape[0] if num_seqs is None else num_seqs
    if loss_type == "grpo":
        lengths = mask.sum(dim=1).clamp(min=1.0)

        def reduce(x: torch.Tensor) -> torch.Tensor:
            return ((x * mask).sum(dim=1) / lengths).sum() / num_seqs
    elif loss_type == "dapo":
        denom = mask.sum().item() if num_tokens is None else num_tokens

        def reduce(x: torch.Tensor) -> torch.Tensor:
            return (x * mask).sum() / max(denom, 1.0)
    else:

        def reduce(x: torch.Tensor) -> torch.Tensor:
            return (x * mask).sum() / (num_seqs * constant)

    policy_loss = reduce(pg)
    kl_loss = reduce(kl)
    with torch.no_grad():
        is_clipped = ((ratio < 1.0 - epsilon) & (adv < 0)) | ((ratio > 1.0 + epsilon) & (adv > 0))
        stats = (
            (kl * mask).sum().item(),
            (is_clipped.to(mask.dtype) * mask).sum().item(),
            (ratio * mask).sum().item(),
            ((logp - old_logp).abs() * mask).sum().item(),
            mask.sum().item(),
        )
    return LossTerms(policy_loss + beta * kl_loss, policy_loss, kl_loss, *stats)


def accepts_temperature(policy: Any) -> bool:
    """Whether `policy.token_logprobs` takes a `temperature` keyword."""
    return accepts_keyword(policy.token_logprobs, "temperature")


OLD_LOGPROBS = ("auto", "recorded", "recompute")


class GRPOTrainer:
    """GRPO updates for a token policy (`token_logprobs`, `.model`, `pad_token_id`).

    `train_step` does the whole update, `optimizer.step()` included, `config.num_iterations`
    times; given a `collective` it is one process's part of a data-parallel update (see
    `tooltune.distributed.ddp`). `baseline_fn` is required when
    `config.reward_baseline == "learned"` (see `reward_model.learned_baseline`). `minibatch_size`
    splits each iteration into several optimizer steps (None: one step over the whole batch);
    `config.grad_accum_steps` splits every optimizer step into that many micro-batches for memory
    (more where one would hold over `config.micro_batch_tokens` tokens), with normalisers taken over the whole step so the result is the same as one big batch.
    `loss_constant` is the "dr_grpo" divisor per sequence (default `config.max_new_tokens`).

    Old log-probs (`old_logprobs`): "recorded" uses the sampling log-probs stored in each
    `TokenRecord`; "recompute" scores the batch with the current policy before the update.
    Samplers report log-probs of the temperature-scaled distribution, so the recorded ones only
    match what the trainer computes when the temperature is 1 or `token_logprobs` accepts a
    `temperature` keyword (then the trainer passes `config.temperature`, for the policy and the
    reference alike). "auto" picks "recorded" in those cases and "recompute" otherwise, instead of
    letting a temperature mismatch masquerade as a policy change and clip every token.

    `share_prefix` (default on): when the samples of a group share their prompt and the policy
    has `prefix_token_logprobs` (the built-in and Hugging Face policies), each distinct prompt
    is run once per micro-batch and the samples' continuations attend to its keys/values, for
    the policy pass (gradients of all samples flow back into the one prompt pass) and the
    reference pass alike. Scored log-probs, the loss and the gradients are the same as without
    it (up to float rounding); it only removes repeated work. Not used with a `temperature`
    keyword, nor when it would not save positions.
    """

    def __init__(
        self,
        policy: Any,
        ref_policy: Any | None,
        optimizer: torch.optim.Optimizer,
        config: Any,
        *,
        scheduler: Any | None = None,
        baseline_fn: BaselineFn | None = None,
        minibatch_size: int | None = None,
        loss_constant: float | None = None,
        max_len: int | None = None,
        old_logprobs: str = "auto",
        share_prefix: bool = True,
    ):
        if config.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {config.loss_type!r}")
        if config.reward_baseline not in BASELINES:
            raise ValueError(f"unknown reward_baseline {config.reward_baseline!r}")
        if config.reward_baseline == "learned" and baseline_fn is None:
            raise ValueError('reward_baseline="learned" needs a baseline_fn (a reward model)')
        if ref_policy is None and config.beta > 0:
            raise ValueError("beta > 0 (the KL penalty) needs a reference policy")
        if old_logprobs not in OLD_LOGPROBS:
            raise ValueError(f"old_logprobs must be one of {OLD_LOGPROBS}, got {old_logprobs!r}")
        self.policy = policy
        self.ref_policy = ref_policy
        self.optimizer = optimizer
        self.config = config
        self.scheduler = scheduler
        self.baseline_fn = baseline_fn
        self.minibatch_size = minibatch_size
        self.loss_constant = float(loss_constant or getattr(config, "max_new_tokens", 256))
        self.max_len = max_len if max_len is not None else getattr(policy, "max_seq_len", None)
        self.params = trainable_parameters(policy)
        temperature = float(getattr(config, "temperature", 1.0))
        self.temperature = temperature if temperature > 0 else 1.0
        self._policy_kwargs = self._temperature_kwargs(policy)
        self._ref_kwargs = self._temperature_kwargs(ref_policy) if ref_policy is not None else {}
        if old_logprobs == "auto":
            consistent = self.temperature == 1.0 or bool(self._policy_kwargs)
            old_logprobs = "recorded" if consistent else "recompute"
        self.old_logprobs = old_logprobs
        self.share_prefix = share_prefix
        if ref_policy is not None:
            ref_policy.model.eval()
            for p in ref_policy.model.parameters():
                p.requires_grad_(False)

    def _temperature_kwargs(self, policy: Any) -> dict[str, float]:
        if self.temperature != 1.0 and accepts_temperature(policy):
            return {"temperature": self.temperature}
        return {}

    def compute_advantages(
        self, groups: Sequence[Sequence[Any]]
    ) -> tuple[list[Any], list[float], list[float], int]:
        """Flatten the groups that carry signal: (trajectories, advantages, rewards, skipped).

        A group whose rewards are all equal has no relative signal (every advantage would be 0
        under the mean baseline), so it is skipped rather than spending compute on it.
        """
        kept: list[Any] = []
        advantages: list[float] = []
        rewards_all: list[float] = []
        skipped = 0
        for group in groups:
            rewards = torch.tensor([float(t.total_reward) for t in group], dtype=torch.float64)
            rewards_all.extend(rewards.tolist())
            if len(group) < 2 or (rewards.max() - rewards.min()).item() < 1e-9:
                skipped += 1
                continue
            learned = None
            if self.config.reward_baseline == "learned":
                learned = list(self.baseline_fn(group))
            adv = group_advantages(
                rewards, self.config.reward_baseline, self.config.scale_rewards, learned
            )
            kept.extend(group)
            advantages.extend(adv.tolist())
        return kept, advantages, rewards_all, skipped

    def _logprobs(self, policy: Any, kwargs: dict, batch: TokenBatch) -> torch.Tensor:
        """[B, T-1] log-probs of `batch`; rows sharing a prompt run it once (`share_prefix`)
        when the policy has `prefix_token_logprobs` (scored positions are identical)."""
        if self.share_prefix and not kwargs:
            shared = prefix_logprobs(policy, batch)
            if shared is not None:
                return shared
        if accepts_keyword(policy.token_logprobs, "scored"):
            kwargs = {**kwargs, "scored": batch.loss_mask}
        return policy.token_logprobs(batch.input_ids, batch.attention_mask, **kwargs).float()

    @torch.no_grad()
    def _score(self, policy: Any, kwargs: dict, full: TokenBatch) -> torch.Tensor:
        """Log-probs of the whole batch without gradients, in micro-batches."""
        was_training = policy.model.training
        policy.model.eval()
        try:
            width = full.loss_mask.shape[1]
            parts = []
            for run in self._micro_batches(full, list(range(full.input_ids.shape[0]))):
                logp = self._logprobs(policy, kwargs, full.select(run).trimmed())
                parts.append(torch.nn.functional.pad(logp, (0, width - logp.shape[1])))
        finally:
            policy.model.train(was_training)
        return torch.cat(parts)

    def _micro_batches(self, full: TokenBatch, rows: list[int]) -> list[list[int]]:
        """`rows` of `full` in forward/backward passes: `grad_accum_steps` of them, more where
        one would hold over `micro_batch_tokens` tokens (see `sft.micro_batches`)."""
        lengths = full.attention_mask[rows].sum(dim=1).tolist()
        accum = max(1, int(getattr(self.config, "grad_accum_steps", 1)))
        cap = int(getattr(self.config, "micro_batch_tokens", 0))
        return [[rows[i] for i in run] for run in micro_batches(lengths, accum, cap)]

    def _minibatches(self, n: int) -> list[list[int]]:
        """Row indices of one iteration's optimizer steps: the whole batch in one step, or
        shuffled minibatches of `minibatch_size`."""
        size = min(self.minibatch_size, n) if self.minibatch_size else n
        if size >= n:  # n == 0 too: a process with an empty share still joins the step
            return [list(range(n))]
        order = torch.randperm(n).tolist()
        return [order[start : start + size] for start in range(0, n, size)]

    def train_step(
        self, groups: Sequence[Sequence[Any]], collective: Collective | None = None
    ) -> dict[str, float]:
        """One GRPO update on `groups` (one inner list of sampled trajectories per task).

        With a `collective` (a `tooltune.distributed.ddp.DistContext`), `groups` are this
        process's share: every process calls `train_step` and all take the update of the union
        of the shares, whose losses are normalised by global counts and whose gradients are
        summed before clipping. Metrics are the global ones."""
        cfg = self.config
        if collective is not None and self.minibatch_size:
            raise ValueError("a data-parallel update takes one step per iteration: no minibatches")
        total = collective.all_reduce_sum if collective is not None else list
        trajectories, advantages, rewards, skipped = self.compute_advantages(groups)
        n_seqs, reward_sum, n_rewards, n_skipped, n_groups = total(
            [len(trajectories), sum(rewards), len(rewards), skipped, len(groups)]
        )
        metrics: dict[str, float] = {
            "mean_reward": reward_sum / n_rewards if n_rewards else 0.0,
            "skipped_groups": float(n_skipped),
            "num_groups": float(n_groups),
            "num_trajectories": float(n_seqs),
        }
        if not n_seqs:
            metrics.update(
                loss=0.0, policy_loss=0.0, kl_div=0.0, mean_advantage=0.0, clip_fraction=0.0,
                grad_norm=0.0, ratio_mean=1.0, logprob_drift=0.0, num_tokens=0.0,
                optimizer_steps=0.0, lr=self.optimizer.param_groups[0]["lr"],
            )  # fmt: skip
            return metrics

        full, ref_logp, adv = None, None, None
        if trajectories:  # (a process's share may be empty)
            device = policy_device(self.policy)
            full = collate(
                trajectories, self.policy.pad_token_id, self.max_len, drop_unscored_tail=True
            ).to(device)
            if self.old_logprobs == "recompute":
                full.old_logprobs = self._score(self.policy, self._policy_kwargs, full)
            adv = torch.tensor(advantages, dtype=torch.float32, device=device)
            if self.ref_policy is not None:
                ref_logp = self._score(self.ref_policy, self._ref_kwargs, full)

        clip_norm = cfg.max_grad_norm if cfg.max_grad_norm and cfg.max_grad_norm > 0 else math.inf
        sums = dict(loss=0.0, policy_loss=0.0, kl=0.0, clipped=0.0, ratio=0.0, tokens=0.0, gn=0.0)
        drift, drift_tokens = 0.0, 0.0
        steps, lr_sum = 0, 0.0
        # Dropout off: the ratio must measure how the policy changed, not dropout noise, and
        # the recorded log-probs were sampled without dropout. Gradients flow in eval mode.
        was_training = self.policy.model.training
        self.policy.model.eval()
        for _iteration in range(max(1, int(cfg.num_iterations))):
            for mb_index in self._minibatches(len(trajectories)):
                local_tokens = full.loss_mask[mb_index].sum().item() if mb_index else 0.0
                mb_seqs, mb_tokens = total([len(mb_index), local_tokens])
                self.optimizer.zero_grad(set_to_none=True)
                for idx in self._micro_batches(full, mb_index) if mb_index else []:
                    batch = full.select(idx).trimmed()
                    logp = self._logprobs(self.policy, self._policy_kwargs, batch)
                    terms = grpo_loss(
                        logp,
                        batch.old_logprobs,
                        None if ref_logp is None else ref_logp[idx][:, : logp.shape[1]],
                        adv[idx],
                        batch.loss_mask,
                        cfg.epsilon,
                        cfg.beta,
                        cfg.loss_type,
                        num_seqs=int(mb_seqs),
                        num_tokens=mb_tokens,
                        constant=self.loss_constant,
                    )
                    terms.loss.backward()
                    sums["loss"] += terms.loss.item()
                    sums["policy_loss"] += terms.policy_loss.item()
                    sums["kl"] += terms.kl_sum
                    sums["clipped"] += terms.clipped
                    sums["ratio"] += terms.ratio_sum
                    sums["tokens"] += terms.tokens
                    if steps == 0:  # before any update: how far old log-probs are from ours
                        drift += terms.drift_sum
                        drift_tokens += terms.tokens
                if collective is not None:
                    collective.all_reduce_gradients(self.params)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip_norm)
                lr_sum += self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                self.optimizer.step()
                release_free_memory(KEEP_FREE_BYTES)
                if self.scheduler is not None:
                    self.scheduler.step()
                sums["gn"] += float(grad_norm)
                steps += 1
        self.policy.model.train(was_training)

        local_tokens = full.loss_mask.sum().item() if full is not None else 0.0
        loss, policy_loss, kl, clipped, ratio, tokens, drift, drift_tokens, adv_sum, n_tokens = total(
            [sums["loss"], sums["policy_loss"], sums["kl"], sums["clipped"], sums["ratio"],
             sums["tokens"], drift, drift_tokens, sum(advantages), local_tokens]
        )  # fmt: skip
        tokens = max(tokens, 1.0)
        metrics.update(
            loss=loss / steps,
            policy_loss=policy_loss / steps,
            kl_div=kl / tokens,
            mean_advantage=adv_sum / n_seqs,
            clip_fraction=clipped / tokens,
            ratio_mean=ratio / tokens,
            logprob_drift=drift / max(drift_tokens, 1.0),
            grad_norm=sums["gn"] / steps,  # the global norm: every process clips the same sum
            num_tokens=n_tokens,
            optimizer_steps=float(steps),
            lr=lr_sum / steps,  # not the scheduler's next rate: the last step's would read 0
        )
        return metrics
