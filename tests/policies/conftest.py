import pytest
import torch

from tooltune.chat_format import render_prompt

QUESTION_TEXTS = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    '<tool_call>{"name": "search", "arguments": {"query": "capital of France"}}</tool_call>',
    "<think>I should look this up.</think> The answer is 42.",
    render_prompt([{"role": "user", "content": "What is 2 + 2?"}]) + "4<|im_end|>",
] * 10


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return list(QUESTION_TEXTS)


@pytest.fixture(scope="session", params=[False, True], ids=["plain", "copy_head"])
def tiny_policy(request):
    """An untrained tiny model; shared, so tests must not train it (clone it first).

    The default initialisation gives near-uniform logits and greedy decoding then repeats one
    token whatever the input, which would let position or padding bugs go unnoticed. Larger
    random weights make every next token depend sharply on the whole prefix."""
    import torch

    from tooltune.policies.builtin import BuiltinPolicy

    policy = BuiltinPolicy.create(
        QUESTION_TEXTS,
        size="tiny",
        seed=0,
        vocab_size=512,
        max_seq_len=256,
        copy_head=request.param,
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if p.dim() == 2:
                std = 0.1 if name == "embed.weight" else 2.0 * p.shape[1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        if request.param:  # mostly the vocabulary: a copy head alone repeats a short prompt
            policy.model.copy_gate.bias.fill_(3.0)
            policy.model.copy_match.fill_(0.2)
    return policy


@pytest.fixture
def stale_cache_memory():
    """Fills the KV cache memory pool with NaN: `poison(new_cache)` makes caches with
    `new_cache()`, fills their keys and values with NaN and drops them, so that the next caches
    start on stale numbers: any position attention reads without writing it first shows."""
    import gc

    from tooltune.policies.kv_cache import CACHE_MEMORY

    def poison(new_cache) -> None:
        CACHE_MEMORY.free.clear()
        stale = [new_cache() for _ in range(CACHE_MEMORY.keep)]
        for cache in stale:
            for name in ("k", "v", "copy_k"):
                if hasattr(cache, name):
                    getattr(cache, name).fill_(float("nan"))
        del stale, cache
        gc.collect()
        assert len(CACHE_MEMORY.free) == CACHE_MEMORY.keep

    yield poison
    CACHE_MEMORY.free.clear()  # later tests start on fresh memory


def assert_same_greedy(a, b, atol: float = 1e-4) -> None:
    """Greedy completions of the same prompts by two computations that are equal in exact
    arithmetic (batched or alone, cached or recomputed, grouped heads or full): the same tokens,
    their log-probs within `atol`. Up to a near tie: where the two best tokens' log-probs are
    closer than rounding, the summation order (so the path, and the CPU's kernels) decides which
    is the argmax, and the rows may go on differently from there. A row may differ only at such
    a tie (both choices' log-probs within `atol`), and is compared up to it.
    Rows are completions, or token records (`ids`, `mask`: a row may then differ only at a
    token both wrote)."""
    assert len(a) == len(b)
    for row, (x, y) in enumerate(zip(a, b, strict=True)):
        xs, ys = (r.token_ids if hasattr(r, "token_ids") else r.ids for r in (x, y))
        n = 0
        while n < min(len(xs), len(ys)) and xs[n] == ys[n]:
            n += 1
        got, want = torch.tensor(x.logprobs[:n]), torch.tensor(y.logprobs[:n])
        torch.testing.assert_close(got, want, rtol=0, atol=atol, msg=f"row {row}")
        if hasattr(x, "mask"):
            assert x.mask[:n] == y.mask[:n], f"row {row}"
        if n < max(len(xs), len(ys)):
            assert n < min(len(xs), len(ys)), f"row {row}: one ended at token {n}"
            if hasattr(x, "mask"):
                assert x.mask[n] == y.mask[n] == 1, f"row {row}: token {n} differs, not written"
            gap = abs(x.logprobs[n] - y.logprobs[n])
            assert gap <= atol, f"row {row}: token {n} differs ({gap:.2e} apart), not at a tie"


@pytest.fixture(scope="session")
def same_greedy():
    """`assert_same_greedy`, as a fixture (test modules are imported by path)."""
    return assert_same_greedy
