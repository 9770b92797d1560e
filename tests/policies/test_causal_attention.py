"""Blocked causal attention: the fused kernel's values and gradients, blocks of any size."""

import pytest
import torch
import torch.nn.functional as F

from tooltune.policies.causal_attention import causal_attention


def _inputs(dtype, B=2, H=6, heads=2, T=11, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, H, T, D), (B, heads, T, D), (B, heads, T, D))
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
            for s in shapes]  # fmt: skip


@pytest.mark.parametrize("block", [1, 4, 11, 64])
def test_gradients_are_exact_in_float64(block):
    """Blocks that split the sequence unevenly, one block, and blocks of one query: the
    backward is the derivative of the forward (finite differences), whatever the block."""
    q, k, v = _inputs(torch.float64, B=1, H=4, T=7, D=3)
    assert torch.autograd.gradcheck(lambda a, b, c: causal_attention(a, b, c, 0.5, block),
                                    (q, k, v))  # fmt: skip


@pytest.mark.parametrize("block", [3, 256])
def test_values_and_gradients_equal_the_fused_kernel(block):
    """fp32: what `scaled_dot_product_attention(is_causal=True, enable_gqa=True)` gives, to
    float rounding; bf16: the fp32 result to bf16's rounding."""
    weights = torch.linspace(-1, 1, 8)
    results = {}
    for name, dtype, fn in (
        ("fused", torch.float32, lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=8**-0.5, enable_gqa=True)),
        ("fp32", torch.float32, lambda q, k, v: causal_attention(q, k, v, 8**-0.5, block)),
        ("bf16", torch.bfloat16, lambda q, k, v: causal_attention(q, k, v, 8**-0.5, block)),
    ):  # fmt: skip
        q, k, v = _inputs(dtype)
        y = fn(q, k, v)
        (y.float() * weights).sum().backward()
        results[name] = [t.float() for t in (y, q.grad, k.grad, v.grad)]
    for ours, fused in zip(results["fp32"], results["fused"], strict=True):
        torch.testing.assert_close(ours, fused, rtol=1e-5, atol=1e-5)
    for half, full in zip(results["bf16"], results["fp32"], strict=True):
        torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)


def test_a_query_never_reads_a_later_key():
    """Changing the last position's key and value leaves every earlier output as it was."""
    q, k, v = (t.detach() for t in _inputs(torch.float32))
    before = causal_attention(q, k, v, 0.3, 4)
    k[:, :, -1], v[:, :, -1] = 100.0, -100.0
    after = causal_attention(q, k, v, 0.3, 4)
    assert torch.equal(after[:, :, :-1], before[:, :, :-1])
    assert not torch.equal(after[:, :, -1], before[:, :, -1])


def test_mismatched_shapes_are_a_clear_error():
    q, k, v = _inputs(torch.float32)
    with pytest.raises(ValueError, match="as many keys as queries"):
        causal_attention(q, k[:, :, :5], v[:, :, :5], 1.0)


def test_training_attention_takes_the_blocks_only_where_the_softmax_is_compiled(monkeypatch):
    """`llama_forward._attention` of a bf16 training pass: the fused kernel while the
    element-wise parts are eager, the blocked computation once they are compiled (here: the
    eager functions registered as compiled), the same values either way to bf16's rounding;
    passes that record no gradient keep the kernel."""
    from tooltune.policies import llama_forward, pointwise

    calls = []
    real = llama_forward.causal_attention
    monkeypatch.setattr(llama_forward, "causal_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))  # fmt: skip
    q, k, v = _inputs(torch.bfloat16, T=300)
    fused = llama_forward._attention(q, k, v, None, True, 8**-0.5, 0.0)
    assert not calls
    monkeypatch.setitem(pointwise.COMPILED, "attention_probs", pointwise.EAGER["attention_probs"])
    monkeypatch.setitem(pointwise.COMPILED, "attention_grad", pointwise.EAGER["attention_grad"])
    blocked = llama_forward._attention(q, k, v, None, True, 8**-0.5, 0.0)
    assert calls == [1]
    torch.testing.assert_close(blocked.float(), fused.float(), rtol=0.05, atol=0.05)
    with torch.no_grad():
        llama_forward._attention(q, k, v, None, True, 8**-0.5, 0.0)
    assert calls == [1]
