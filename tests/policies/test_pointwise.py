"""The element-wise parts of Llama-family layers: eager as the modules compute them, compiled
close to eager, and eager where compiling fails."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers.models.llama import modeling_llama  # noqa: E402

from tooltune.policies import llama_forward, pointwise  # noqa: E402


@pytest.fixture
def eager_after():
    yield
    pointwise.eager_pointwise()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_eager_functions_compute_what_the_modules_compute(dtype):
    torch.manual_seed(0)
    norm = modeling_llama.LlamaRMSNorm(16, eps=1e-5)
    norm.weight.data.uniform_(0.5, 1.5)
    norm = norm.to(dtype)
    x = torch.randn(2, 5, 16, dtype=dtype)
    assert torch.equal(pointwise.norm(norm, x), norm(x))
    q, cos, sin = torch.randn(2, 3, 5, 8, dtype=dtype), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    cos, sin = cos.to(dtype), sin.to(dtype)
    expected, _ = modeling_llama.apply_rotary_pos_emb(q, q, cos, sin)
    assert torch.equal(pointwise.rotate(q, cos[:, None], sin[:, None]), expected)
    gate, up = torch.randn(4, 6, dtype=dtype), torch.randn(4, 6, dtype=dtype)
    assert torch.equal(pointwise.silu_gate(gate, up), torch.nn.SiLU()(gate) * up)
    hooked = modeling_llama.LlamaRMSNorm(16)
    hooked.register_forward_hook(lambda module, args, out: out * 0)
    assert not pointwise.norm(hooked, x.float()).any()  # a hooked module runs its own forward


def test_compiled_forward_and_gradients_match_eager(eager_after):
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0

    def run():
        model.zero_grad()
        hidden = llama_forward.hidden_states(model, ids, mask)
        (hidden * mask[..., None]).pow(2).sum().backward()
        return hidden.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager = run()
    why = pointwise.compile_pointwise()
    if why is not None:
        pytest.skip(f"torch.compile does not work here: {why}")
    assert set(pointwise.COMPILED) == set(pointwise.EAGER)
    with torch.no_grad():  # generation's passes stay eager (no variants compiled for them)
        assert pointwise._pick("rotate") is pointwise.EAGER["rotate"]
    assert pointwise._pick("rotate") is pointwise.COMPILED["rotate"]
    compiled = run()
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(compiled[1], eager[1], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4)


def test_a_failing_compiler_leaves_the_functions_eager(monkeypatch, eager_after):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    assert pointwise.compile_pointwise() == "RuntimeError: no C++ compiler found"
    assert not pointwise.COMPILED and pointwise._pick("rms_norm") is pointwise.EAGER["rms_norm"]
