"""What every token policy does with its `nn.Module`, written once."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Self

import torch


class ModulePolicy:
    """Delegates `parameters`/`train`/`eval`/`to` to `self.model` (returning the policy)."""

    model: torch.nn.Module

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.model.parameters()

    def train(self, mode: bool = True) -> Self:
        self.model.train(mode)
        return self

    def eval(self) -> Self:
        return self.train(False)

    def to(self, device: str | torch.device) -> Self:
        self.model.to(device)
        return self


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode without gradients, e.g. for the GRPO reference policy."""
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
