"""Batched token-by-token generation shared by the built-in and Hugging Face policies.

One loop serves both models through a tiny backend interface (``DecodeBackend``): a forward
pass that returns the logits of each row's last position, a cache constructor, and a row
selector. The loop also continues rows that an earlier call finished (an episode's next turn)
and runs the beginning that a batch's prompts share once, where the backend can prefill from
such kept prefixes. Semantics, identical for every token policy:

* Prompts are left-padded into one batch, so every row's next token sits in the last column.
* ``temperature == 0`` is greedy decoding. Otherwise tokens are drawn from
  ``softmax(logits / temperature)`` restricted to the top-p nucleus, with a ``torch.Generator``
  seeded from ``sampling.seed`` (or from torch's global RNG when the seed is None, so
  ``torch.manual_seed`` also makes runs repeatable).
* The reported log-prob of a token is taken from ``log_softmax(logits / temperature)`` over the
  FULL vocabulary: top-p truncation is NOT included. That is the quantity a trainer can recompute
  (``token_logprobs`` divided by the temperature), and it is finite for every token. With
  ``temperature == 0`` it is the untempered ``log_softmax(logits)``.
* A row finishes on an end-of-sequence id, when its generated text contains a stop string, or
  when it has used its token budget (``max_new_tokens``, capped by the model's context length).
  ``Completion.text`` excludes the stop string (and anything after it), but ``token_ids`` keep
  every generated id up to and including the one that completed the stop string. For the
  default stop ``<|im_end|>`` that is the end-of-turn token itself, so a training sequence built
  from the ids ends the assistant turn properly, exactly as the model produced it.
* Finished rows are dropped from the batch (and its KV cache) once a quarter of the rows are
  done, so long-running rows do not pay for short ones.
* Rows that one cache of ``max_cache_positions`` cannot hold are decoded in several batches,
  one after another (`cache_batches`), so a call's cache is bounded however many rows it has.
* Decoding may check guessed tokens (``num_speculative_tokens``, a backend with
  ``forward_tokens``): a step runs each row's last token and its guesses, keeps the guesses the
  model itself chose and the model's token after them, and masks the rest out of the cache
  (holes, closed when the cache runs short of room). The same tokens in fewer steps
  (`tooltune.policies.drafting`). Sampling can check guesses because every position of a row
  has its uniform number drawn before decoding starts: the token the model draws at a
  position is the same whether it ran one token a step or after guesses, and a guess is kept
  when it is that token (with the model's probability of it, as speculative sampling keeps
  a draft's).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from tooltune.call_grammar import CallGrammar
from tooltune.policies.constrained import constrain
from tooltune.policies.drafting import Drafter
from tooltune.rollout import Completion, SamplingParams


class DecodeBackend(Protocol):
    def new_cache(self, batch: int, capacity: int) -> Any: ...

    def forward_last(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        """Logits [B, V] at the last position. ``mask`` covers cached + new positions;
        ``cache`` is None for a full recompute, else it is updated in place."""
        ...

    def select_cache(self, cache: Any, rows: torch.Tensor) -> Any: ...

    # Optional, together: ``prefill(ids, mask, cache, cached) -> logits [B, V]``, the first
    # forward_last on an empty cache, where row r of ``cached`` runs only the tokens after the
    # kept prefix ``cached[r]``; and ``run_beginning(ids) -> kept prefix`` of tokens ``ids``.
    # Keeping finished rows (``generate_tokens(finished=)``) needs caches with
    # ``export_row(row, ids)``: the kept prefix of that row's last len(ids) positions.
    # Optional: ``position_bytes``, what one position of one row takes in a cache (a policy's
    # ``max_cache_bytes`` becomes ``generate_tokens(max_cache_positions=)`` with it).


def first_pass(
    backend: DecodeBackend,
    ids: torch.Tensor,
    mask: torch.Tensor,
    cache: Any,
    cached: dict[int, Any],
    share: bool,
    openings: dict[tuple[int, ...], Any] | None = None,
    turn_ends: set[int] | None = None,
) -> torch.Tensor:
    """Logits of the prompts' last tokens. A backend that can prefill from kept prefixes runs,
    of a row in ``cached`` (cache row -> what an earlier call kept of the row it continues),
    only the rest; the prefill empties ``cached`` as it copies them, so each row's memory goes
    back as soon as it is in the cache. A row that continues none starts from its first turn
    (its tokens up to the first of ``turn_ends``: the system prompt) kept in ``openings`` by an
    earlier call, or run now and kept there; with ``share``, the rows left run their common
    beginning once (`common_beginning`)."""
    if cache is None or not hasattr(backend, "prefill"):
        return backend.forward_last(ids, mask, cache)
    width, every = ids.shape[1], ids.tolist()  # one copy to the host, not one a row
    prompts = [tuple(every[r][width - n :]) for r, n in enumerate(mask.sum(dim=1).tolist())]
    if openings is not None and turn_ends:
        for row, prompt in enumerate(prompts):
            n = next((i + 1 for i, t in enumerate(prompt) if t in turn_ends), 0)
            if row in cached or not MIN_SHARED_PREFIX <= n < len(prompt):
                continue
            if prompt[:n] not in openings:
                openings[prompt[:n]] = backend.run_beginning(list(prompt[:n]))
            cached[row] = openings[prompt[:n]]
    fresh = [row for row in range(len(prompts)) if row not in cached]
    n = common_beginning([prompts[row] for row in fresh]) if share else 0
    if n:
        cached.update(dict.fromkeys(fresh, backend.run_beginning(list(prompts[fresh[0]][:n]))))
    return backend.prefill(ids, mask, cache, cached)


def validate_sampling(sampling: SamplingParams) -> None:
    if sampling.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {sampling.temperature}")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {sampling.max_new_tokens}")


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    draws: torch.Generator | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits`` [B, V] (or per position of [B, T, V]); returns (tokens,
    logprobs) of shape [B] ([B, T]). Sampling takes a uniform number per token from ``draws``:
    drawn from it where it is a generator, or given (a tensor of the tokens' shape); a token is
    the first whose cumulative probability passes its number, so the same numbers and the same
    logits give the same tokens however the steps were cut (guesses checked or not).
    Broken logits (NaN, or -inf for every token) give a non-finite log-prob, which the decode
    loop turns into an error (`check_sampled`) when it reads the tokens anyway: a check here
    would cost a device sync and five operations per step."""
    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(dim=-1)
        logp = F.log_softmax(logits, dim=-1)
        return tokens, logp.gather(-1, tokens[..., None]).squeeze(-1)
    logp = F.log_softmax(logits if temperature == 1 else logits / temperature, dim=-1)
    if isinstance(draws, torch.Generator):
        draws = torch.rand(logits.shape[:-1], generator=draws, device=logits.device)
    tokens = _draw(_nucleus(logp.exp(), top_p), draws)
    return tokens, logp.gather(-1, tokens[..., None]).squeeze(-1)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` with the tokens outside the top-p nucleus set to 0 (not renormalised)."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest prefix whose mass reaches top_p (the top token is always kept).
    outside = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p
    sorted_p = sorted_p.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


def _draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token of each row of unnormalised ``probs`` [..., V] whose cumulative share first
    passes its uniform number in ``u`` [...].

    Inverse-CDF sampling, one number per token (`torch.multinomial` draws one per vocabulary
    entry: 2 ms for 32 rows of 2048 on a 2-core CPU, against 50 us). A token with probability 0
    (outside the nucleus) adds nothing to the sum, so it is never the first entry above `u`."""
    cdf = probs.cumsum(dim=-1)
    total = cdf[..., -1:]
    u = u[..., None].to(total.dtype) * total
    u = torch.where(u < total, u, 0.0)  # rounding can lift u * total to total itself
    # (NaN in the cdf sends u past the end: clamped, its log-prob is NaN too)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def check_sampled(logprobs: list[float]) -> None:
    """A sampled token always has a finite log-prob: inverse-CDF sampling never picks a token
    of probability 0, and NaN or all -inf logits make every log-prob NaN."""
    if not all(map(math.isfinite, logprobs)):
        raise ValueError("cannot sample: the model's logits are NaN, or -inf for every token")


class StopChecker:
    """Finds stop strings in a row's generated text by decoding only its tail (~10 us a row).

    A stop string of n UTF-8 bytes spans at most n tokens (every token is at least one byte),
    so the last n + 1 tokens contain any occurrence that the newest token completed. Matching
    text rather than ids also catches a marker the model spelled out piece by piece.
    """

    def __init__(self, stop: Sequence[str], decode: Callable[[list[int]], str]) -> None:
        self.stop = [s for s in stop if s]
        self.decode = decode
        self.window = max((len(s.encode("utf-8")) for s in self.stop), default=0) + 1
        self._can_end: dict[int, bool] = {}

    def hit(self, ids: list[int]) -> bool:
        if not self.stop or not self.can_end(ids[-1]):
            return False
        tail = self.decode(ids[-self.window :])
        return any(s in tail for s in self.stop)

    def can_end(self, token: int) -> bool:
        """Whether `token` can complete a stop string: its own text holds a stop string's last
        character, or is not plain text on its own (empty, or part of a multi-byte character).
        Most tokens cannot, and skip the decode (a batch-32 rollout decoded ~5,600 tails)."""
        known = self._can_end.get(token)
        if known is None:
            text = self.decode([token])
            known = (
                not text
                or "\ufffd" in text
                or any(s[-1] in text or s[-1].isspace() for s in self.stop)
            )
            self._can_end[token] = known
        return known

    def cut(self, text: str) -> str:
        """Text before the earliest stop string."""
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return text[: min(found)] if found else text


def longest_prefix(prefixes: dict[tuple[int, ...], Any], prompt: tuple[int, ...]) -> Any:
    """The longest stored prefix (keyed by its token ids) that ``prompt`` continues by at least
    one token, or None."""
    best, best_n = None, 0
    for key, entry in prefixes.items():
        n = len(key)
        if n > best_n and n < len(prompt) and prompt[n - 1] == key[-1] and prompt[:n] == key:
            best, best_n = entry, n
    return best


# Prompts that begin with at least this many equal tokens (a system prompt and tool listing)
# run their common beginning once; a shorter one is not worth a pass of its own.
MIN_SHARED_PREFIX = 16


# Cache positions a row gets beyond its token budget for the holes rejected guesses leave; when
# they run short the holes are closed (`_guesses`). A cache twice the budget cost more in
# fresh memory than the rarer closing saves (SmolLM2 evaluation: prefills 3 s slower of 26).
GUESS_ROOM = 64


def common_beginning(prompts: Sequence[Sequence[int]]) -> int:
    """How many tokens every prompt begins with, leaving each at least one of its own; 0 for
    fewer than two prompts or a beginning shorter than `MIN_SHARED_PREFIX`."""
    if len(prompts) < 2:
        return 0
    # commonprefix compares only the lexicographically first and last prompt, which bound all
    # the others; it works on any sequences, token lists included
    n = min(len(os.path.commonprefix(list(prompts))), min(len(p) for p in prompts) - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def cache_batches(
    rows: list[int], lengths: Sequence[int], budgets: Sequence[int], max_positions: int | None
) -> list[list[int]]:
    """``rows`` (longest prompt first) in as few consecutive batches of equal size as keep
    each batch's cache, rows x (longest prompt + largest budget) positions, within
    ``max_positions`` (None: one batch; a row over it alone runs alone). The cache is the one
    copy of a call's rows that exists whole at once (the kept rows it continues go, and those it
    keeps for the next call come, row by row): 32 rows of SmolLM2 at 1,600 tokens are 2.3 GB of
    it in fp32."""
    if max_positions is None:
        return [rows]

    def positions(batch: list[int]) -> int:
        return len(batch) * (max(lengths[i] for i in batch) + max(budgets[i] for i in batch))

    for k in range(1, len(rows) + 1):
        size = -(-len(rows) // k)
        batches = [rows[j : j + size] for j in range(0, len(rows), size)]
        if size == 1 or all(positions(b) <= max_positions for b in batches):
            return batches
    return [rows]  # no rows


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        if p:
            ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[row, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def start_batch(
    backend: DecodeBackend,
    prompts: list[Sequence[int]],
    budget: int,
    cached: dict[int, Any],
    *,
    pad_id: int,
    device: torch.device,
    use_cache: bool,
    share: bool,
    openings: dict[tuple[int, ...], Any] | None,
    turn_ends: set[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """Left-padded ids, mask, the last tokens' logits and the cache (room for ``budget`` new
    tokens a row) of a batch of prompts, prefilled by `first_pass` (``cached``: prompt -> the
    kept row it continues). With ``share``, identical prompts (a GRPO group's samples) run once
    and their cache rows are copied to every prompt that repeats them."""
    distinct: dict[tuple[int, ...], int] = {}
    inverse = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    if use_cache and share and len(distinct) < len(prompts):
        ids, mask = left_pad(list(distinct), pad_id, device)
        cache = backend.new_cache(len(distinct), ids.shape[1] + budget)
        cached = {inverse[j]: cached.pop(j) for j in list(cached)}  # emptied: see first_pass
        logits = first_pass(backend, ids, mask, cache, cached, share, openings, turn_ends)
        index = torch.tensor(inverse, device=device)
        return ids[index], mask[index], logits[index], backend.select_cache(cache, index)
    ids, mask = left_pad(prompts, pad_id, device)
    cache = backend.new_cache(len(prompts), ids.shape[1] + budget) if use_cache else None
    logits = first_pass(backend, ids, mask, cache, cached, share, openings, turn_ends)
    return ids, mask, logits, cache


@torch.no_grad()
def generate_tokens(
    backend: DecodeBackend,
    prompt_ids: Sequence[Sequence[int]],
    sampling: SamplingParams,
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    decode: Callable[[list[int]], str],
    max_seq_len: int,
    device: torch.device,
    use_cache: bool = True,
    share_prefill: bool = True,
    max_new_tokens: Sequence[int] | None = None,
    generated_before: Sequence[Sequence[int]] | None = None,
    previous: dict[tuple[int, ...], Any] | None = None,
    finished: dict[tuple[int, ...], Any] | None = None,
    openings: dict[tuple[int, ...], Any] | None = None,
    max_cache_positions: int | None = None,
    drafter: Drafter | None = None,
    num_speculative_tokens: int = 0,
    grammars: Sequence[CallGrammar | None] | None = None,
    pieces: Sequence[str] | None = None,
) -> list[Completion]:
    """Generate one completion per prompt, all rows decoded together (see module docstring),
    or in several batches where one cache of ``max_cache_positions`` (rows x positions) would
    not hold them all (see `cache_batches`).

    With ``share_prefill`` (and the cache), identical prompts (a GRPO group's samples) are
    prefilled once and their cache rows copied to every sample that uses them, and distinct
    prompts run their common beginning once (see `first_pass`).
    ``max_new_tokens`` (one per prompt) overrides ``sampling.max_new_tokens``;
    ``generated_before`` (one per prompt) are tokens of the same turn generated by an earlier
    call and ending the prompt, so a stop string that began there is still found.
    ``previous`` holds rows earlier calls finished, keyed by their token ids: a prompt that
    continues one runs only its new tokens (the call empties it). ``finished``, when given,
    receives the rows this call finishes (each prompt and all but its last generated token)
    for the next call.
    ``openings``, when given, keeps the prompts' first turns (up to their first ``eos_ids``
    token: the system prompt) across calls, so a new episode runs only its own tokens.
    With ``drafter`` and ``num_speculative_tokens`` > 0, decoding on a backend with
    ``forward_tokens`` checks up to that many guessed tokens a row at each step (see
    `tooltune.policies.drafting`): the same tokens in fewer steps.
    ``grammars`` (one per prompt, None for a free row) constrain greedy decoding's tool calls
    (`tooltune.policies.constrained`); ``pieces`` is then each token id's text."""
    validate_sampling(sampling)
    if grammars is not None and any(g is not None for g in grammars):
        if sampling.temperature > 0:
            raise ValueError("constrained tool calls need greedy decoding (temperature 0)")
        if pieces is None or len(grammars) != len(prompt_ids):
            raise ValueError("grammars need one entry per prompt, and the tokens' pieces")
    else:
        grammars = None
    rules: Sequence[Any] = grammars or ()
    table: Sequence[str] = pieces or ()
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: generation needs at least one token")
    eos = set(int(e) for e in eos_ids)
    stopper = StopChecker(list(sampling.stop or []), decode)
    wanted = (
        max_new_tokens
        if max_new_tokens is not None
        else [sampling.max_new_tokens] * len(prompt_ids)
    )
    before = generated_before if generated_before is not None else [[] for _ in prompt_ids]
    if len(wanted) != len(prompt_ids) or len(before) != len(prompt_ids):
        raise ValueError("max_new_tokens and generated_before need one entry per prompt")
    budgets = [min(w, max_seq_len - len(p)) for w, p in zip(wanted, prompt_ids, strict=True)]
    results: list[Completion | None] = [None] * len(prompt_ids)
    # longest prompts first: left-padded rows of similar length sit together, so a backend
    # can skip the padding columns a run of rows shares (see kv_cache.attention_groups)
    order = sorted((i for i, b in enumerate(budgets) if b > 0), key=lambda i: -len(prompt_ids[i]))
    for i, b in enumerate(budgets):
        if b <= 0:  # no room left in the context (or nothing asked for)
            results[i] = Completion(text="", token_ids=[], logprobs=[], finish_reason="length")
    if not order:
        return results  # type: ignore[return-value]

    kept: dict[int, Any] = {}  # prompt -> the kept row it continues
    if previous:
        found = ((i, longest_prefix(previous, tuple(prompt_ids[i]))) for i in order)
        kept = {i: prefix for i, prefix in found if prefix is not None}
        previous.clear()  # a kept row that no prompt continues now is never continued later
    generator = make_generator(sampling.seed, device)
    lengths = [len(p) for p in prompt_ids]
    limit = max_cache_positions if use_cache else None
    guessing = (
        drafter is not None and num_speculative_tokens > 0 and use_cache
        and hasattr(backend, "forward_tokens")
    )  # fmt: skip
    # a rejected guess leaves a hole in its row's cache: room for some beyond the budget
    room = [b + min(b, GUESS_ROOM) for b in budgets] if guessing else budgets
    for rows in cache_batches(order, lengths, room, limit):
        # the batch takes its rows' kept prefixes: its prefill frees each as it copies it
        continues = {j: kept.pop(i) for j, i in enumerate(rows) if i in kept}
        ids, mask, logits, cache = start_batch(
            backend, [prompt_ids[i] for i in rows], max(room[i] for i in rows), continues,
            pad_id=pad_id, device=device, use_cache=use_cache, share=share_prefill,
            openings=openings, turn_ends=eos,
        )  # fmt: skip
        out_ids: dict[int, list[int]] = {i: [] for i in rows}
        out_lps: dict[int, list[float]] = {i: [] for i in rows}
        done = [False] * len(rows)
        keeps_rows = finished is not None and cache is not None
        # each row's text so far, from which its guesses come
        texts = {}
        if drafter and guessing:
            texts = dict(zip(rows, drafter.rows([prompt_ids[i] for i in rows]), strict=True))
        # a constrained row's turn so far, as text (its grammar reads it)
        turns = {i: "".join(table[t] for t in before[i]) for i in rows if rules and rules[i]}
        start = cache.length if guessing else 0  # guesses leave holes from here on
        guesses: list[list[int]] = [[] for _ in rows]  # checked by the step that gave `logits`
        # a uniform number for each position a row may generate, drawn up front: a token
        # depends on its row's numbers, not on how many tokens each step ran
        top = max(budgets[i] for i in rows) - 1
        draws = torch.rand((len(rows), top + 1), generator=generator, device=device)
        draws = draws if sampling.temperature > 0 else draws[:, :0]

        while True:
            u = None
            if sampling.temperature > 0:  # each row's numbers for its next positions
                at = torch.tensor([len(out_ids[i]) for i in rows], device=device)
                width = logits.shape[1] if logits.dim() == 3 else 1
                at = (at[:, None] + torch.arange(width, device=device)).clamp_(max=top)
                u = draws.gather(1, at) if logits.dim() == 3 else draws.gather(1, at)[:, 0]
            tokens, logps = sample_tokens(logits, sampling.temperature, sampling.top_p, u)
            token_list, logp_list = tokens.tolist(), logps.tolist()  # one device sync per step
            check_sampled(logp_list if tokens.dim() == 1 else sum(logp_list, []))
            for j, i in enumerate(rows):
                if done[j]:
                    continue
                if tokens.dim() == 1:
                    new = [(token_list[j], logp_list[j])]
                else:  # the guesses the model agreed with, and its own token after them
                    kept_guesses = _agreed(guesses[j], token_list[j])
                    new = list(zip(token_list[j], logp_list[j], strict=True))[: kept_guesses + 1]
                if i in turns:
                    new, turns[i] = constrain(new, rules[i], turns[i], logits[j], table, eos)
                if tokens.dim() != 1:
                    kept_guesses = len(new) - 1
                    mask[j, mask.shape[1] - len(token_list[j]) + 1 + kept_guesses :] = 0
                    drafter.proposed += len(guesses[j])  # type: ignore[union-attr]
                    drafter.accepted += kept_guesses  # type: ignore[union-attr]
                for tok, logp in new:
                    out_ids[i].append(tok)
                    out_lps[i].append(logp)
                    reason = None
                    if tok in eos or stopper.hit(list(before[i][-stopper.window :]) + out_ids[i]):
                        reason = "stop"
                    elif len(out_ids[i]) >= budgets[i]:
                        reason = "length"
                    if reason is not None:
                        done[j] = True
                        results[i] = _finish(out_ids[i], out_lps[i], reason, eos, stopper, decode)
                        # the row's cache holds its prompt and all but its last token
                        held = list(prompt_ids[i]) + out_ids[i][:-1]
                        if keeps_rows and guessing:  # rejected guesses left holes
                            columns = mask[j].nonzero()[: len(held), 0]
                            finished[tuple(held)] = cache.export_row(j, held, columns)
                        elif keeps_rows:
                            finished[tuple(held)] = cache.export_row(j, held)
                        if guessing:
                            drafter.learn(prompt_ids[i], out_ids[i])  # type: ignore[union-attr]
                        break
                if guessing:
                    texts[i].extend([tok for tok, _ in new])
            n_done = sum(done)
            if n_done == len(rows):
                break
            last = torch.tensor([out_ids[i][-1] for i in rows], device=device)
            if n_done and (n_done * 4 >= len(rows) or not use_cache):
                keep = [j for j in range(len(rows)) if not done[j]]
                keep_t = torch.tensor(keep, device=device)
                rows = [rows[j] for j in keep]
                done = [False] * len(rows)
                ids, mask, last, draws = ids[keep_t], mask[keep_t], last[keep_t], draws[keep_t]
                if cache is not None:
                    cache = backend.select_cache(cache, keep_t)
            if guessing:
                mask, guesses = _guesses(rows, done, texts, out_ids, budgets,
                                         num_speculative_tokens, cache, mask, start)  # fmt: skip
            if not guessing or not any(guesses):
                ids = torch.cat([ids, last[:, None]], dim=1) if not use_cache else last[:, None]
                mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
                logits = backend.forward_last(ids, mask, cache)
                continue
            width = 1 + max(map(len, guesses))
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            flags = torch.zeros((len(rows), width), dtype=mask.dtype)
            for j, i in enumerate(rows):
                ids[j, : 1 + len(guesses[j])] = torch.tensor([out_ids[i][-1], *guesses[j]])
                flags[j, : 1 + len(guesses[j])] = 1
            ids, mask = ids.to(device), torch.cat([mask, flags.to(device)], dim=1)
            logits = backend.forward_tokens(ids, mask, cache)
        del cache  # before the next batch allocates its own
    return results  # type: ignore[return-value]


def _agreed(guesses: list[int], chosen: list[int]) -> int:
    """How many leading guesses the model chose itself (``chosen[k]`` follows guess k)."""
    n = 0
    while n < len(guesses) and guesses[n] == chosen[n]:
        n += 1
    return n


def _guesses(
    rows: list[int], done: list[bool], texts: dict, out_ids: dict, budgets: Sequence[int],
    most: int, cache: Any, mask: torch.Tensor, start: int,
) -> tuple[torch.Tensor, list[list[int]]]:  # fmt: skip
    """Each row's guesses for the next step: at most ``most``, never past its token budget,
    and never so many that the cache could not hold every row's remaining budget after them (a
    rejected guess leaves a hole in its row). Where the room runs short, the holes of the
    decoded columns (``start`` on) are closed first (`StaticKVCache.close_holes`), which
    gives the mask a new shape: returns (the mask, the guesses)."""
    need = max((budgets[i] - len(out_ids[i]) for j, i in enumerate(rows) if not done[j]),
               default=0)  # fmt: skip
    if cache.capacity - cache.length - need < most and cache.length > start:
        mask = cache.close_holes(mask, start)
    spare = cache.capacity - cache.length - need
    return mask, [
        [] if done[j] else texts[i].propose(min(most, spare, budgets[i] - len(out_ids[i]) - 1))
        for j, i in enumerate(rows)
    ]


def _finish(
    ids: list[int],
    logprobs: list[float],
    reason: str,
    eos: set[int],
    stopper: StopChecker,
    decode: Callable[[list[int]], str],
) -> Completion:
    visible = ids[:-1] if ids and ids[-1] in eos else ids
    text = stopper.cut(decode(visible))
    return Completion(text=text, token_ids=list(ids), logprobs=list(logprobs), finish_reason=reason)
