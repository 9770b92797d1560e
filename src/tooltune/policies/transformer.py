"""A small decoder-only transformer (its KV cache and prefill are in ``kv_cache``).

RoPE positions, RMSNorm, SwiGLU MLP, tied input/output embeddings and causal attention through
``F.scaled_dot_product_attention``. The model takes a 2-D ``attention_mask`` (1 = real token,
0 = padding) that covers the cached keys plus the new tokens, so one batch can hold prompts of
different lengths (left padding during generation, right padding during training); positions are
counted per row from that mask, so a padded row computes exactly what it would alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tooltune.policies.kv_cache import KVCache, attention_groups


@dataclass
class TransformerConfig:
    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    # Key/value heads, each shared by n_heads / n_kv_heads query heads (grouped-query attention,
    # Ainslie et al. 2023); None: one per query head. A decoding step of a large batch mostly
    # reads cached keys and values, so fewer of them make batched rollouts faster.
    n_kv_heads: int | None = None
    d_ff: int = 384
    max_seq_len: int = 2048
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # Add a learned projection of the previous token's embedding to each token's input, so one
    # attention layer can match "the token after an earlier X" (an induction head). A small model
    # then learns to copy names and values from the prompt in hundreds of steps, not thousands.
    prev_token_mix: bool = True
    # A copy head (pointer-generator, See et al. 2017): the output distribution mixes the
    # vocabulary softmax with a pointer over the context that, like an induction head, writes
    # the token that followed the position it points at; so continuing a name or a number seen
    # in the question or a tool result is one pointing step. Attention to the right position
    # gets a gradient from the first step, instead of waiting for an induction circuit to form.
    # Three additions help it further: a learned bonus for each earlier position whose
    # preceding tokens equal the query's (so "7779" continues after "777" from the right "7"),
    # a key that also sees the token its position would write (so the pointer can find "a
    # name", not "the word before a name"), and a gate that sees the token the pointer
    # proposes (so a copied name can end where the source goes on with "'s").
    copy_head: bool = False
    # The token that opens a chat turn: the copy head then points only at earlier turns (the
    # question, tool results, its own earlier turns), never into the turn being written, where
    # matching its own last tokens would repeat them in a loop. -1: no turns.
    turn_start_id: int = -1

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("the head size must be even for rotary embeddings")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )


COPY_MATCH = 4  # how many preceding tokens the copy head's match bonus compares


# Named sizes; parameter counts are for a 4096-token vocabulary (embeddings counted once, tied).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=1, d_ff=384),  # ~1.3M
    "small": dict(d_model=256, n_layers=6, n_heads=4, d_ff=768),  # ~6.1M
    "base": dict(d_model=512, n_layers=8, n_heads=8, d_ff=1536),  # ~29M
    "large": dict(d_model=640, n_layers=10, n_heads=10, d_ff=1728),  # ~52M
}


def config_for_size(size: str, vocab_size: int, **overrides) -> TransformerConfig:
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
    return TransformerConfig(vocab_size=vocab_size, **{**MODEL_SIZES[size], **overrides})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.float().pow(2).mean(-1, keepdim=True).add(self.eps).rsqrt()
        return (x.float() * norm).type_as(x) * self.weight


def rope_tables(
    head_dim: int, positions: torch.Tensor, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [B, 1, T, head_dim/2] for integer positions [B, T]."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.float()[..., None] * inv_freq  # [B, T, hd/2]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head vector; x is [B, H, T, hd]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.d_model // config.n_heads
        self.kv_dim = self.n_kv_heads * self.head_dim
        self.layer_idx = layer_idx
        self.qkv = nn.Linear(config.d_model, config.d_model + 2 * self.kv_dim, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.dropout = config.dropout

    def forward(self, x, cos, sin, mask, cache: KVCache | None, past=None, kv_out=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split([C, self.kv_dim, self.kv_dim], dim=2)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_out is not None:
            kv_out.append((k, v))
        if past is not None:  # keys/values of a prefix, kept in the autograd graph
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        elif cache is not None:
            start = cache.length
            cache.k[self.layer_idx, :, :, start : start + T] = k
            cache.v[self.layer_idx, :, :, start : start + T] = v
            k = cache.k[self.layer_idx, :, :, : start + T]
            v = cache.v[self.layer_idx, :, :, : start + T]
        dropout = self.dropout if self.training else 0.0
        if T == 1 and cache is not None and cache.groups is not None and len(cache.groups) > 1:
            y = torch.cat(
                [
                    attend(q[a:b], k[a:b, :, c:], v[a:b, :, c:], mask[a:b, :, :, c:])
                    for a, b, c in cache.groups
                ]
            )
        else:  # without a mask: no padding, no cache, plain causal attention (training)
            y = attend(q, k, v, mask, dropout)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def attend(q, k, v, mask: torch.Tensor | None, dropout: float = 0.0) -> torch.Tensor:
    """Attention of queries [B, H, T, hd] over keys/values [B, H_kv, S, hd], each key/value
    head shared by H / H_kv query heads; no mask: causal. One query position (decoding) folds
    a group's query heads into query rows of their key/value head, one product per key/value
    head instead of one per query head (32 rows of 300 keys, 4 heads on 1: 273 against 445 us
    with attention's own grouped-query option)."""
    B, H, T, hd = q.shape
    kv_heads = k.shape[1]
    if T == 1 and kv_heads != H:
        y = F.scaled_dot_product_attention(
            q.reshape(B, kv_heads, H // kv_heads, hd), k, v, attn_mask=mask, dropout_p=dropout
        )
        return y.reshape(B, H, 1, hd)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None,
        enable_gqa=kv_heads != H,
    )  # fmt: skip


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, mask, cache, past=None, kv_out=None):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, mask, cache, past, kv_out))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.prev_mix = (
            nn.Linear(config.d_model, config.d_model, bias=False) if config.prev_token_mix else None
        )
        self.copy_q = self.copy_k = self.copy_next = self.copy_gate = None
        if config.copy_head:
            self.copy_q = nn.Linear(config.d_model, config.d_model, bias=False)
            self.copy_k = nn.Linear(config.d_model, config.d_model, bias=False)
            self.copy_next = nn.Linear(config.d_model, config.d_model, bias=False)
            self.copy_gate = nn.Linear(2 * config.d_model, 1)  # [hidden state, proposal]
            # score bonus per token of match between the query's last tokens and a key's
            self.copy_match = nn.Parameter(torch.ones(()))
        self.apply(self._init_weights)
        if self.copy_gate is not None:
            nn.init.zeros_(self.copy_gate.bias)
        if self.prev_mix is not None:
            nn.init.zeros_(self.prev_mix.weight)  # starts as a plain transformer
        # GPT-2 style: shrink the residual projections so the residual stream starts small.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        p = self.embed.weight
        return KVCache(self.config, batch, capacity, p.device, p.dtype)

    def forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        past_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        logits_to_keep: int = 0,
        prev_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] for ids [B, T] (only the last ``logits_to_keep`` positions
        when it is > 0: the output head is a large share of a small model's FLOPs).

        ``attention_mask`` is [B, past + T] (past = cached positions): 1 for real tokens,
        0 for padding. Without a mask and a cache every token is real and attention is causal.
        With a cache the new keys/values are written at ``cache.length`` and the length advances.
        ``past_kv`` (from ``prefix_kv``, one (k, v) pair per layer) is a prefix the tokens
        attend to without copying it into a cache, so gradients flow back into the prefix;
        ``prev_ids`` [B] is then the last token of each row's prefix (for ``prev_token_mix``).
        """
        if self.copy_q is None:
            x = self._hidden(ids, attention_mask, cache, past_kv, prev_ids=prev_ids)
            if logits_to_keep > 0:
                x = x[:, -logits_to_keep:]
            return self.norm(x) @ self.embed.weight.T
        if past_kv is not None:
            raise ValueError("the copy head needs every position's hidden state; pass no past_kv")
        h = self.norm(self._hidden(ids, attention_mask, cache, None))
        keys, key_ids, start = self._copy_keys(h, ids), ids, 0
        if cache is not None:  # _hidden advanced the cache: the new tokens start at length - T
            start = cache.length - ids.shape[1]
            if start > 0:  # the previous last key learns the token that followed it
                cache.copy_k[:, start - 1] += self.copy_next(self.embed(ids[:, 0])).detach()
            cache.copy_k[:, start : cache.length] = keys.detach()
            cache.ids[:, start : cache.length] = ids
            keys, key_ids = cache.copy_k[:, : cache.length], cache.ids[:, : cache.length]
        keep = logits_to_keep if logits_to_keep > 0 else h.shape[1]
        first_query = keys.shape[1] - keep
        return self._copy_mixture(h[:, -keep:], keys, key_ids, attention_mask, first_query)

    def target_logprobs(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, T-1] log-probability of token t+1 given tokens <= t (the training path; no
        cache). With the copy head only each target's own share of the pointer is computed,
        not the whole [B, T, vocab] mixture: training time stays close to the plain model's."""
        h = self.norm(self._hidden(ids, attention_mask, None, None))[:, :-1]
        return self._scored_logprobs(h, h, ids, attention_mask, 0)

    def prefix_target_logprobs(
        self, prefix_ids, prefix_mask, input_ids, attention_mask, prefix_index
    ) -> torch.Tensor:
        """``target_logprobs`` of continuations [B, T] that share left-padded prefixes [P, S]
        (row b continues prefix ``prefix_index[b]``), each prefix run once: [B, T-1], the
        log-prob of continuation token t+1. The copy head points into the prefix too, so the
        prefix's hidden states are expanded to the rows inside the graph."""
        kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        h_prefix = self.norm(self._hidden(prefix_ids, prefix_mask, None, None, kv))
        # index_select, not indexing: its backward (index_add_) is ~2x faster on a CPU
        kv = [(k.index_select(0, prefix_index), v.index_select(0, prefix_index)) for k, v in kv]
        mask = torch.cat([prefix_mask[prefix_index], attention_mask], dim=1)
        prev = prefix_ids[prefix_index, -1]  # left-padded: the last column is real
        h = self.norm(self._hidden(input_ids, mask, None, kv, prev_ids=prev))
        ids = torch.cat([prefix_ids[prefix_index], input_ids], dim=1)
        h_all = torch.cat([h_prefix.index_select(0, prefix_index), h], dim=1)[:, :-1]
        return self._scored_logprobs(h_all, h[:, :-1], ids, mask, prefix_ids.shape[1])

    def _scored_logprobs(self, h_keys, h_q, ids, attention_mask, first_query: int):
        """log p(ids[t + 1]) [B, Tq] for the query positions t = first_query.. whose hidden
        states are h_q, with h_keys [B, L - 1, C] the hidden states of positions 0..L-2 of ids
        [B, L]. With the copy head only each target's own share of the pointer is computed,
        not the whole [B, T, vocab] mixture: training time stays close to the plain model's."""
        target = ids[:, first_query + 1 :]
        logits = (h_q @ self.embed.weight.T).float()
        logp_vocab = logits.log_softmax(dim=-1).gather(-1, target[..., None]).squeeze(-1)
        if self.copy_q is None:
            return logp_vocab
        key_mask = None if attention_mask is None else attention_mask[:, :-1]
        keys = self._copy_keys(h_keys, ids)  # no key lacks its follower here
        attn = self._copy_attention(h_q, keys, ids[:, :-1], key_mask, first_query)
        p_copy = (attn * (ids[:, None, 1:] == target[:, :, None])).sum(-1)
        share = self._copy_share(h_q, attn, ids[:, 1:]).squeeze(-1)
        share = share.clamp(1e-30, 1 - 1e-7)
        return torch.logaddexp(
            torch.log1p(-share) + logp_vocab, share.log() + p_copy.clamp_min(1e-30).log()
        )

    def _copy_keys(self, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Copy-head keys [B, Tk, C] for hidden states h [B, Tk, C] of tokens ids [B, T >= Tk].
        A key also sees the token that followed its position, the one the pointer would write
        (a causal hidden state cannot): pointing at "the position before a name" becomes
        pointing at "a name". Every position a query may point at has its follower; the last
        position, when ids has no follower for it, gets its share when that token comes."""
        nxt = self.copy_next(self.embed(ids[:, 1 : h.shape[1] + 1]))
        return self.copy_k(h) + F.pad(nxt, (0, 0, 0, h.shape[1] - nxt.shape[1]))

    def _copy_attention(self, h, keys, key_ids, key_mask, first_query: int) -> torch.Tensor:
        """The copy head's attention [B, Tq, S] of queries h [B, Tq, C] (normed hidden states)
        over keys [B, S, C] of tokens key_ids [B, S]. Query i sits at key position
        ``first_query + i`` and points at an earlier real position s (``key_mask`` [B, S]) to
        write the token that followed s, as an induction head does: after "Troushon", matching
        "Troushon" in the question writes "Scooter". A query with no earlier position gets all
        zeros."""
        Tq, S = h.shape[1], keys.shape[1]
        scores = (self.copy_q(h) @ keys.transpose(1, 2)) / math.sqrt(h.shape[-1])
        scores = scores.float() + self._match_bonus(key_ids, key_mask, first_query, Tq)
        q_pos = torch.arange(first_query, first_query + Tq, device=h.device)[:, None]
        k_pos = torch.arange(S, device=h.device)[None, :]
        allowed = (k_pos < q_pos)[None]
        if self.config.turn_start_id >= 0:  # earlier turns only (all of it before any turn)
            turn = (key_ids == self.config.turn_start_id).cumsum(dim=1)
            q_turn = turn[:, first_query : first_query + Tq, None]
            allowed = allowed & ((turn[:, None, :] < q_turn) | (q_turn == 0))
        if key_mask is not None:
            allowed = allowed & key_mask.bool()[:, None, :]
        # a query with nothing allowed would get a uniform row: zero it (one flag per query)
        return scores.masked_fill(~allowed, -1e9).softmax(dim=-1) * allowed.any(-1, keepdim=True)

    def _match_bonus(self, key_ids, key_mask, first_query: int, Tq: int) -> torch.Tensor:
        """[B, Tq, S]: ``copy_match`` x the number of tokens (up to COPY_MATCH) in which the
        query's last tokens equal those ending at key s; padding and positions before the start
        never match.
        The longest match wins, so a copy continues from where it was (linear in the length: one
        multiply over [B, Tq, S], the whole bonus costs about one more attention score matrix)."""
        B, S = key_ids.shape
        K = COPY_MATCH
        real = key_ids if key_mask is None else key_ids.masked_fill(key_mask == 0, -1)
        q_ids = torch.cat([key_ids.new_full((B, K), -1), real], dim=1)
        k_ids = torch.cat([key_ids.new_full((B, K), -2), real.masked_fill(real < 0, -2)], dim=1)
        length = torch.zeros((B, Tq, S), dtype=torch.uint8, device=key_ids.device)
        run = None
        for j in range(K):
            q = q_ids[:, K + first_query - j : K + first_query - j + Tq]
            same = q[:, :, None] == k_ids[:, None, K - j : K - j + S]
            run = same if run is None else run & same
            length += run
        return self.copy_match * length

    def _copy_share(self, h, attn, next_ids) -> torch.Tensor:
        """[B, Tq, 1] weight of the pointer in the mixture. The gate sees the hidden state and
        the (attention-weighted) embedding of the token the pointer proposes, so it can refuse
        a continuation of the source that the target does not share. The share is 0 where there
        is nothing to point at (the first position)."""
        proposal = attn.to(h.dtype) @ self.embed(next_ids)
        gate = self.copy_gate(torch.cat([h, proposal], dim=-1)).float()
        return torch.sigmoid(-gate) * attn.sum(-1, keepdim=True)

    def _copy_mixture(self, h, keys, key_ids, key_mask, first_query: int) -> torch.Tensor:
        """Log-probabilities [B, Tq, V] of the copy head's mixture for queries h over keys of
        tokens key_ids [B, S] (see ``_copy_attention``). Log-probabilities are valid logits:
        softmax gives the mixture back, so sampling, temperature and ``log_softmax`` work
        unchanged."""
        attn = self._copy_attention(h, keys, key_ids, key_mask, first_query)
        B, Tq, S = attn.shape
        next_ids = torch.cat([key_ids[:, 1:], key_ids[:, :1]], dim=1)  # the last is never used
        index = next_ids[:, None, :].expand(B, Tq, S)
        p_copy = attn.new_zeros(B, Tq, self.config.vocab_size).scatter_add_(2, index, attn)
        copy_share = self._copy_share(h, attn, next_ids)
        p_vocab = (h @ self.embed.weight.T).float().softmax(dim=-1)
        return torch.log(((1 - copy_share) * p_vocab + copy_share * p_copy).clamp_min(1e-30))

    def prefix_kv(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys/values [B, H_kv, T, head_dim] of every layer for ids [B, T] (no logits): a
        prefix that ``forward(..., past_kv=...)`` continues. Left padding is allowed."""
        kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._hidden(ids, attention_mask, None, None, kv)
        return kv

    def _hidden(
        self, ids, attention_mask, cache, past_kv, kv_out=None, prev_ids=None
    ) -> torch.Tensor:
        B, T = ids.shape
        if cache is not None and past_kv is not None:
            raise ValueError("pass either a KV cache or past_kv, not both")
        past = cache.length if cache is not None else 0
        if past_kv is not None:
            past = past_kv[0][0].shape[2]
        if cache is not None and past + T > cache.capacity:
            raise ValueError(f"KV cache overflow: {past + T} > capacity {cache.capacity}")
        if attention_mask is None:
            positions = torch.arange(past, past + T, device=ids.device).expand(B, T)
            mask = None if past == 0 else padded_causal_mask(torch.ones(B, past + T), T)
        else:
            if attention_mask.shape != (B, past + T):
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} != {(B, past + T)}"
                )
            positions = token_positions(attention_mask, T)
            all_real = past == 0 and bool(attention_mask.all())
            mask = None if all_real else padded_causal_mask(attention_mask, T)
        if mask is not None:
            mask = additive_mask(mask.to(ids.device), self.embed.weight.dtype)
        if (
            cache is not None
            and T == 1
            and past > 0
            and cache.groups is None
            and attention_mask is not None
        ):
            first_real = attention_mask.int().argmax(dim=1).tolist()  # left padding: first 1
            cache.groups = attention_groups(first_real, past + T)
        cos, sin = rope_tables(
            self.config.d_model // self.config.n_heads, positions, self.config.rope_theta
        )
        x = self.embed(ids)
        if self.prev_mix is not None:
            if cache is not None and past > 0:
                prev_ids = cache.last_ids
            real = attention_mask[:, past:] if attention_mask is not None else None
            x = x + self.prev_mix(self._previous_embeddings(ids, real, prev_ids))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            past_i = past_kv[i] if past_kv is not None else None
            x = block(x, cos, sin, mask, cache, past_i, kv_out)
        if cache is not None:
            cache.length += T
            cache.last_ids = ids[:, -1].clone()
        return x

    def _previous_embeddings(self, ids, real, first_prev) -> torch.Tensor:
        """[B, T, C] embedding of the token before each token; zero where there is none (the
        first token, or the one after padding). ``first_prev`` [B] is the token before column 0
        (from the cache or a shared prefix; -1 for none); ``real`` [B, T] marks real tokens."""
        B = ids.shape[0]
        if first_prev is None:
            first_prev = torch.full((B,), -1, dtype=torch.long, device=ids.device)
        prev = torch.cat([first_prev[:, None].to(ids.device), ids[:, :-1]], dim=1)
        ok = prev >= 0
        if real is not None:
            ok = ok & torch.cat([ok[:, :1], real[:, :-1].bool()], dim=1)
        return self.embed(prev.clamp(min=0)) * ok[..., None].to(self.embed.weight.dtype)


