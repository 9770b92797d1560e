"""Shared prefixes: `prefix_token_logprobs` (with gradients) and shared prompt prefill in
generation give the same numbers as processing every row on its own."""

import pytest
import torch

from tooltune.policies import kv_cache
from tooltune.policies.transformer import Transformer, TransformerConfig
from tooltune.rollout import SamplingParams


@pytest.fixture(scope="module")
def hf_policy(tmp_path_factory, tiny_qwen2):
    """A tiny random Qwen2 with a tokenizer trained here (no downloads)."""
    from tooltune.policies.hf import HFPolicy

    texts = ["The quick brown fox. Paris is the capital of France."] * 20
    return HFPolicy.from_pretrained(tiny_qwen2(tmp_path_factory.mktemp("prefix_qwen2"), texts))


def make_rows(vocab: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Two prefixes of different lengths and three continuations each, of different lengths."""
    g = torch.Generator().manual_seed(seed)
    prefixes = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (11, 6)]
    suffixes = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (2, 5, 3, 7, 4, 2)]
    return prefixes, suffixes


def plain_and_shared(policy, vocab: int):
    """Log-probs of the continuations, plain (whole rows) and with shared prefixes, plus the
    parameter gradients of the same scalar function of each."""
    prefixes, suffixes = make_rows(vocab)
    index = [0, 0, 0, 1, 1, 1]
    rows = [prefixes[g] + s for g, s in zip(index, suffixes, strict=True)]
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    # Continuations start at the prefix's last token (it predicts the first new token).
    starts = [len(prefixes[g]) - 1 for g in index]
    pw = max(starts)
    p_ids = torch.zeros((2, pw), dtype=torch.long)
    p_mask = torch.zeros_like(p_ids)
    for g, p in enumerate(prefixes):
        n = len(p) - 1
        p_ids[g, pw - n :] = torch.tensor(p[:-1])
        p_mask[g, pw - n :] = 1
    sw = max(len(r) - s for r, s in zip(rows, starts, strict=True))
    s_ids = torch.zeros((len(rows), sw), dtype=torch.long)
    s_mask = torch.zeros_like(s_ids)
    for b, (r, s) in enumerate(zip(rows, starts, strict=True)):
        s_ids[b, : len(r) - s] = torch.tensor(r[s:])
        s_mask[b, : len(r) - s] = 1
    weights = torch.linspace(0.5, 1.5, len(rows))

    def grads(loss):
        policy.model.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in policy.parameters() if p.grad is not None]

    plain = policy.token_logprobs(ids, mask)
    plain_scored = [
        plain[b, s : len(r) - 1] for b, (r, s) in enumerate(zip(rows, starts, strict=True))
    ]
    g_plain = grads(sum(w * x.sum() for w, x in zip(weights, plain_scored, strict=True)))
    shared = policy.prefix_token_logprobs(p_ids, p_mask, s_ids, s_mask, torch.tensor(index))
    shared_scored = [
        shared[b, : len(r) - s - 1] for b, (r, s) in enumerate(zip(rows, starts, strict=True))
    ]
    g_shared = grads(sum(w * x.sum() for w, x in zip(weights, shared_scored, strict=True)))
    policy.model.zero_grad(set_to_none=True)
    return plain_scored, shared_scored, g_plain, g_shared


def assert_same(plain, shared, g_plain, g_shared):
    for a, b in zip(plain, shared, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a, b)
    assert len(g_plain) == len(g_shared) > 0
    for a, b in zip(g_plain, g_shared, strict=True):
        scale = a.abs().max().clamp(min=1e-8)
        assert ((a - b).abs().max() / scale) < 1e-4


def test_builtin_prefix_logprobs_match_plain(tiny_policy):
    policy = tiny_policy.clone()
    for p in policy.parameters():
        p.requires_grad_(True)
    assert_same(*plain_and_shared(policy, policy.model.config.vocab_size))


def test_hf_prefix_logprobs_match_plain(hf_policy):
    hf_policy.model.eval()
    assert_same(*plain_and_shared(hf_policy, 250))


def test_past_kv_and_cache_are_exclusive():
    model = Transformer(TransformerConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2))
    ids = torch.tensor([[1, 2, 3]])
    kv = model.prefix_kv(ids)
    assert kv[0][0].shape == (1, 2, 3, 8)
    with pytest.raises(ValueError, match="either"):
        model(ids, cache=model.new_cache(1, 8), past_kv=kv)
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(ids, attention_mask=torch.ones(1, 3), past_kv=kv)


def test_builtin_shared_prefill_matches_per_row_prefill(tiny_policy, same_greedy):
    """GRPO-style batches (each prompt repeated) give the same tokens and log-probs whether
    each distinct prompt is prefilled once or once per row."""
    prompts = ["Paris is the capital", "The quick brown fox", "Paris is the capital"] * 2
    for sampling in (
        SamplingParams(temperature=0.0, max_new_tokens=8, stop=[]),
        SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, stop=[], seed=3),
    ):
        shared = tiny_policy.generate(prompts, sampling)
        per_row = tiny_policy.generate(prompts, sampling, share_prefill=False)
        if sampling.temperature == 0:
            same_greedy(shared, per_row, atol=1e-5)
            continue
        assert [c.token_ids for c in shared] == [c.token_ids for c in per_row]
        for a, b in zip(shared, per_row, strict=True):
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8, stop=[])
    batched = tiny_policy.generate(prompts, greedy)
    same_greedy(batched[:2], [tiny_policy.generate([p], greedy)[0] for p in prompts[:2]])
    assert len(set(batched[0].token_ids)) > 1  # a prefix-sensitive model, not one repeated token


def test_hf_shared_prefill_matches_per_row_prefill(hf_policy):
    policy = hf_policy
    prompts = ["The quick brown", "Paris is the capital of", "The quick brown"]
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=6, stop=[], seed=1)
    shared = policy.generate(prompts, sampling)
    per_row = policy.generate(prompts, sampling, share_prefill=False)
    assert [c.token_ids for c in shared] == [c.token_ids for c in per_row]
    for a, b in zip(shared, per_row, strict=True):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


def stop_only_one_row_reaches(policy, prompts: list[str], greedy: SamplingParams) -> str:
    """A stop string that one row's greedy text reaches within its first four tokens and no
    other row's prompt or text holds: so that row stops and the others run to the token budget.
    It comes from this model's own output: a string fixed in the test would hold only for the
    greedy text the weights and this CPU's rounding gave when it was chosen."""
    out = policy.generate(prompts, greedy, reuse_turns=False)
    for row, completion in enumerate(out):
        early = policy.decode(completion.token_ids[:4])
        others = [p + c.text for i, (p, c) in enumerate(zip(prompts, out, strict=True)) if i != row]
        for size in (3, 2, 1):
            for start in range(len(early) - size + 1):
                stop = early[start : start + size]
                if "\ufffd" not in stop and stop.strip() and not any(stop in o for o in others):
                    return stop
    raise AssertionError(f"no row's text can stop alone: {[c.text for c in out]}")


def tokens_prefilled(monkeypatch) -> list[int]:
    """A list that receives, for each prefill of the built-in model, the tokens it ran (those
    of kept prefixes not counted)."""
    runs: list[int] = []
    prefill = kv_cache.prefill

    def spy(model, ids, mask, cache, cached=None):
        runs.append(int(mask.sum()) - sum(len(c.ids) for c in (cached or {}).values()))
        return prefill(model, ids, mask, cache, cached)

    monkeypatch.setattr(kv_cache, "prefill", spy)
    return runs


def test_builtin_next_turn_reuses_the_finished_rows(tiny_policy, monkeypatch, same_greedy):
    """An episode's next turn continues the conversation the last call finished: it runs only
    its new tokens, with the same tokens and log-probs as prefilling the whole conversation,
    whether the rows finished early (stop string) or at the token budget."""
    policy = tiny_policy
    first = ["Paris is the capital", "The quick brown fox jumps", "What is 2 + 2?"]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6, stop=[])
    turn = SamplingParams(temperature=0.0, max_new_tokens=6,
                          stop=[stop_only_one_row_reaches(policy, first, greedy)])  # fmt: skip
    # the last two rows run the same number of new tokens after prefixes of different lengths
    follow = [policy.encode(" tool said: 42. Next"), policy.encode(" and"), policy.encode(" and")]

    def two_turns(reuse: bool):
        ids = [policy.encode(p) for p in first]
        out1 = policy.generate(first, turn, reuse_turns=reuse)
        nxt = [i + c.token_ids + f for i, c, f in zip(ids, out1, follow, strict=True)]
        nxt.append(policy.encode("A fresh prompt"))  # continues nothing: prefilled in full
        return out1, policy.generate([""] * len(nxt), turn, prompt_token_ids=nxt, reuse_turns=reuse)

    runs = tokens_prefilled(monkeypatch)
    out1, reused = two_turns(True)
    assert {c.finish_reason for c in out1} == {"stop", "length"}  # both ways of finishing
    ran_with_reuse = runs[1]
    runs.clear()
    _, full = two_turns(False)
    ran_in_full = runs[1]
    assert ran_with_reuse < ran_in_full - 20  # the three continued rows ran only their new tokens
    same_greedy(reused, full)

    # A weight update in between: nothing kept is used.
    policy = policy.clone()
    policy.generate(first, turn)
    with torch.no_grad():
        policy.model.norm.weight.mul_(1.01)
    runs.clear()
    ids = [policy.encode(p) for p in first]
    policy.generate(first[:1], turn, prompt_token_ids=[ids[0] + policy.encode(" more")])
    assert runs == [len(ids[0]) + len(policy.encode(" more"))]


