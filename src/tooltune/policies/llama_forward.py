"""A direct forward pass for Llama-family Hugging Face models (Llama, Qwen2, Mistral; SmolLM2
is a Llama).

The model's own modules run (embeddings, projections, norms, MLP, rotary tables, LM head; peft's
LoRA layers included), wired as the architecture wires them, but without the per-call machinery
of the `transformers` forward: mask builders, a ``DynamicCache`` that grows by ``torch.cat`` at
every token, output objects, keyword plumbing. On the small models a CPU trains, that machinery
is a large share of every call (a 0.5M-parameter Qwen2 decoding 8 rows: 2.6 ms a step through
``transformers``, 1.7 ms here). Decoding writes keys and values into a preallocated cache.

The outputs are the `transformers` forward's (tests/policies/test_llama_forward.py compares
logits with padding on either side, cached decoding, shared prefixes, gradients and LoRA).
``supports`` says no to anything else (other architectures, sliding-window attention), which
keeps the `transformers` path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tooltune.policies import pointwise
from tooltune.policies.kv_cache import (
    CACHE_MEMORY,
    CachedPrefix,
    attention_groups,
    select_cache_rows,
)
from tooltune.policies.lora_layers import Projection, plain_lora, project, projection, read_together
from tooltune.policies.sampling import common_beginning
from tooltune.policies.transformer import additive_mask, padded_causal_mask, token_positions

ARCHITECTURES = ("llama", "qwen2", "mistral")
KV = list[tuple[torch.Tensor, torch.Tensor]]
# A decoding step of a model whose weights total at most this many bytes runs its query, key
# and value projections as one product, and the MLP's gate and up as another (see
# `_stacked_weights`); larger models read their weights for longer than a call's overhead.
STACK_MAX_BYTES = 64 * 2**20
# Attention on the CPU with at most this many scores per head (queries x keys) in bf16/fp16 is
# computed eagerly, above it by the fused kernel (see `_attention`).
EAGER_MAX_SCORES = 64 * 1024


class Stacked(NamedTuple):
    """One layer's query/key/value projections as one matrix, and gate/up as another."""

    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None


def _unwrap(model: Any) -> tuple[Any, Any]:
    """(the `*ForCausalLM` module, its decoder), through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    return base, getattr(base, "model", None)


def supports(model: Any) -> bool:
    """Whether this module computes exactly what the model's own forward does."""
    base, decoder = _unwrap(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "model_type", None) not in ARCHITECTURES:
        return False
    sliding = getattr(config, "use_sliding_window", False) or (
        config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None
    )  # (Qwen2 configs carry a window size that only applies with use_sliding_window)
    if sliding:
        return False
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        return False
    parts = ("embed_tokens", "layers", "norm", "rotary_emb")
    return (
        decoder is not None and hasattr(base, "lm_head") and all(hasattr(decoder, p) for p in parts)
    )


