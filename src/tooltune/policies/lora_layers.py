"""Linear layers and their LoRA adapters as `llama_forward` runs them outside the modules.

peft's LoRA layer computes ``base(x) + B(A(dropout(x))) * scaling`` per adapter, with the input
cast to the adapters' dtype and the sum cast back. `project` does that for one layer from its
weights (a decoding step, without the module's per-call work); `read_together` does it for
layers that read the same input, sharing the A product. Anything else (DoRA, merged or disabled
adapters, active dropout, hooks) runs its module's own forward.

One difference from peft: fp32 adapters over bf16/fp16 activations compute in the activations'
dtype, as under autocast (TRL's `bf16=True`), their weights cast instead of the activations.
The adapters' weights, gradients and optimiser state stay fp32; what changes is the rounding of
their products. Casting every projection's input and output between bf16 and fp32 cost more
than the products: a LoRA SFT step of SmolLM2-135M (2 rows, 2,314 tokens, 2 threads, Intel AMX)
took 8.2 s with fp32 adapter products and 6.1 s in bf16.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

HALF = (torch.bfloat16, torch.float16)


class Projection(NamedTuple):
    """A linear layer as `decode_step` runs it: the frozen weight and bias, plus each active
    LoRA adapter as (A, B weight, B bias, scaling), applied by `project`."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    adapters: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float], ...]


def plain_lora(module: Any) -> bool:
    """Whether `module` is peft's LoRA layer in its plain form: over an `nn.Linear`, adapters
    not merged nor disabled, every active adapter vanilla LoRA (no DoRA or other variant) with
    `nn.Linear` A and B. `llama_forward.decode_step` runs it as its forward does (`project`)."""
    if type(getattr(module, "base_layer", None)) is not nn.Linear or not hasattr(module, "lora_A"):
        return False
    if module.merged or module.disable_adapters:
        return False
    variants = getattr(module, "lora_variant", {})
    dora = getattr(module, "use_dora", {})
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if name in variants or dora.get(name):
            return False
        if type(module.lora_A[name]) is not nn.Linear or type(module.lora_B[name]) is not nn.Linear:
            return False
    return True


def projection(module: Any) -> Projection:
    if type(module) is nn.Linear:
        return Projection(module.weight, module.bias, ())
    adapters = tuple(
        (module.lora_A[a].weight, module.lora_B[a].weight, module.lora_B[a].bias,
         module.scaling[a])
        for a in module.active_adapters
        if a in module.lora_A
    )  # fmt: skip
    return Projection(module.base_layer.weight, module.base_layer.bias, adapters)


def project(x: torch.Tensor, p: Projection) -> torch.Tensor:
    """`p` applied to `x`: the frozen layer, plus ``B(A(x)) * scaling`` for each adapter,
    computed in `adapter_dtype` and the sum cast back to the frozen layer's dtype."""
    y = F.linear(x, p.weight, p.bias)
    if not p.adapters:
        return y
    dtype = adapter_dtype(x, p.adapters[0][0])
    out = y.to(dtype)
    for a, b, b_bias, scaling in p.adapters:
        out = _add_adapter(out, F.linear(x.to(dtype), a.to(dtype)), b, b_bias, scaling)
    return out.to(y.dtype)


def adapter_dtype(x: torch.Tensor, a: torch.Tensor) -> torch.dtype:
    """The dtype adapter products run in: the activations' where they are bf16/fp16 and the
    adapters fp32 (as autocast would), else the adapters' (peft's rule)."""
    return x.dtype if x.dtype in HALF and a.dtype == torch.float32 else a.dtype


def _add_adapter(out: torch.Tensor, low: torch.Tensor, b: torch.Tensor,
                 b_bias: torch.Tensor | None, scaling: float) -> torch.Tensor:  # fmt: skip
    """``out + B(low) * scaling``; without a bias as one product that adds into the sum."""
    if b_bias is not None:
        return out + F.linear(low, b.to(out.dtype), b_bias.to(out.dtype)) * scaling
    flat = torch.addmm(out.reshape(-1, out.shape[-1]), low.reshape(-1, low.shape[-1]),
                       b.to(out.dtype).t(), alpha=scaling)  # fmt: skip
    return flat.view(out.shape)


def _shared_adapters(module: Any) -> tuple | None:
    """`projection(module).adapters` where `read_together` may run `module` itself: an
    `nn.Linear` (no adapters) or peft's plain LoRA layer whose dropout is off (inactive in eval
    mode, or p = 0), without hooks; None where the module must run its own forward."""
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    if type(module) is nn.Linear:
        return ()
    if not plain_lora(module):
        return None
    active = [a for a in module.active_adapters if a in module.lora_A]
    if module.training and any(type(module.lora_dropout[a]) is not nn.Identity for a in active):
        return None
    return projection(module).adapters


def read_together(x: torch.Tensor, modules: tuple[Any, ...]) -> list[torch.Tensor]:
    """The outputs of linear layers that read the same input (a layer's query, key and value
    projections; the MLP's gate and up), as their forwards compute them. LoRA adapters are
    applied as `project` applies them, but together: one product with all their A matrices,
    instead of a small product per layer (SmolLM2-135M, LoRA r=16 on every projection, bf16:
    the adapters' casts and small products were a quarter of a GRPO scoring pass). Any other
    module runs its forward."""
    adapters = [_shared_adapters(m) for m in modules]
    flat = [a for group in adapters if group for a in group]
    if any(a is None for a in adapters) or not flat or len({a[0].dtype for a in flat}) > 1:
        return [m(x) for m in modules]
    base = [getattr(m, "base_layer", m) for m in modules]
    outs = [F.linear(x, m.weight, m.bias) for m in base]
    dtype = adapter_dtype(x, flat[0][0])
    low = F.linear(x.to(dtype), torch.cat([a for a, *_ in flat]).to(dtype))
    parts = iter(low.split([a.shape[0] for a, *_ in flat], dim=-1))
    for i, group in enumerate(adapters):
        if group:
            out = outs[i].to(dtype)
            for (_, b, b_bias, scaling), part in zip(group, parts):  # noqa: B905 (one per A)
                out = _add_adapter(out, part, b, b_bias, scaling)
            outs[i] = out.to(outs[i].dtype)
    return outs