def test_builtin_turns_written_in_pieces_match_whole_turns(
    tiny_policy, monkeypatch, stale_cache_memory, same_greedy
):
    """The collector writes a continuing policy's turns in pieces of DECODE_CHUNK tokens;
    greedy episodes are the same tokens as when each turn is one generate call (whose caches
    start on stale memory: the pieces' caches are assembled from cached prefixes)."""
    from dataclasses import replace

    from tooltune import rollout
    from tooltune.config import AgentConfig
    from tooltune.policies.builtin import BuiltinPolicy
    from tooltune.registry import ToolRegistry

    # the same weights with room for the system prompt (221 tokens with this small vocabulary)
    model = Transformer(replace(tiny_policy.model.config, max_seq_len=1024))
    model.load_state_dict(tiny_policy.model.state_dict())
    policy = BuiltinPolicy(model, tiny_policy.tokenizer)
    config = AgentConfig(max_turns=3, max_new_tokens=40, max_trajectory_len=1024)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=40, stop=[])
    prompts = ["Paris is the capital", "The quick brown fox jumps", "What is 2 + 2?"]

    def episodes(chunk: int):
        monkeypatch.setattr(rollout, "DECODE_CHUNK", chunk)
        collector = rollout.TrajectoryCollector(
            policy,
            ToolRegistry(),
            config,
            sampling=greedy,
            stop_after_cutoffs=None,
            tool_style="names",
        )
        return collector.collect(prompts)

    whole = episodes(1000)
    stale_cache_memory(lambda: model.new_cache(4, 1024))
    pieces = episodes(5)
    longest = max(len(run) for t in pieces for run in "".join(map(str, t.tokens.mask)).split("0"))
    assert longest > 2 * 5  # a turn spanned several pieces
    same_greedy([t.tokens for t in pieces], [t.tokens for t in whole])