def token_positions(attention_mask: torch.Tensor, T: int) -> torch.Tensor:
    """[B, T] position of each of the last T tokens: the number of real tokens before it in its
    row (``attention_mask`` [B, S] is 1 for real tokens). One new token per row (decoding) needs
    only each row's count."""
    if T == 1:
        return (attention_mask.sum(-1, keepdim=True) - 1).clamp(min=0)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]


def padded_causal_mask(attention_mask: torch.Tensor, T: int) -> torch.Tensor:
    """Boolean [B, 1, T, S] mask for the last T of S positions: causal, real keys only, and
    each query may always see itself (so a padding query's row is never fully masked, which
    would give NaN). ``attention_mask`` [B, S] is 1 for real tokens, 0 for padding."""
    if T == 1:  # decoding: every real key, and the query itself
        allowed = attention_mask != 0  # a new tensor, even for a boolean mask
        allowed[:, -1] = True
        return allowed[:, None, None, :]
    B, S = attention_mask.shape
    past = S - T
    q_pos = torch.arange(past, S, device=attention_mask.device)[:, None]
    k_pos = torch.arange(S, device=attention_mask.device)[None, :]
    causal = k_pos <= q_pos  # [T, S]
    real = attention_mask.bool()[:, None, :]  # [B, 1, S]
    allowed = (causal & real) | (k_pos == q_pos)
    return allowed[:, None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the float mask attention adds to its scores, converted once per
    forward: attention converts a boolean mask in every layer (and every run of rows), and
    adds a float one faster (1.4 against 1.9 ms for 32 rows of 800 keys on a 2-core CPU)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf")
    )