class StaticKVCache:
    """Keys/values [layers, B, kv_heads, capacity, head_dim], written in place; ``length``
    positions are filled (rows aligned by left padding, as in the built-in model's cache).
    The memory is reused and uninitialised (`CACHE_MEMORY`): the first forward runs every
    prompt column, padding included, so nothing is read before it is written."""

    def __init__(self, model: Any, batch: int, capacity: int) -> None:
        base, decoder = _unwrap(model)
        attn = decoder.layers[0].self_attn
        heads = base.config.num_key_value_heads
        weight = decoder.embed_tokens.weight
        shape = (len(decoder.layers), batch, heads, capacity, attn.head_dim)
        self.k = CACHE_MEMORY.empty(self, shape, weight.device, weight.dtype)
        self.v = CACHE_MEMORY.empty(self, shape, weight.device, weight.dtype)
        self.length = 0
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None  # see `decode_step`
        self.stacked: list[Stacked] | None = None  # see `_stacked_weights`
        self.projections: list[dict[str, Projection]] | None = None  # see `_projections`
        # runs of rows that attend from their own first real column (`attention_groups`)
        self.groups: list[tuple[int, int, int]] | None = None

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def export_row(
        self, row: int, ids: list[int], columns: torch.Tensor | None = None
    ) -> CachedPrefix:
        """A copy of the positions of ``row`` that hold the tokens ``ids`` (what a later
        `prefill` continues): its last ``len(ids)`` filled ones, or those ``columns`` (where
        rejected guesses left holes: `sampling.generate_tokens`)."""
        n, end = len(ids), self.length
        if columns is None:
            columns = torch.arange(end - n, end, device=self.k.device)
        k, v = self.k[:, row].index_select(2, columns), self.v[:, row].index_select(2, columns)
        return CachedPrefix(ids=tuple(ids), k=k, v=v, copy_k=k.new_empty(n, 0), last_id=-1)

    def close_holes(self, mask: torch.Tensor, start: int) -> torch.Tensor:
        """Move each row's real positions from column ``start`` on (``mask`` [B, length]: 1 for
        real, 0 for holes) to end where the row with the most ends, so that the holes rejected
        guesses left stop taking room and attention reads; returns the mask after the move."""
        real = mask[:, start:].bool()
        counts = real.sum(dim=1).tolist()
        end = start + max(counts)
        moved = mask[:, :end].clone()
        moved[:, start:] = 0
        for row, count in enumerate(counts):
            source = real[row].nonzero()[:, 0] + start
            target = torch.arange(end - count, end, device=source.device)
            if not torch.equal(source, target):  # rows already ending there stay
                self.k[:, row, :, target] = self.k[:, row, :, source]
                self.v[:, row, :, target] = self.v[:, row, :, source]
            moved[row, end - count : end] = 1
        self.length = end
        return moved

    def select_rows(self, rows: torch.Tensor) -> StaticKVCache:
        n, k = self.length, self.k

        def new(shape):
            return CACHE_MEMORY.empty(self, shape, k.device, k.dtype)

        self.k, self.v = (
            select_cache_rows(k, rows, n, new=new),
            select_cache_rows(self.v, rows, n, new=new),
        )
        self.groups = None
        return self


def position_bytes(model: Any) -> int:
    """Bytes one position of one row takes in a `StaticKVCache` (keys and values, all layers):
    46 KB for SmolLM2-135M in fp32."""
    base, decoder = _unwrap(model)
    heads, head_dim = base.config.num_key_value_heads, decoder.layers[0].self_attn.head_dim
    size = decoder.embed_tokens.weight.element_size()
    return 2 * len(decoder.layers) * heads * head_dim * size