def test_builtin_prompts_with_a_common_beginning_run_it_once(tiny_policy, monkeypatch, same_greedy):
    """A batch whose prompts share a long beginning (an evaluation's system prompt) runs it
    once; every row gets the tokens and log-probs it gets alone."""
    policy = tiny_policy
    system = "<|im_start|>system\nThe quick brown fox jumps over the lazy dog.<|im_end|>\n"
    prompts = [system + q for q in ("Paris is the capital", "What is 2 + 2?", "The answer")]
    common = len(policy.encode(system)) - 2  # BPE may merge across the boundary
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6, stop=[])
    runs: list[dict] = []
    prefill = kv_cache.prefill

    def spy(model, ids, mask, cache, cached=None):
        runs.append(dict(cached or {}))
        return prefill(model, ids, mask, cache, cached)

    monkeypatch.setattr(kv_cache, "prefill", spy)
    together = policy.generate(prompts, greedy, reuse_turns=False)
    shared = list(runs[0].values())
    assert len(shared) == 3 and shared[0] is shared[1] is shared[2]  # one run for all rows
    assert len(shared[0].ids) >= max(common, 16)
    alone = [policy.generate([p], greedy, reuse_turns=False)[0] for p in prompts]
    assert all(not r for r in runs[1:])  # a single prompt shares nothing
    policy.generate(prompts, greedy, reuse_turns=False, share_prefill=False)
    assert not runs[-1]  # no sharing asked for
    same_greedy(together, alone)


