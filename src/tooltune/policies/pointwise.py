"""The element-wise parts of a Llama-family layer (RMSNorm, rotary embedding, SiLU gate) as
plain functions, which `llama_forward` calls and `compile_pointwise` can compile.

Eager, each is several passes over [tokens, width] tensors (RMSNorm: a cast to fp32, a square,
a mean, a product, a cast back, a scale; more in the backward), while the products around them
run at the processor's full speed: on a 2-core Intel Xeon with AMX these passes were a quarter
of an SFT step of SmolLM2-135M in bf16. `torch.compile` (inductor, dynamic shapes) turns each
into one loop forward and one backward, computing in fp32 and rounding once: the demo's SFT
step (4 rows of ~770 tokens, top 20 layers trained) took 3.53 s compiled against 4.07 s eager
(medians of 6, interleaved; ~15 s to compile, once per process). Compiling needs a C++
compiler; where it fails, the functions stay eager and `compile_pointwise` says why.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As the Llama/Qwen2 RMSNorm module: normalise in fp32, round to x's dtype, then scale."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary position embedding of queries or keys [B, H, T, D] (``rotate_half`` layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def silu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The Llama MLP's ``act(gate(x)) * up(x)`` with SiLU."""
    return F.silu(gate) * up


EAGER = {"rms_norm": rms_norm, "rotate": rotate, "silu_gate": silu_gate}


def norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` for an RMSNorm layer: through `rms_norm` where the module is the plain
    Llama/Qwen2/Mistral one, else its own forward."""
    plain = type(module).__name__ in ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")
    if plain and not (module._forward_hooks or module._forward_pre_hooks):
        return rms_norm(x, module.weight, module.variance_epsilon)
    return module(x)


def compile_pointwise() -> str | None:
    """Compile `rms_norm`, `rotate` and `silu_gate` for this process (what `llama_forward`
    calls from then on); returns None, or why they stay eager. Each is tried forward and
    backward on a small input first, so a missing compiler shows here, not mid-training."""
    global rms_norm, rotate, silu_gate
    if rms_norm is not EAGER["rms_norm"]:
        return None
    try:
        compiled = {name: torch.compile(f, dynamic=True) for name, f in EAGER.items()}
        x = torch.randn(2, 3, 6, 8, requires_grad=True)
        cos, sin = torch.randn(2, 1, 6, 8), torch.randn(2, 1, 6, 8)
        out = compiled["rms_norm"](x, torch.ones(8), 1e-6) + compiled["rotate"](x, cos, sin)
        compiled["silu_gate"](out, x).sum().backward()
    except Exception as exc:  # noqa: BLE001 (any failure of the compiler stack: stay eager)
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    rms_norm, rotate, silu_gate = (compiled[n] for n in ("rms_norm", "rotate", "silu_gate"))
    return None


def eager_pointwise() -> None:
    """Back to the eager functions (tests)."""
    global rms_norm, rotate, silu_gate
    rms_norm, rotate, silu_gate = EAGER["rms_norm"], EAGER["rotate"], EAGER["silu_gate"]
