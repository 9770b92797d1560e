"""What every token policy does with its `nn.Module`, written once."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Self

import torch

from tooltune.rollout import Policy

if TYPE_CHECKING:
    from tooltune.prompt_format import PromptFormat


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes the keyword ``name`` (optional features of a policy's methods, such
    as ``token_logprobs(..., scored=)``, are used only where they exist)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class ModulePolicy(Policy):
    """Delegates `parameters`/`train`/`eval`/`to` to `self.model` (returning the policy)."""

    model: torch.nn.Module
    # How the model is prompted (tool style, generation settings): set by whoever trains it,
    # written by save() and read back by load(); None when unknown (see tooltune.prompt_format)
    prompt_format: PromptFormat | None = None

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

    # The rows the last generate() call finished, kept so that the next call can continue them
    # (an episode's next turn runs only its new tokens); valid only for the weights they were
    # computed with.
    _turn_cache: dict = {}
    _turn_cache_version: tuple | None = None

    def _weights_version(self) -> tuple:
        """Changes whenever a parameter is updated in place (optimiser step, load) or replaced."""
        return tuple((p.data_ptr(), p._version) for p in self.model.parameters())

    def _take_turn_cache(self, reuse: bool) -> tuple[dict, dict | None, tuple]:
        """(the last call's rows if still valid, a dict for this call's rows or None, the
        weights' version). The old rows are released here, before the new batch runs."""
        version = self._weights_version()
        valid = reuse and self._turn_cache_version == version
        previous = self._turn_cache if valid else {}
        self._turn_cache, self._turn_cache_version = {}, None
        return previous, ({} if reuse else None), version

    def _keep_turn_cache(self, finished: dict | None, version: tuple) -> None:
        if finished:
            self._turn_cache, self._turn_cache_version = finished, version

    def release_turns(self) -> None:
        """Drop the kept rows (see `Policy.release_turns`)."""
        self._turn_cache, self._turn_cache_version = {}, None


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode without gradients, e.g. for the GRPO reference policy."""
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
