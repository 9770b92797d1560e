"""Learning-rate schedule: linear warm-up, then cosine decay.

Warm-up keeps the first AdamW steps small while its second-moment estimates are still noisy;
cosine decay lets the last steps settle instead of bouncing around at full learning rate.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based).

    Rises linearly from 1/(warmup_steps+1) to 1 over `warmup_steps` steps, then follows a half
    cosine from 1 down to `min_ratio` at `total_steps`. Steps past the end stay at `min_ratio`.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    warmup_steps = max(0, min(warmup_steps, total_steps))
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_ratio: float = 0.1,
    min_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying `warmup_cosine`; call `.step()` after every `optimizer.step()`."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    warmup_steps = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, min_ratio)
    )
