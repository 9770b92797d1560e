"""Causal self-attention for training on a CPU: half-precision products in blocks of queries.

PyTorch's fused CPU kernel (`scaled_dot_product_attention`) computes its backward far below the
matrix units' speed: on a 2-core Intel Xeon with AMX attention was 40% of a SmolLM2 SFT step
(benchmarks/RESULTS.md). Here each block of queries is two bf16 matrix products with a softmax
in fp32 between them, reading only the keys at or before the block's last query, so the masked
half of the scores is never computed. The softmax and its backward are element-wise passes
(`pointwise.attention_probs`, `attention_grad`) that `torch.compile` fuses into one loop each;
eager, they are slower than the fused kernel, so `llama_forward` uses this only where they
are compiled (`pipeline.torch_compile`). The grouped key/value heads (GQA) are not copied: the
query heads that share a key/value head lie along the query axis of one product.

The backward reuses each block's probabilities where they take at most `KEEP_PROBS_BYTES` in
all, else recomputes them from the saved log-sum-exp (as flash attention does), so a long row
keeps one float a query, not its scores.
"""

from __future__ import annotations

import torch

from tooltune.policies import pointwise

BLOCK = 128  # queries a product (64-256 within 10% on SmolLM2's heads; 128 the best at 770)
KEEP_PROBS_BYTES = 32 * 2**20  # a layer's probabilities kept for the backward, at most


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, block: int = BLOCK
) -> torch.Tensor:
    """Attention of queries [B, H, T, D] to keys and values [B, H_kv, T, D] of the same
    positions, each query seeing the keys up to its own (H a multiple of H_kv)."""
    if q.shape[2] != k.shape[2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"causal_attention needs as many keys as queries and whole head "
                         f"groups; got q {tuple(q.shape)}, k {tuple(k.shape)}")  # fmt: skip
    return _CausalAttention.apply(q, k, v, scale, block)


def _rows(x: torch.Tensor, kv_heads: int, start: int, end: int) -> torch.Tensor:
    """Queries start..end of every head of `x` [B, H, T, D] as [B, H_kv, g * n, D]: the g
    heads sharing a key/value head one after the other along the query axis."""
    B, H, T, D = x.shape
    return x.view(B, kv_heads, H // kv_heads, T, D)[:, :, :, start:end].reshape(B, kv_heads, -1, D)


def _probs(q: torch.Tensor, k: torch.Tensor, start: int, end: int, scale: float):
    """(probabilities, log-sum-exp) of a block's queries over keys 0..end-1."""
    scores = torch.matmul(_rows(q, k.shape[1], start, end), k[:, :, :end].transpose(-1, -2))
    return pointwise.compiled("attention_probs")(scores, scale, start)


def _blocks(T: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(T, start + block)) for start in range(0, T, block)]


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, block):  # type: ignore[override]
        B, H, T, D = q.shape
        kv_heads, groups = k.shape[1], H // k.shape[1]
        out = q.new_empty(B, kv_heads, groups, T, D)
        lse = q.new_empty(B, kv_heads, groups, T, dtype=torch.promote_types(q.dtype, torch.float32))
        blocks = _blocks(T, block)
        keep = B * H * sum(block_end * (block_end - start) for start, block_end in blocks)
        kept = []
        for start, end in blocks:
            probs, norm = _probs(q, k, start, end, scale)
            out[:, :, :, start:end] = torch.matmul(probs, v[:, :, :end]).view(
                B, kv_heads, groups, end - start, D
            )
            lse[:, :, :, start:end] = norm.view(B, kv_heads, groups, end - start)
            if keep * probs.element_size() <= KEEP_PROBS_BYTES:
                kept.append(probs)
        out = out.view(B, H, T, D)
        ctx.save_for_backward(q, k, v, out, lse, *kept)
        ctx.scale, ctx.block = scale, block
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out, lse, *kept = ctx.saved_tensors
        scale = ctx.scale
        B, H, T, D = q.shape
        kv_heads, groups = k.shape[1], H // k.shape[1]
        grad_out = grad_out.contiguous()
        # softmax's backward needs, per query, the sum over keys of dP * P: that is dO . O
        delta = (grad_out.to(lse.dtype) * out.to(lse.dtype)).sum(-1).view(B, kv_heads, groups, T)
        dq = q.new_empty(B, kv_heads, groups, T, D)
        dk = torch.zeros(B, kv_heads, T, D, dtype=lse.dtype, device=q.device)
        dv = torch.zeros_like(dk)
        for i, (start, end) in enumerate(_blocks(T, ctx.block)):
            probs = kept[i] if kept else _probs(q, k, start, end, scale)[0]
            grad_rows = _rows(grad_out, kv_heads, start, end)
            dv[:, :, :end] += torch.matmul(probs.transpose(-1, -2), grad_rows)
            grad_probs = torch.matmul(grad_rows, v[:, :, :end].transpose(-1, -2))
            row_delta = delta[:, :, :, start:end].reshape(B, kv_heads, -1, 1)
            ds = pointwise.compiled("attention_grad")(grad_probs, probs, row_delta, scale)
            dq[:, :, :, start:end] = torch.matmul(ds, k[:, :, :end]).view(
                B, kv_heads, groups, end - start, D
            )
            dk[:, :, :end] += torch.matmul(ds.transpose(-1, -2), _rows(q, kv_heads, start, end))
        return dq.view(B, H, T, D), dk.to(k.dtype), dv.to(v.dtype), None, None
