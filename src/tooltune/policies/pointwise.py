"""The element-wise parts of a Llama-family layer (RMSNorm, rotary embedding, SiLU gate) as
plain functions, which `llama_forward` calls and `compile_pointwise` can compile (opt-in:
`pipeline.torch_compile`).

Eager, each is several passes over [tokens, width] tensors (RMSNorm: a cast to fp32, a square,
a mean, a product, a cast back, a scale; more in the backward), while the products around them
run at the processor's full speed: on a 2-core Intel Xeon with AMX these passes were a quarter
of an SFT step of SmolLM2-135M in bf16. `torch.compile` (inductor, dynamic shapes) turns each
into one loop forward and one backward, computing in fp32 and rounding once. The demo's SFT
step (4 rows of 550-1,000 tokens, top 20 layers trained, bf16): 4.07 s compiled against 4.50 s
eager (medians of 8 interleaved steps of 8 shapes; the same shape 6 times: 3.53 against 4.07 s),
after ~15 s of compiling, once per process; the eager functions compute bit for bit what the
modules compute. Not the demo's default: ~5% of its time, against a dependency on a C++
compiler at run time. Where compiling fails, the functions stay eager and
`compile_pointwise` says why.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def _silu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


EAGER = {"rms_norm": _rms_norm, "rotate": _rotate, "silu_gate": _silu_gate}
# Set by `compile_pointwise`; used where gradients are recorded (training's forward, whose
# backward is most of the saving). Without gradients (generation's prefills, reference
# log-probs) the eager functions run: every new combination of size-1 dimensions, gradient
# mode and `requires_grad` compiles anew, and past 8 of them a function stays eager for good.
COMPILED: dict[str, Any] = {}


def _pick(name: str) -> Any:
    return COMPILED.get(name, EAGER[name]) if torch.is_grad_enabled() else EAGER[name]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As the Llama/Qwen2 RMSNorm module: normalise in fp32, round to x's dtype, then scale."""
    shape = x.shape  # as rows of one matrix: a batch of one row compiles no variant of its own
    return _pick("rms_norm")(x.reshape(-1, shape[-1]), weight, eps).view(shape)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary position embedding of queries or keys [B, H, T, D] (``rotate_half`` layout)."""
    return _pick("rotate")(x, cos, sin)


def silu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The Llama MLP's ``act(gate(x)) * up(x)`` with SiLU."""
    shape = gate.shape
    flat = _pick("silu_gate")(gate.reshape(-1, shape[-1]), up.reshape(-1, shape[-1]))
    return flat.view(shape)


def norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` for an RMSNorm layer: through `rms_norm` where the module is the plain
    Llama/Qwen2/Mistral one, else its own forward."""
    plain = type(module).__name__ in ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")
    if plain and not (module._forward_hooks or module._forward_pre_hooks):
        return rms_norm(x, module.weight, module.variance_epsilon)
    return module(x)


def compile_pointwise(
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> str | None:
    """Compile the three functions for this process (`rms_norm`, `rotate` and `silu_gate` use
    them from then on where gradients are recorded); returns None, or why they stay eager. Each
    is tried forward and backward on a small input of the model's `dtype` and `device` first
    (CPU and CUDA compile through different backends), so that a missing compiler shows here,
    not mid-training."""
    if COMPILED:
        return None
    try:
        compiled = {name: torch.compile(f, dynamic=True) for name, f in EAGER.items()}
        like = dict(dtype=dtype, device=device)
        x = torch.randn(2, 3, 6, 8, requires_grad=True, **like)
        cos, sin = torch.randn(2, 1, 6, 8, **like), torch.randn(2, 1, 6, 8, **like)
        rows = compiled["rms_norm"](x.reshape(-1, 8), torch.ones(8, **like), 1e-6)
        out = rows.view(x.shape) + compiled["rotate"](x, cos, sin)
        compiled["silu_gate"](out.reshape(-1, 8), rows).sum().backward()
    except Exception as exc:  # noqa: BLE001 (any failure of the compiler stack: stay eager)
        message = str(exc).strip()
        return f"{type(exc).__name__}: {message.splitlines()[0][:200] if message else ''}"
    COMPILED.update(compiled)
    return None


def eager_pointwise() -> None:
    """Back to the eager functions everywhere (tests)."""
    COMPILED.clear()