def test_builtin_stop_string_begun_in_an_earlier_piece_is_found(tiny_policy):
    """A turn written in pieces: a stop string whose first token came in the last piece still
    ends the turn as soon as its last token comes."""
    policy = tiny_policy
    free = SamplingParams(temperature=0.0, max_new_tokens=8, stop=[])

    def split_stop(text: str) -> tuple[list[int], list[int], int, str] | None:
        """(prompt, greedy tokens, k, stop): the stop string is the text of tokens k-1 and k,
        and neither the piece t[:k] nor token k alone holds it. Found in this model's own
        output: fixed token positions would hold only for the greedy text the weights and
        this CPU's rounding gave when they were chosen."""
        prompt = policy.encode(text)
        t = policy.generate([""], free, prompt_token_ids=[prompt], reuse_turns=False)[0].token_ids
        for k in range(2, len(t) - 1):
            stop = policy.decode(t[k - 1 : k + 1])
            whole = "\ufffd" not in stop and stop.strip()
            if (
                whole
                and stop not in policy.decode(t[:k])
                and stop not in policy.decode(t[k : k + 1])
            ):
                return prompt, t, k, stop
        return None

    texts = ["Paris is the capital", "The quick brown fox", "The answer is", "What is 2 + 2?"]
    found = [f for f in map(split_stop, texts) if f]
    assert found, "no prompt's greedy text has a stop string spanning two tokens"
    prompt, t, k, stop = found[0]
    sampling = SamplingParams(temperature=0.0, max_new_tokens=8, stop=[stop])
    piece = policy.generate(
        [""], sampling, prompt_token_ids=[prompt + t[:k]], reuse_turns=False,
        max_new_tokens=[5], generated_before=[t[:k]],
    )[0]  # fmt: skip
    assert piece.token_ids == t[k : k + 1] and piece.finish_reason == "stop"
    blind = policy.generate(
        [""], sampling, prompt_token_ids=[prompt + t[:k]], reuse_turns=False, max_new_tokens=[5]
    )[0]  # without the earlier piece the stop string is not seen
    assert len(blind.token_ids) > 1
    with pytest.raises(ValueError, match="one entry per prompt"):
        policy.generate([""], sampling, prompt_token_ids=[prompt], max_new_tokens=[5, 5])


@pytest.mark.parametrize("copy_head", [False, True], ids=["plain", "copy_head"])
def test_prefill_after_cached_prefixes_equals_a_full_prefill(copy_head):
    """Rows continuing cached prefixes with different numbers of new tokens (run together in
    power-of-two windows, the prefix's tail run again; with the copy head, exactly the new
    tokens) fill the cache and give the logits of a prefill from scratch. One row's window
    is longer than its whole prompt (left padding inside the window)."""
    from tooltune.policies.sampling import left_pad

    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                               max_seq_len=64, copy_head=copy_head)  # fmt: skip
    model = Transformer(config).eval()
    torch.nn.init.normal_(model.prev_mix.weight, std=0.3)  # starts at zero: give it an effect
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (12, 9, 10, 6, 7)]
    kept = [11, 6, 5, 1, 0]  # new tokens 1, 3, 5, 5 (windows 1, 4, 8, 8); the last is fresh
    cached = {}
    with torch.no_grad():
        for row, (p, m) in enumerate(zip(prompts, kept, strict=True)):
            if m:
                part = model.new_cache(1, m)
                model(torch.tensor([p[:m]]), cache=part)
                cached[row] = part.export_row(0, p[:m])
        ids, mask = left_pad(prompts, 0, torch.device("cpu"))
        width = ids.shape[1]
        reused, full = model.new_cache(5, width), model.new_cache(5, width)
        logits_reused = kv_cache.prefill(model, ids, mask, reused, cached)
        logits_full = kv_cache.prefill(model, ids, mask, full)
    torch.testing.assert_close(logits_reused, logits_full, rtol=1e-4, atol=1e-4)
    for row, p in enumerate(prompts):
        real = slice(width - len(p), width)
        torch.testing.assert_close(reused.k[:, row, :, real], full.k[:, row, :, real])
        torch.testing.assert_close(reused.v[:, row, :, real], full.v[:, row, :, real])
        torch.testing.assert_close(reused.copy_k[row, real], full.copy_k[row, real])


def test_new_episodes_start_from_a_system_prompt_an_earlier_call_ran(
    tiny_policy, monkeypatch, same_greedy
):
    """A prompt's first turn (the system prompt, up to its first end-of-turn token) is kept
    across generate calls: a later prompt with the same first turn runs only its own tokens,
    with the tokens of a full prefill; a weight update drops what was kept."""
    from tooltune.chat_format import IM_END

    policy = tiny_policy.clone()
    system = "You answer with tools: search the web, calculate, read a file." + IM_END
    n_system = len(policy.encode(system))
    assert n_system >= 16 and policy.encode(system)[-1] in policy._stop_ids
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6, stop=[])
    runs = tokens_prefilled(monkeypatch)
    policy.generate([system + "\nWhat is 2 + 2?"], greedy)
    later = [system + "\nThe quick brown fox", system + "\nParis is"]
    runs.clear()
    kept = policy.generate(later, greedy)
    assert runs == [sum(len(policy.encode(p)) - n_system for p in later)]
    same_greedy(kept, tiny_policy.clone().generate(later, greedy, reuse_turns=False))

    ((key, opening),) = policy._openings.items()
    with torch.no_grad():
        policy.model.norm.weight.mul_(1.01)
    policy.generate(later[:1], greedy)
    assert policy._openings[key] is not opening  # run again with the new weights
