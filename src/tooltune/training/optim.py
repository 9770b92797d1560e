"""The optimizer every training loop uses: AdamW, with fp32 master weights for parameters that
live in a lower precision.

Full fine-tuning of a pretrained model on a CPU with fast bf16 keeps the model's weights in
bf16, so every forward, backward and generation runs bf16 matrix products. AdamW's updates are
often smaller than bf16's resolution (8 bits of mantissa: 1.0 + 1e-3 rounds back to 1.0), so
stepping the bf16 weights directly would lose most of them. `AdamW` here steps fp32 copies of
such parameters and rounds the result into the model after every step (the "master weights"
of mixed-precision training). fp32 parameters (LoRA adapters) are stepped in place as usual.
The masters travel in the optimizer's `state_dict`, so a resumed run steps the fp32 values
an unstopped one would, not the rounded weights a checkpoint holds.

The step is torch's fused kernel wherever it has one (CPU and CUDA): over SmolLM2's 135M
parameters the per-tensor loop took ~0.6 s of a ~5.5 s full fine-tuning step on a 2-core CPU,
the fused kernel a fraction of that (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class AdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` that keeps fp32 master copies of non-fp32 parameters."""

    def __init__(self, params: Iterable[torch.nn.Parameter], **kwargs) -> None:
        self.model_params = list(params)
        self.masters = [
            p if p.dtype == torch.float32 else p.detach().float().requires_grad_()
            for p in self.model_params
        ]
        if "fused" not in kwargs and "foreach" not in kwargs:
            kwargs["fused"] = all(m.device.type in ("cpu", "cuda") for m in self.masters)
        super().__init__(self.masters, **kwargs)

    def _low_precision(self):
        return ((p, m) for p, m in zip(self.model_params, self.masters, strict=True) if m is not p)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for param, master in self._low_precision():
            master.grad = None if param.grad is None else param.grad.float()
        loss = super().step(closure)
        for param, master in self._low_precision():
            param.copy_(master)  # rounds to the model's dtype
            master.grad = None
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {**super().state_dict(), "masters": [m for _, m in self._low_precision()]}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Also the fp32 masters where saved (a state from before they were saved keeps the
        masters rebuilt from the model's rounded weights)."""
        state_dict = dict(state_dict)
        masters = state_dict.pop("masters", None)
        super().load_state_dict(state_dict)
        pairs = list(self._low_precision())
        if masters is not None and len(masters) == len(pairs):
            for (param, master), saved in zip(pairs, masters, strict=True):
                master.copy_(saved)
                param.copy_(master)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for param, _ in self._low_precision():
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()