def hidden_states(
    model: Any,
    ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    cache: StaticKVCache | None = None,
    past_kv: KV | None = None,
    kv_out: KV | None = None,
    keep: int | None = None,
) -> torch.Tensor:
    """Final-norm hidden states [B, T, C] of ids [B, T] (only the last ``keep`` positions when
    given; 0 when only keys/values are wanted).

    ``attention_mask`` [B, past + T] marks real tokens (padding on either side); positions are
    counted per row from it. ``cache`` takes the new keys/values at ``cache.length``;
    ``past_kv`` (one (k, v) per layer) is a prefix kept in the autograd graph; ``kv_out``
    collects each layer's new keys/values. With ``keep`` the last layer computes everything
    after its keys/values for the kept positions only: a prompt's prefill needs one position
    there, a prefix scored for its keys none.
    """
    _, decoder = _unwrap(model)
    B, T = ids.shape
    past = cache.length if cache is not None else past_kv[0][0].shape[2] if past_kv else 0
    if cache is not None and past + T > cache.k.shape[3]:
        raise ValueError(f"KV cache overflow: {past + T} > capacity {cache.k.shape[3]}")
    if attention_mask is None:
        attention_mask = torch.ones((B, past + T), dtype=torch.long, device=ids.device)
    positions = token_positions(attention_mask, T)
    # No padding, or (all positions kept) padding only after each row's tokens: plain causal
    # attention is exact for every real token, and lets attention skip the masked half
    # (what padding positions compute is never used).
    ends_in_padding = bool((attention_mask.cummin(dim=1).values == attention_mask).all())
    causal = past == 0 and bool(attention_mask.all() or keep is None and ends_in_padding)
    x = decoder.embed_tokens(ids)
    mask = None if causal else additive_mask(padded_causal_mask(attention_mask, T), x.dtype)
    cos, sin = decoder.rotary_emb(x, positions)
    cos, sin = cos[:, None], sin[:, None]
    last = len(decoder.layers) - 1
    for i, layer in enumerate(decoder.layers):
        attn = layer.self_attn
        h = pointwise.norm(layer.input_layernorm, x)
        q, k, v = read_together(h, (attn.q_proj, attn.k_proj, attn.v_proj))
        k = k.view(B, T, -1, attn.head_dim).transpose(1, 2)
        v = v.view(B, T, -1, attn.head_dim).transpose(1, 2)
        k = pointwise.rotate(k, cos, sin)
        if kv_out is not None:
            kv_out.append((k, v))
        if past_kv:
            k = torch.cat([past_kv[i][0], k], dim=2)
            v = torch.cat([past_kv[i][1], v], dim=2)
        elif cache is not None:
            cache.k[i, :, :, past : past + T] = k
            cache.v[i, :, :, past : past + T] = v
            k, v = cache.k[i, :, :, : past + T], cache.v[i, :, :, : past + T]
        if i == last and keep is not None and keep < x.shape[1]:
            if keep == 0:
                x = x[:, :0]
                break
            x, q, cos, sin = x[:, -keep:], q[:, -keep:], cos[:, :, -keep:], sin[:, :, -keep:]
            if not (causal and keep == 1):  # one query sees every key: no mask
                mask = additive_mask(padded_causal_mask(attention_mask, keep), x.dtype)
            causal = False
        q = q.view(B, x.shape[1], -1, attn.head_dim).transpose(1, 2)
        q = pointwise.rotate(q, cos, sin)
        dropout = attn.attention_dropout if model.training else 0.0
        y = _attention(q, k, v, mask, causal and T > 1, attn.scaling, dropout)
        x = x + read_together(y.transpose(1, 2).reshape(B, x.shape[1], -1), (attn.o_proj,))[0]
        x = x + _mlp(layer.mlp, pointwise.norm(layer.post_attention_layernorm, x))
    if cache is not None:
        cache.length += T
    return pointwise.norm(decoder.norm, x)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               causal: bool, scale: float, dropout: float) -> torch.Tensor:  # fmt: skip
    """Attention of queries [B, H, T, D] to keys/values [B, H_kv, S, D] (H a multiple of H_kv).

    Short sequences in bf16/fp16 (at most `EAGER_MAX_SCORES` scores per head) are computed as
    `transformers`' eager attention computes them: scores of the half-precision product, softmax
    in fp32, probabilities rounded back; each key/value head's query heads laid along the query
    axis. There the fused kernel's backward is the slow part: SmolLM2-135M's heads, bf16, 2
    threads, forward and backward of 8 rows of 85 queries over 330 keys took 24.5 ms fused and
    15 ms eager, 2 rows of 128 causal 5.8 against 1.8 ms, while at 4 rows of 600 the fused
    kernel is twice as fast (96 against 182 ms). The rest, fp32, dropout and every device but
    the CPU (those timings are the CPU's) use the kernel."""
    T, S = q.shape[2], k.shape[2]
    fused = q.device.type != "cpu" or q.dtype == torch.float32 or dropout > 0
    if fused or T * S > EAGER_MAX_SCORES:
        group = q.shape[1] // k.shape[1]
        if mask is not None and group > 1 and q.device.type == "cuda":
            # CUDA's memory-efficient kernel, the fused one that takes a mask, takes no grouped
            # heads (the math kernel would run): repeat the key/value heads, as transformers does
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=scale, dropout_p=dropout,
            enable_gqa=True,
        )  # fmt: skip
    B, H, _, D = q.shape
    heads = k.shape[1]
    scores = torch.matmul(q.reshape(B, heads, H // heads * T, D), k.transpose(-1, -2))
    scores = scores.float().view(B, heads, H // heads, T, S) * scale
    if causal:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T).logical_not()
        scores = scores.masked_fill(mask, float("-inf"))
    elif mask is not None:  # [B, 1, T, S]
        scores = scores + mask[:, :, None]
    probs = torch.softmax(scores, dim=-1).to(v.dtype).view(B, heads, H // heads * T, S)
    return torch.matmul(probs, v).view(B, H, T, D)


def _mlp(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    """The Llama MLP, ``down(act(gate(x)) * up(x))``, with gate and up read together."""
    parts = ("gate_proj", "up_proj", "down_proj", "act_fn")
    if mlp._forward_hooks or mlp._forward_pre_hooks or not all(hasattr(mlp, n) for n in parts):
        return mlp(x)
    gate, up = read_together(x, (mlp.gate_proj, mlp.up_proj))
    if type(mlp.act_fn).__name__ in ("SiLU", "SiLUActivation"):
        return read_together(pointwise.silu_gate(gate, up), (mlp.down_proj,))[0]
    return read_together(mlp.act_fn(gate) * up, (mlp.down_proj,))[0]


def prefix_kv(
    model: Any, ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[KV, torch.Tensor]:
    """Keys/values of left-padded prefixes [P, S] (one (k, v) per layer, in the autograd
    graph) and the mask [P, S'] of their positions, for continuations to attend to.

    Prefixes that begin alike (the system prompt and tool listing every task of a batch shares)
    run that beginning once, as one row whose keys/values every prefix then reads, and only
    their own rest separately (left-padded after the shared part, which the mask says);
    gradients of the shared part sum over the prefixes that read it. SmolLM2-135M, 4 prompts
    of a 300-token system prompt and 20 tokens of their own, 4 continuations of 40 tokens
    each: scoring without gradients 4.6 -> 3.0 s on a 2-core CPU, the same log-probs. The
    GRPO benchmark's 2-layer 0.5M Qwen2 (4 prompts of ~189 tokens sharing 173): with
    gradients 106 -> 95 ms; with 2 prompts no change (its prefix pass is half the model)."""
    P, S = ids.shape
    lengths = [int(n) for n in attention_mask.sum(dim=1).tolist()]
    every = ids.tolist()  # one copy to the host, not one a row
    rows = [every[p][S - n :] for p, n in enumerate(lengths)]
    common = common_beginning(rows)
    if not common or common + P * (max(lengths) - common) >= P * S:
        kv: KV = []
        hidden_states(model, ids, attention_mask, kv_out=kv, keep=0)
        return kv, attention_mask
    shared: KV = []
    hidden_states(model, ids[:1, S - lengths[0] : S - lengths[0] + common], kv_out=shared, keep=0)
    width = max(lengths) - common
    rest = ids.new_zeros((P, width))  # any id: padding is masked
    mask = attention_mask.new_zeros((P, common + width))
    mask[:, :common] = 1
    for p, row in enumerate(rows):
        n = len(row) - common
        rest[p, width - n :] = torch.tensor(row[common:], dtype=ids.dtype, device=ids.device)
        mask[p, common + width - n :] = 1
    past = [(k.expand(P, -1, -1, -1), v.expand(P, -1, -1, -1)) for k, v in shared]
    own: KV = []
    hidden_states(model, rest, mask, past_kv=past, kv_out=own, keep=0)
    kv = [
        (torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2))
        for (pk, pv), (k, v) in zip(past, own, strict=True)
    ]
    return kv, mask


@torch.no_grad()
def run_prefix(model: Any, ids: list[int]) -> CachedPrefix:
    """The keys/values of ``ids`` run as one row: a beginning that several prompts of a
    `prefill` continue (``sampling.common_beginning``)."""
    part = StaticKVCache(model, 1, len(ids))
    hidden_states(model, torch.tensor([ids], device=part.k.device), cache=part, keep=0)
    return part.export_row(0, ids)


@torch.no_grad()
def prefill(
    model: Any,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: StaticKVCache,
    cached: dict[int, CachedPrefix],
) -> torch.Tensor:
    """Fill an empty cache with left-padded prompts [B, W]; logits [B, vocab] of each row's
    last token. A row in ``cached`` runs only the rest of its prompt after the stored keys and
    values of its beginning (an episode's next turn after the one a previous call generated, or
    the beginning the prompts share: `run_prefix`).

    Rows are grouped by the tokens they run, rounded up to a power of two (a row with fewer new
    tokens runs the tail of its prefix again: the same keys and values, up to float rounding);
    a row without a prefix runs its whole prompt. Each group runs in a cache of its own, its
    prefixes right-aligned, and lands right-aligned in ``cache``, where a padded pass over the
    whole prompts would have put it. Padding is zeroed: attention reads it (masked).
    ``cached`` is emptied as its prefixes are copied, so that a row's kept keys and values go
    back as soon as they are in the cache, not after the whole batch's are."""
    if cache.length != 0:
        raise ValueError("prefill needs an empty cache")
    B, W = ids.shape
    lengths = [int(n) for n in attention_mask.sum(dim=1).tolist()]
    groups: dict[int, list[int]] = {}
    for row, n in enumerate(lengths):
        new = n - len(cached[row].ids) if row in cached else n
        groups.setdefault(min(1 << (new - 1).bit_length(), W), []).append(row)
    out = None
    for w, group in groups.items():
        rows = torch.tensor(group, device=ids.device)
        used = [max(0, lengths[r] - w) for r in group]  # prefix positions each row keeps
        width = max(used)
        part = StaticKVCache(model, len(group), width + w)
        mask = torch.zeros((len(group), width + w), dtype=torch.long, device=ids.device)
        mask[:, width:] = attention_mask[rows, W - w :]
        for g, (row, c) in enumerate(zip(group, used, strict=True)):
            prefix = cached.pop(row, None)  # copied: its memory can go (see the docstring)
            if c:
                part.k[:, g, :, width - c : width] = prefix.k[:, :, :c]
                part.v[:, g, :, width - c : width] = prefix.v[:, :, :c]
                mask[g, width - c : width] = 1
            part.k[:, g, :, : width - c] = 0
            part.v[:, g, :, : width - c] = 0
        part.length = width
        last = logits(model, hidden_states(model, ids[rows, W - w :], mask, part, keep=1)[:, -1])
        if out is None:
            out = last.new_empty(B, last.shape[-1])
        out[rows] = last
        n = width + w
        for g, row in enumerate(group):  # row by row: half the time of one indexed assignment
            cache.k[:, row, :, W - n : W] = part.k[:, g]
            cache.v[:, row, :, W - n : W] = part.v[:, g]
            cache.k[:, row, :, : W - n] = 0
            cache.v[:, row, :, : W - n] = 0
    cache.length = W
    return out


def decodes_plainly(model: Any) -> bool:
    """Whether `decode_step` may run the model: every module a step runs is a plain one
    (`nn.Linear`, an RMSNorm, SiLU, or peft's plain LoRA layer over an `nn.Linear`: see
    `lora_layers.plain_lora`) with no forward hooks (they would not run), the model is in eval
    mode (no dropout), the frozen weights share one dtype (fp32, or bf16/fp16 as frozen or fully
    fine-tuned weights compute: `_norm` rounds as the module does), and the rotary angles depend
    on the position only (not on the longest one seen, as dynamic and long-rope scalings do)."""
    base, decoder = _unwrap(model)
    if model.training or not supports(model):
        return False
    if base is not model and not all(
        str(getattr(c.peft_type, "value", c.peft_type)) == "LORA"
        for c in getattr(model, "peft_config", {None: None}).values()
        if c is not None
    ):
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return False
    rope_type = getattr(decoder.rotary_emb, "rope_type", None)
    if not isinstance(rope_type, str) or "dynamic" in rope_type or rope_type == "longrope":
        return False
    if type(base.lm_head) is not nn.Linear or type(decoder.embed_tokens) is not nn.Embedding:
        return False
    dtype = decoder.embed_tokens.weight.dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if any(p.dtype != dtype for n, p in model.named_parameters() if "lora_" not in n):
        return False
    norms = [decoder.norm]
    for layer in decoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
        linears += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(type(m) is not nn.Linear and not plain_lora(m) for m in linears):
            return False
        if type(mlp.act_fn).__name__ not in ("SiLU", "SiLUActivation"):
            return False
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
    return all(
        type(n).__name__.endswith("RMSNorm") and hasattr(n, "variance_epsilon") for n in norms
    )


def _projections(model: Any, cache: StaticKVCache) -> list[dict[str, Projection]]:
    """Per layer, each projection's weights and adapters, looked up once per cache."""
    if cache.projections is None:
        _, decoder = _unwrap(model)
        cache.projections = [
            {name: projection(getattr(part, name))
             for part, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                                 (layer.mlp, ("gate_proj", "up_proj", "down_proj")))
             for name in names}
            for layer in decoder.layers
        ]  # fmt: skip
    return cache.projections


def _norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, module.weight.shape, module.weight, module.variance_epsilon)
    # as the Llama/Qwen2 RMSNorm module: normalise in fp32, round, then scale
    y = F.rms_norm(x.float(), module.weight.shape, None, module.variance_epsilon)
    return module.weight * y.to(x.dtype)


def _rope_tables(decoder: Any, cache: StaticKVCache) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [capacity, head_dim] of every position the cache can hold, sin with the
    first half negated: ``x * cos + x.roll(half) * sin`` is ``x * cos + rotate_half(x) * sin``
    (a negation is exact, so the products are the same numbers)."""
    if cache.rope is None:
        weight = decoder.embed_tokens.weight
        positions = torch.arange(cache.k.shape[3], device=weight.device)[None]
        cos, sin = decoder.rotary_emb(weight[:1, None], positions)
        half = sin.shape[-1] // 2
        cache.rope = cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
    return cache.rope


def _stack(modules: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([m.weight for m in modules])
    if all(m.bias is None for m in modules):
        return weight, None
    zero = weight.new_zeros
    return weight, torch.cat([zero(m.out_features) if m.bias is None else m.bias for m in modules])


def _stacked_weights(model: Any, cache: StaticKVCache) -> list[Stacked] | None:
    """Per layer, the stacked projections a small model's decoding step runs (three matrix
    products fewer a layer: on a 2-core CPU a product of 8 rows and a 128-wide layer costs
    ~15-35 us whatever its width up to a few hundred). Stacked once per cache, which lives
    for one `generate` call: the weights cannot change while it decodes. None for models over
    `STACK_MAX_BYTES`, whose copies would cost memory for no measurable gain."""
    if cache.stacked is None:
        _, decoder = _unwrap(model)
        cache.stacked = []  # stays empty for a large or adapted model: not checked again
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        adapted = any(p.adapters for layer in _projections(model, cache) for p in layer.values())
        if size <= STACK_MAX_BYTES and not adapted:
            for layer in decoder.layers:
                attn, mlp = layer.self_attn, layer.mlp
                qkv = _stack([attn.q_proj, attn.k_proj, attn.v_proj])
                cache.stacked.append(Stacked(*qkv, *_stack([mlp.gate_proj, mlp.up_proj])))
    return cache.stacked or None


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
            scale: float) -> torch.Tensor:  # fmt: skip
    """One decoding step's attention, the fused kernel in every dtype. Eager products in bf16
    looked faster alone (32 rows, 300 cached positions: 0.93 against 1.24 ms) but copy the
    cache's keys and values first, as they are strided across rows: a step of SmolLM2-135M
    with 32 rows of 1,000 cached positions took 338-453 ms eager against 127-146 ms fused on
    a 2-core Intel Xeon (bf16; a never-written cache hides this, its pages all the zero page)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def decode_step(
    model: Any, ids: torch.Tensor, attention_mask: torch.Tensor, cache: StaticKVCache
) -> torch.Tensor:
    """Logits [B, vocab] of one new token per row (``ids[:, -1]``) after the cached ones."""
    return decode_tokens(model, ids[:, -1:], attention_mask, cache)[:, -1]


@torch.inference_mode()  # no version counters or view tracking: ~9% of a 0.5M model's step
def decode_tokens(
    model: Any, ids: torch.Tensor, attention_mask: torch.Tensor, cache: StaticKVCache
) -> torch.Tensor:
    """Logits [B, T, vocab] of new tokens ids [B, T] after the cached ones (T is 1 when
    decoding, a few when checking guessed tokens: `sampling.generate_tokens`): what
    ``logits(model, hidden_states(model, ids, attention_mask, cache))`` gives, for a
    model that `decodes_plainly`. The modules' functions run directly on their weights (no
    module calls, hooks or decorators), norms as one `F.rms_norm`, the rotary angles come from a
    table made once per cache, queries and keys rotate together, and no mask is built for one
    token a row without padding. On the small models a CPU trains, that per-call Python is most
    of a step: 8 rows of a 0.5M Qwen2 take 1.3-1.9 against 2.0-2.7 ms a step on a 2-core CPU
    (162 against 184 tensor operations); stacked projections (`_stacked_weights`) take another
    8-11% off. LoRA adapters run as the full forward runs them (`lora_layers.project`; through the
    modules, a GRPO step's generation of SmolLM2 with LoRA took 6.3 s in
    benchmarks/smollm2_vs_trl.py, 5.0 through here, on a 2-core CPU).
    The logits, rotary tables and stacked weights it makes are inference tensors: read them
    anywhere, but change them in place only inside `torch.inference_mode` (the cache's keys
    and values are ordinary tensors it writes into)."""
    base, decoder = _unwrap(model)
    B, T = ids.shape
    past = cache.length
    if past + T > cache.k.shape[3]:
        raise ValueError(f"KV cache overflow: {past + T} > capacity {cache.k.shape[3]}")
    cos_table, sin_table = _rope_tables(decoder, cache)
    positions = token_positions(attention_mask, T)
    cos, sin = cos_table[positions][:, :, None], sin_table[positions][:, :, None]
    half = cos.shape[-1] // 2
    padded = not bool(attention_mask.all())
    x = F.embedding(ids, decoder.embed_tokens.weight).view(B * T, -1)
    mask = None
    if padded or T > 1:
        mask = additive_mask(padded_causal_mask(attention_mask, T), x.dtype)  # [B, 1, T, S]
    if padded and cache.groups is None:  # left padding: a row's first real column is its first 1
        cache.groups = attention_groups(attention_mask.int().argmax(dim=1).tolist(), past + T)
    groups = cache.groups if padded and len(cache.groups) > 1 else [(0, B, 0)]
    projections = _projections(model, cache)
    stacked = _stacked_weights(model, cache)
    kv_heads = cache.k.shape[2]
    for i, layer in enumerate(decoder.layers):
        attn = layer.self_attn
        h = _norm(layer.input_layernorm, x)
        proj = projections[i]
        if stacked is not None:
            qkv = F.linear(h, stacked[i].qkv, stacked[i].qkv_bias)
        else:
            qkv = torch.cat([project(h, proj[n]) for n in ("q_proj", "k_proj", "v_proj")], -1)
        qkv = qkv.view(B, T, -1, attn.head_dim)  # [B, T, heads + 2 * kv_heads, head_dim]
        heads = qkv.shape[2] - 2 * kv_heads
        group = heads // kv_heads
        qk = qkv[:, :, : heads + kv_heads]
        qk = qk * cos + qk.roll(half, -1) * sin
        cache.k[i, :, :, past : past + T] = qk[:, :, heads:].transpose(1, 2)
        cache.v[i, :, :, past : past + T] = qkv[:, :, heads + kv_heads :].transpose(1, 2)
        # Each key/value head's query heads sit in the query axis: [B, kv_heads, group * T,
        # head_dim], the grouping `enable_gqa` means (head h reads key/value head h // group).
        # Same result; in bf16 on CPU `enable_gqa` took 5.7 ms a call here against 0.8 (batch
        # 32, 300 positions, one token: benchmarks/smollm2_vs_trl.py).
        q = qk[:, :, :heads].view(B, T, kv_heads, group, -1).permute(0, 2, 3, 1, 4)
        q = q.reshape(B, kv_heads, group * T, -1)
        if i == 0 and mask is not None and group > 1 and T > 1:  # the same mask for each head
            mask = mask[:, :, None].expand(-1, -1, group, -1, -1).reshape(B, 1, group * T, -1)
        k, v = cache.k[i, :, :, : past + T], cache.v[i, :, :, : past + T]
        # each run of rows reads its keys from its own first real column, not the padding
        # before it (`attention_groups`): 42% of the positions an evaluation read were padding
        y = torch.cat([
            _attend(q[a:b], k[a:b, :, c:], v[a:b, :, c:],
                    None if mask is None else mask[a:b, :, :, c:], attn.scaling)
            for a, b, c in groups
        ]) if len(groups) > 1 else _attend(q, k, v, mask, attn.scaling)  # fmt: skip
        y = y.view(B, kv_heads, group, T, -1).permute(0, 3, 1, 2, 4).reshape(B * T, -1)
        x = x + project(y, proj["o_proj"])
        h = _norm(layer.post_attention_layernorm, x)
        if stacked is not None:
            gate, up = F.linear(h, stacked[i].gate_up, stacked[i].gate_up_bias).chunk(2, dim=-1)
        else:
            gate, up = project(h, proj["gate_proj"]), project(h, proj["up_proj"])
        x = x + project(F.silu(gate) * up, proj["down_proj"])
    cache.length += T
    x = _norm(decoder.norm, x)
    return F.linear(x, base.lm_head.weight, base.lm_head.bias).view(B, T, -1)


def logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    base, _ = _unwrap(model)
    return base.lm_head(hidden)
