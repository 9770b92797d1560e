"""The built-in transformer's keys and values kept between forward passes.

A `KVCache` holds a batch's keys and values for incremental decoding, in memory reused from
dropped caches (`CACHE_MEMORY`); `prefill` fills an empty one with left-padded prompts, of
which rows that continue a `CachedPrefix` (a row an earlier generate call finished, or the
beginning a batch's prompts share) run only their new tokens; `attention_groups` plans which
padding columns a decoding step can skip. The Hugging Face direct forward
(``llama_forward``) keeps its caches in the same memory and exports the same prefixes.
"""

from __future__ import annotations

import itertools
import math
import threading
import weakref
from dataclasses import dataclass

import torch


@dataclass
class CachedPrefix:
    """Keys/values [layers, H_kv, n, head_dim] of tokens ``ids`` already run, which a prompt may
    continue so that only its new tokens run: a row a generate call finished (its prompt and
    all but its last generated token; the next turn continues it) or a batch's common
    beginning. The copy head's last key has not yet seen its follower (it gets it when the
    first new token runs)."""

    ids: tuple[int, ...]
    k: torch.Tensor
    v: torch.Tensor
    copy_k: torch.Tensor  # [n, C]; [n, 0] without a copy head
    last_id: int


class KVCache:
    """Preallocated keys/values for incremental decoding: [layers, B, H_kv, capacity, head_dim].

    ``length`` is the number of filled positions (the same for every row: rows are aligned by
    left padding, and padded slots are masked by the attention mask). ``select_rows`` drops
    finished rows so they stop costing compute. Keys and values start uninitialised (reused
    memory, see `CacheMemory`): a forward writes every position it runs, padding included, and
    ``prefill`` zeroes the padding it leaves unwritten, since attention reads it (masked, but
    a NaN there would still spread).
    """

    def __init__(self, config, batch: int, capacity: int, device, dtype):
        """``config``: the model's ``TransformerConfig``."""
        hd = config.d_model // config.n_heads
        shape = (config.n_layers, batch, config.n_kv_heads, capacity, hd)
        self.k = self.empty(shape, device, dtype)
        self.v = self.empty(shape, device, dtype)
        self.length = 0
        self.last_ids = torch.full((batch,), -1, dtype=torch.long, device=device)  # -1: none
        # the copy head's keys and the token ids they point at (empty without a copy head)
        width = config.d_model if config.copy_head else 0
        self.copy_k = self.empty((batch, capacity, width), device, dtype)
        self.ids = torch.zeros((batch, capacity if width else 0), dtype=torch.long, device=device)
        # runs of rows that attend from their own first real column (see `attention_groups`),
        # planned at the first decoding step after the rows change; None: not planned
        self.groups: list[tuple[int, int, int]] | None = None

    def empty(self, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        """Memory from `CACHE_MEMORY`, given back when this cache is dropped."""
        return CACHE_MEMORY.empty(self, shape, device, dtype)

    def zero_before(self, row: int, column: int) -> None:
        """Zero ``row``'s positions before ``column`` (its left padding)."""
        if column > 0:
            self.k[:, row, :, :column] = 0
            self.v[:, row, :, :column] = 0
            self.copy_k[row, :column] = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def export_row(self, row: int, ids: list[int]) -> CachedPrefix:
        """A copy of ``row``'s last ``len(ids)`` filled positions (rows are right-aligned),
        which must hold exactly the tokens ``ids``."""
        n, end = len(ids), self.length
        return CachedPrefix(
            ids=tuple(ids),
            k=self.k[:, row, :, end - n : end].clone(),
            v=self.v[:, row, :, end - n : end].clone(),
            copy_k=self.copy_k[row, end - n : end].clone(),
            last_id=int(self.last_ids[row]),
        )

    def select_rows(self, rows: torch.Tensor) -> KVCache:
        """Keep (or repeat) the given rows (see `select_cache_rows`)."""
        n = self.length
        more = len(rows) > self.k.shape[1]
        new = (lambda shape: self.empty(shape, self.k.device, self.k.dtype)) if more else None
        self.k = select_cache_rows(self.k, rows, n, new=new)
        self.v = select_cache_rows(self.v, rows, n, new=new)
        self.last_ids, self.ids = self.last_ids[rows], self.ids[rows]
        self.copy_k = select_cache_rows(self.copy_k[None], rows, n, position_dim=2, new=new)[0]
        self.groups = None
        return self


class CacheMemory:
    """Reuses the memory of dropped KV caches. The kernel page-faults fresh memory in on first
    touch: a new zeroed 46 MB cache (32 rows of 700 positions, 4 layers of 4 key/value heads)
    costs ~25 ms, zeroing reused memory ~3 ms, not zeroing it nothing, and a rollout builds a
    cache every few dozen tokens.
    A cache's buffers come back when the cache object is garbage collected; caches never hand
    out views of their memory that outlive them (`export_row` copies). At most `keep` free
    buffers and `max_bytes` are held between calls, so a large model's caches (SmolLM2's are
    GBs at batch 32) go back to the system for training instead of staying parked here."""

    def __init__(self, keep: int = 6, max_bytes: int = 512 * 2**20) -> None:
        self.keep = keep  # free buffers kept, largest first
        self.max_bytes = max_bytes
        self.free: list[torch.Tensor] = []
        self.lock = threading.Lock()

    def empty(self, owner: object, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        """Uninitialised memory of `shape`, back in the pool when `owner` is collected."""
        n = math.prod(shape)
        if n == 0 or self.keep == 0:
            return torch.empty(shape, device=device, dtype=dtype)
        with self.lock:
            fits = [
                i
                for i, b in enumerate(self.free)
                if b.numel() >= n and b.dtype == dtype and b.device == torch.device(device)
            ]
            # the smallest that fits (the list is sorted largest first)
            buffer = self.free.pop(fits[-1]) if fits else None
        if buffer is None:
            buffer = torch.empty(n, device=device, dtype=dtype)
        weakref.finalize(owner, self._give_back, buffer)
        return buffer[:n].view(shape)

    def _give_back(self, buffer: torch.Tensor) -> None:
        with self.lock:
            held, total = [], 0
            for b in sorted([*self.free, buffer], key=torch.Tensor.numel, reverse=True):
                size = b.numel() * b.element_size()
                if len(held) < self.keep and total + size <= self.max_bytes:
                    held.append(b)
                    total += size
            self.free = held


CACHE_MEMORY = CacheMemory()


def select_cache_rows(
    cache: torch.Tensor, rows: torch.Tensor, filled: int, position_dim: int = 3, new=None
) -> torch.Tensor:
    """The given rows (dim 1) of a cache tensor, of which only the first `filled` positions
    are copied: the rest of the capacity is written before it is ever read. Fewer rows, in
    increasing order (finished rows dropped), are moved down one by one within the same memory
    and returned as a view of it: no new memory to page-fault in, no temporary copy (batch-32
    rollouts ran 1.12-1.15x faster without new memory). Other selections are gathered through
    a temporary copy, into the same memory or, for more rows (repeats of shared prompts), into
    `new(shape)` (default: `torch.empty`)."""
    m = len(rows)
    order = rows.tolist()
    if m <= cache.shape[1] and all(a < b for a, b in itertools.pairwise(order)):
        out = cache[:, :m]
        for i, r in enumerate(order):  # r >= i: a row is read before anything overwrites it
            if r != i:
                out.select(1, i).narrow(position_dim - 1, 0, filled).copy_(
                    cache.select(1, r).narrow(position_dim - 1, 0, filled)
                )
        return out
    if m <= cache.shape[1]:
        out = cache[:, :m]
    else:
        shape = (cache.shape[0], m, *cache.shape[2:])
        out = new(shape) if new is not None else cache.new_empty(shape)
    filled_part = (slice(None),) * position_dim + (slice(0, filled),)
    out[filled_part] = cache[filled_part][:, rows]  # indexing copies first: safe in place
    return out


# One more attention call costs about as much as reading this many cached positions of one row
# (~20 us per call against ~1 KB per position and layer at a 2-core CPU's memory bandwidth).
GROUP_CALL_COST = 256


def attention_groups(first_real: list[int], width: int) -> list[tuple[int, int, int]]:
    """Split the rows, in their order, into runs (first row, end row, first column) such that
    each run's attention reads only from the earliest column where one of its rows has a real
    token: the columns before it are padding for every row of the run, so skipping them changes
    nothing but the memory read. Left padding makes short rows pay for the longest one (46% of
    the keys a batch-32 rollout read were padding); with rows sorted by length a few runs remove
    most of that. The split minimises positions read plus GROUP_CALL_COST per run (dynamic
    programming over runs of rows with the same first column, rounded down to 16)."""
    items: list[tuple[int, int]] = []  # (rows, first column) of runs of equal rounded columns
    for col in first_real:
        col -= col % 16
        if items and items[-1][1] == col:
            items[-1] = (items[-1][0] + 1, col)
        else:
            items.append((1, col))
    n = len(items)
    best = [0.0] + [math.inf] * n  # best[j]: cheapest split of the first j items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        rows, col = 0, width
        for i in range(j - 1, -1, -1):  # last run = items i..j-1
            rows += items[i][0]
            col = min(col, items[i][1])
            cost = best[i] + rows * (width - col) + GROUP_CALL_COST
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        i = cut[j]
        groups.append((sum(r for r, _ in items[:i]), sum(r for r, _ in items[:j]),
                       min(c for _, c in items[i:j])))  # fmt: skip
        j = i
    return groups[::-1]


@torch.no_grad()
def prefill(
    model,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: KVCache,
    cached: dict[int, CachedPrefix] | None = None,
):
    """Fill an empty cache of the built-in ``model`` (a ``Transformer``) with left-padded
    prompts [B, W]; logits [B, vocab] of each row's last token. Rows of equal length run together without padding (plain causal
    attention, no mask), and their keys/values land right-aligned in the cache, exactly
    where a padded pass would put them, so decoding continues as after ``forward``.
    ``cached`` maps a row to a ``CachedPrefix`` of its prompt: that row runs only the rest
    of its prompt, after the stored keys/values."""
    if cache.length != 0:
        raise ValueError("prefill needs an empty cache")
    cached = cached or {}
    B, W = ids.shape
    lengths = attention_mask.sum(dim=1).tolist()
    logits = None

    def place(rows: torch.Tensor, out: torch.Tensor) -> None:
        nonlocal logits
        if logits is None:
            logits = out.new_empty(B, out.shape[-1])
        logits[rows] = out

    by_window: dict[int, list[int]] = {}  # rows with a cached prefix, by tokens to run
    for row, prefix in cached.items():
        new = int(lengths[row]) - len(prefix.ids)
        by_window.setdefault(min(_window(model, new), W), []).append(row)
    for w, group in by_window.items():
        rows = torch.tensor(group, device=ids.device)
        out, part = _continue_prefixes(
            model,
            ids[rows, W - w :],
            attention_mask[rows, W - w :],
            [cached[r] for r in group],
            [int(lengths[r]) - w for r in group],
        )
        place(rows, out)
        n = part.capacity
        cache.k[:, rows, :, W - n : W], cache.v[:, rows, :, W - n : W] = part.k, part.v
        cache.copy_k[rows, W - n : W] = part.copy_k
        if cache.ids.numel():
            cache.ids[rows, W - n : W] = part.ids
    fresh = [b for b in range(B) if b not in cached]
    for n in sorted(set(int(lengths[b]) for b in fresh)):
        rows = torch.tensor([b for b in fresh if lengths[b] == n], device=ids.device)
        kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        x = model._hidden(ids[rows, W - n :], None, None, None, kv)
        if model.copy_q is None:
            out = model.norm(x[:, -1]) @ model.embed.weight.T
        else:
            h = model.norm(x)
            keys = model._copy_keys(h, ids[rows, W - n :])
            cache.copy_k[rows, W - n : W] = keys
            cache.ids[rows, W - n : W] = ids[rows, W - n :]
            out = model._copy_mixture(h[:, -1:], keys, ids[rows, W - n :], None, n - 1)[:, 0]
        place(rows, out)
        for layer, (k, v) in enumerate(kv):
            cache.k[layer, rows, :, W - n : W] = k
            cache.v[layer, rows, :, W - n : W] = v
    for row, n in enumerate(lengths):
        cache.zero_before(row, W - int(n))
    cache.length = W
    cache.last_ids = ids[:, -1].clone()
    return logits


def _window(model, new_tokens: int) -> int:
    """How many tokens a row with ``new_tokens`` new ones runs after its cached prefix:
    rounded up to a power of two, so that rows with similar counts run in one batch (the
    extra tokens are the tail of the prefix, run again: the same keys/values). With the
    copy head exactly the new ones: a rerun key would get its follower a second time."""
    if model.copy_q is not None:
        return new_tokens
    return 1 << (new_tokens - 1).bit_length()


def _continue_prefixes(model, new_ids, new_mask, prefixes: list[CachedPrefix], used):
    """Run the last w tokens [G, w] of each row's prompt (``new_mask``: left padding where
    a prompt is shorter) after the first ``used[g]`` positions of its cached prefix (the
    rest of the prompt). The prefixes are placed right-aligned (left-padded) in a fresh
    cache, so the w tokens share their columns; returns (logits [G, vocab] of the last
    token, that cache)."""
    G, w = new_ids.shape
    used = [max(0, c) for c in used]
    width = max(used)
    part = model.new_cache(G, width + w)
    mask = torch.zeros((G, width + w), dtype=torch.long, device=new_ids.device)
    mask[:, width:] = new_mask
    for g, (p, c) in enumerate(zip(prefixes, used, strict=True)):
        if c > len(p.ids):
            raise ValueError("a prompt's cached prefix is shorter than it should be")
        part.k[:, g, :, width - c : width] = p.k[:, :, :c]
        part.v[:, g, :, width - c : width] = p.v[:, :, :c]
        part.copy_k[g, width - c : width] = p.copy_k[:c]
        if part.ids.numel():
            part.ids[g, width - c : width] = torch.tensor(p.ids[:c], device=new_ids.device)
        part.last_ids[g] = p.last_id if c == len(p.ids) else p.ids[c - 1] if c else -1
        mask[g, width - c : width] = 1
        part.zero_before(g, width - c)
    part.length = width
    logits = model(new_ids, attention_mask=mask, cache=part, logits_to_keep=1)[:, -1]
    return logits, part
