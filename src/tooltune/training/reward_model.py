"""A learned reward model for agent trajectories, sized for a CPU.

The seed's `AgentRewardModel`: a small transformer encoder over the trajectory's token embeddings,
mean-pooled, with a total-reward head and task-completion, tool-usage and efficiency heads. It is
trained on collected trajectories labelled by the task verifiers (BCE on success, regression on the
reward components) and can then serve as a dense reward term or as GRPO's learned baseline.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("total_reward", "task_completion", "tool_usage", "efficiency")
# targets read from each trajectory: head -> component name (None: the trajectory's own field)
COMPONENT_OF = {"tool_usage": "tool_success", "efficiency": "efficiency"}

IdsFn = Callable[[Any], list[int]]


@dataclass
class RewardModelConfig:
    vocab_size: int
    d_model: int = 64
    nhead: int = 4
    num_layers: int = 2
    max_len: int = 512
    dropout: float = 0.1
    pad_id: int = 0


class AgentRewardModel(nn.Module):
    """Transformer encoder + masked mean pooling + one linear head per reward component.

    `task_completion` is a logit (trained with BCE on verified success); the other heads regress
    the reward the rubric gave, on its own scale, so `total_reward` can stand in for it.
    """

    def __init__(self, config: RewardModelConfig):
        super().__init__()
        if config.d_model % config.nhead:
            raise ValueError("d_model must be divisible by nhead")
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id)
        self.pos = nn.Embedding(config.max_len, config.d_model)
        layer = nn.TransformerEncoderLayer(
            d_model=config.d_model,
            nhead=config.nhead,
            dim_feedforward=4 * config.d_model,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=config.num_layers, enable_nested_tensor=False
        )
        self.norm = nn.LayerNorm(config.d_model)
        self.reward_head = nn.Sequential(
            nn.Linear(config.d_model, config.d_model // 2),
            nn.ReLU(),
            nn.Linear(config.d_model // 2, 1),
        )
        self.task_completion_head = nn.Linear(config.d_model, 1)
        self.tool_usage_head = nn.Linear(config.d_model, 1)
        self.efficiency_head = nn.Linear(config.d_model, 1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """`input_ids`, `attention_mask`: [B, T] -> each head: [B]."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok(input_ids) + self.pos(positions)[None]
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        x = self.norm(x)
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return {
            "total_reward": self.reward_head(pooled).squeeze(-1),
            "task_completion": self.task_completion_head(pooled).squeeze(-1),
            "tool_usage": self.tool_usage_head(pooled).squeeze(-1),
            "efficiency": self.efficiency_head(pooled).squeeze(-1),
        }

    def save(self, path: str | Path) -> None:
        torch.save({"config": asdict(self.config), "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path) -> AgentRewardModel:
        data = torch.load(path, map_location="cpu", weights_only=True)
        model = cls(RewardModelConfig(**data["config"]))
        model.load_state_dict(data["state_dict"])
        model.eval()
        return model


def trajectory_ids(trajectory: Any) -> list[int]:
    """The token ids a trajectory was generated with; a clear error if it has none."""
    tokens = getattr(trajectory, "tokens", None)
    if tokens is None or not tokens.ids:
        raise ValueError(
            f"trajectory {getattr(trajectory, 'task_id', '?')!r} has no token ids; pass `to_ids` "
            "(e.g. render it and encode with the policy's tokenizer)"
        )
    return list(tokens.ids)


def _batch(
    ids_list: Sequence[list[int]], config: RewardModelConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad; sequences longer than `max_len` keep their last tokens (where the answer is)."""
    clipped = [ids[-config.max_len :] for ids in ids_list]
    width = max(1, max(len(ids) for ids in clipped))
    input_ids = torch.full((len(clipped), width), config.pad_id, dtype=torch.long)
    mask = torch.zeros((len(clipped), width), dtype=torch.long)
    for b, ids in enumerate(clipped):
        bad = [i for i in ids if not 0 <= i < config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the reward model's vocabulary")
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[b, : len(ids)] = 1
    return input_ids, mask


@torch.no_grad()
def predict(
    model: AgentRewardModel,
    trajectories: Sequence[Any],
    to_ids: IdsFn | None = None,
    batch_size: int = 32,
) -> dict[str, list[float]]:
    """Head outputs per trajectory; `task_completion` is returned as a probability."""
    to_ids = to_ids or trajectory_ids
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[float]] = {h: [] for h in HEADS}
    try:
        for s in range(0, len(trajectories), batch_size):
            ids, mask = _batch([to_ids(t) for t in trajectories[s : s + batch_size]], model.config)
            heads = model(ids.to(device), mask.to(device))
            heads["task_completion"] = torch.sigmoid(heads["task_completion"])
            for h in HEADS:
                out[h].extend(heads[h].float().cpu().tolist())
    finally:
        model.train(was_training)
    return out


def roc_auc(scores: Sequence[float], labels: Sequence[bool | int]) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties get average ranks).

    NaN when only one class is present: the AUC is undefined, and 0.5 would hide that.
    """
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: p[0])
    n_pos = sum(1 for _, y in pairs if y)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j) / 2 + 1  # ranks are 1-based
        rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class RewardModelReport:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: float = float("nan")
    val_auc: float = float("nan")
    val_total_mse: float = float("nan")
    n_train: int = 0
    n_val: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _targets(trajectories: Sequence[Any], labels: Sequence[bool] | None) -> torch.Tensor:
    """[N, 4] targets in HEADS order; NaN where a component was not recorded."""
    rows = []
    for k, t in enumerate(trajectories):
        success = float(labels[k] if labels is not None else t.success)
        comps = getattr(t, "reward_components", {}) or {}
        rows.append(
            [
                float(t.total_reward),
                success,
                float(comps.get(COMPONENT_OF["tool_usage"], math.nan)),
                float(comps.get(COMPONENT_OF["efficiency"], math.nan)),
            ]
        )
    return torch.tensor(rows, dtype=torch.float32)


def _loss(heads: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(heads["task_completion"], targets[:, 1])
    for col, head in ((0, "total_reward"), (2, "tool_usage"), (3, "efficiency")):
        known = ~torch.isnan(targets[:, col])
        if known.any():
            loss = loss + F.mse_loss(heads[head][known], targets[known, col])
    return loss


def split_by_group(
    trajectories: Sequence[Any], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Train/validation indices, keeping all samples of one task on the same side.

    Samples of one task are near-duplicates; splitting them across sides would measure memory,
    not generalisation.
    """
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(trajectories):
        key = getattr(t, "task_id", None)
        groups.setdefault(str(key) if key is not None else f"#{i}", []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    if len(keys) == 1:  # one task only: split its samples
        idx = groups[keys[0]]
        n_val = max(1, round(val_fraction * len(idx)))
        return idx[n_val:], idx[:n_val]
    n_val = min(len(keys) - 1, max(1, round(val_fraction * len(keys))))
    val = [i for k in keys[:n_val] for i in groups[k]]
    train = [i for k in keys[n_val:] for i in groups[k]]
    return train, val


def train_reward_model(
    trajectories: Sequence[Any],
    vocab_size: int,
    labels: Sequence[bool] | None = None,
    *,
    to_ids: IdsFn | None = None,
    pad_id: int = 0,
    d_model: int = 64,
    nhead: int = 4,
    num_layers: int = 2,
    max_len: int = 512,
    dropout: float = 0.1,
    epochs: int = 20,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[AgentRewardModel, RewardModelReport]:
    """Train a reward model on verifier-labelled trajectories and report held-out quality.

    `labels` overrides `trajectory.success`; component targets come from `total_reward` and
    `reward_components` ("tool_success", "efficiency"). Held-out accuracy (threshold 0.5 on the
    predicted success probability) and ROC AUC are computed on a split by task.
    """
    if len(trajectories) < 2:
        raise ValueError("need at least two trajectories to train and validate a reward model")
    if labels is not None and len(labels) != len(trajectories):
        raise ValueError("labels must have one entry per trajectory")
    to_ids = to_ids or trajectory_ids
    torch.manual_seed(seed)
    config = RewardModelConfig(vocab_size, d_model, nhead, num_layers, max_len, dropout, pad_id)
    model = AgentRewardModel(config)
    all_ids = [to_ids(t) for t in trajectories]
    targets = _targets(trajectories, labels)
    train_idx, val_idx = split_by_group(trajectories, val_fraction, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    report = RewardModelReport(n_train=len(train_idx), n_val=len(val_idx))
    generator = torch.Generator().manual_seed(seed)

    for epoch in range(epochs):
        model.train()
        order = [train_idx[i] for i in torch.randperm(len(train_idx), generator=generator)]
        total, count = 0.0, 0
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, mask = _batch([all_ids[i] for i in idx], config)
            loss = _loss(model(ids, mask), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        report.train_loss.append(total / count)
        report.val_loss.append(_eval_loss(model, all_ids, targets, val_idx, batch_size))
        if log is not None:
            log(f"reward model epoch {epoch + 1}/{epochs}: train={report.train_loss[-1]:.4f} "
                f"val={report.val_loss[-1]:.4f}")  # fmt: skip

    model.eval()
    val_trajs = [trajectories[i] for i in val_idx]
    preds = predict(model, val_trajs, to_ids, batch_size)
    truth = targets[val_idx, 1].tolist()
    probs = preds["task_completion"]
    report.val_accuracy = sum(
        (p >= 0.5) == (y >= 0.5) for p, y in zip(probs, truth, strict=True)
    ) / len(truth)
    report.val_auc = roc_auc(probs, [y >= 0.5 for y in truth])
    report.val_total_mse = sum(
        (p - y) ** 2
        for p, y in zip(preds["total_reward"], targets[val_idx, 0].tolist(), strict=True)
    ) / len(val_idx)
    return model, report


@torch.no_grad()
def _eval_loss(
    model: AgentRewardModel,
    all_ids: list[list[int]],
    targets: torch.Tensor,
    idx: list[int],
    batch_size: int,
) -> float:
    model.eval()
    total = 0.0
    for s in range(0, len(idx), batch_size):
        part = idx[s : s + batch_size]
        ids, mask = _batch([all_ids[i] for i in part], model.config)
        total += _loss(model(ids, mask), targets[part]).item() * len(part)
    return total / max(1, len(idx))


def reward_model_term(
    model: AgentRewardModel, to_ids: IdsFn | None = None, head: str = "task_completion"
) -> Callable[[Any, Any], float]:
    """A rubric term `(trajectory, task) -> float`: the model's predicted success probability
    (or another head's value), a dense signal where the verifier gives only 0 or 1."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")

    def reward(trajectory: Any, task: Any = None) -> float:
        return predict(model, [trajectory], to_ids)[head][0]

    return reward


def learned_baseline(
    model: AgentRewardModel, to_ids: IdsFn | None = None
) -> Callable[[Sequence[Any]], list[float]]:
    """GRPO baseline: for each sample, the mean predicted total reward of the OTHER samples.

    Leaving the sample out keeps the baseline independent of that sample's own actions, so the
    policy gradient stays unbiased (a baseline that looks at the sample itself would cancel the
    very signal it is meant to centre). For a group of one, the sample's own prediction is used.
    """

    def baseline(group: Sequence[Any]) -> list[float]:
        values = predict(model, list(group), to_ids)["total_reward"]
        n = len(values)
        if n == 1:
            return values
        total = sum(values)
        return [(total - v) / (n - 1) for v in values]

    return baseline
