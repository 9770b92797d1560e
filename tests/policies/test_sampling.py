"""The shared decode loop, driven by a scripted backend whose next token is known."""

import math

import pytest
import torch

from tooltune.policies import sampling
from tooltune.policies.sampling import StopChecker, generate_tokens, sample_tokens
from tooltune.rollout import SamplingParams

# A toy vocabulary: ids 0..4 are words, 5 is the end-of-turn token, 6 is padding.
WORDS = ["a", "b", " STOP", "c", "é"]
EOS, PAD = 5, 6
VOCAB = 7


def decode(ids):
    return "".join("<|im_end|>" if i == EOS else "" if i == PAD else WORDS[i] for i in ids)


class ScriptBackend:
    """Row r emits script[r] token by token (the row is recovered from its first prompt id)."""

    def __init__(self, scripts):
        self.scripts = scripts
        self.calls = []

    def new_cache(self, batch, capacity):
        return {"rows": None, "n": 0}

    def forward_last(self, ids, mask, cache):
        self.calls.append(tuple(ids.shape))
        if cache is not None:
            if cache["rows"] is None:
                cache["rows"] = [int(r) for r in ids[:, -1]]  # prompt = [row id]
            else:
                cache["n"] += 1
            rows, step = cache["rows"], cache["n"]
        else:
            rows = [int(r) for r in ids[:, 0]]  # full recompute: prompts are one token long
            step = ids.shape[1] - 1
        logits = torch.full((len(rows), VOCAB), -10.0)
        for j, r in enumerate(rows):
            script = self.scripts[r]
            logits[j, script[min(step, len(script) - 1)]] = 10.0
        return logits

    def select_cache(self, cache, rows):
        cache["rows"] = [cache["rows"][int(r)] for r in rows]
        return cache


def run(scripts, sampling, use_cache=True, max_seq_len=100, prompts=None, **options):
    backend = ScriptBackend(scripts)
    prompts = prompts or [[r] for r in range(len(scripts))]
    out = generate_tokens(
        backend, prompts, sampling, eos_ids=[EOS], pad_id=PAD, decode=decode,
        max_seq_len=max_seq_len, device=torch.device("cpu"), use_cache=use_cache, **options,
    )  # fmt: skip
    return out, backend


@pytest.mark.parametrize("use_cache", [True, False])
def test_eos_is_kept_in_ids_but_not_in_text(use_cache):
    out, _ = run([[0, 1, EOS, 0]], SamplingParams(temperature=0, stop=["<|im_end|>"]), use_cache)
    assert out[0].text == "ab"
    assert out[0].token_ids == [0, 1, EOS]
    assert out[0].finish_reason == "stop"
    assert len(out[0].logprobs) == 3 and all(lp <= 0 for lp in out[0].logprobs)


@pytest.mark.parametrize("use_cache", [True, False])
def test_text_stop_string_cuts_text_and_keeps_its_tokens(use_cache):
    out, _ = run([[0, 2, 1, 1]], SamplingParams(temperature=0, stop=["STOP"]), use_cache)
    assert out[0].text == "a "
    assert out[0].token_ids == [0, 2]
    assert out[0].finish_reason == "stop"


def test_stop_string_spanning_tokens_is_found():
    out, _ = run([[0, 1, 3, 0, 0]], SamplingParams(temperature=0, stop=["bc"]))
    assert out[0].text == "a" and out[0].token_ids == [0, 1, 3]


def test_length_budget_and_context_limit():
    out, _ = run([[0] * 50], SamplingParams(temperature=0, max_new_tokens=4, stop=[]))
    assert out[0].token_ids == [0] * 4 and out[0].finish_reason == "length"
    # The context (prompt of 1 + 3 new tokens) caps the budget below max_new_tokens.
    out, _ = run([[0] * 50], SamplingParams(temperature=0, max_new_tokens=10), max_seq_len=4)
    assert len(out[0].token_ids) == 3 and out[0].finish_reason == "length"
    # A prompt that already fills the context gets an empty "length" completion, not a crash.
    out, _ = run([[0]], SamplingParams(temperature=0), max_seq_len=5, prompts=[[0] * 5])
    assert out[0].token_ids == [] and out[0].text == "" and out[0].finish_reason == "length"


def test_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="empty"):
        run([[0]], SamplingParams(temperature=0), prompts=[[]])


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0.0), dict(max_new_tokens=-2)])
def test_bad_sampling_params_are_refused(bad):
    with pytest.raises(ValueError):
        run([[0]], SamplingParams(**bad))


def test_finished_rows_leave_the_batch():
    scripts = [[EOS]] + [[0] * 30 + [EOS]] * 3
    out, backend = run(scripts, SamplingParams(temperature=0, max_new_tokens=40))
    assert [len(o.token_ids) for o in out] == [1, 31, 31, 31]
    assert backend.calls[0] == (4, 1)  # the prefill holds every row
    assert backend.calls[-1] == (3, 1)  # the row done after one token was dropped


def test_rows_over_the_cache_limit_decode_in_batches():
    """Rows that one cache of `max_cache_positions` cannot hold run in batches of equal size,
    one after another, with the completions of one batch."""
    scripts = [[0, 1, EOS], [3, EOS], [1] * 5 + [EOS], [4, 4, EOS]]
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    whole, backend = run(scripts, greedy)
    assert backend.calls[0] == (4, 1)
    # a row takes 9 positions (a 1-token prompt and 8 new tokens): two fit in 18
    parts, backend = run(scripts, greedy, max_cache_positions=18)
    assert [c.token_ids for c in parts] == [c.token_ids for c in whole]
    assert backend.calls[0] == (2, 1) and max(rows for rows, _ in backend.calls) == 2


def test_cache_batches_are_even_and_within_the_limit():
    rows, lengths = [0, 1, 2, 3, 4, 5], [100, 90, 80, 70, 10, 10]
    budgets = [10] * 6
    assert sampling.cache_batches(rows, lengths, budgets, None) == [rows]
    assert sampling.cache_batches(rows, lengths, budgets, 6 * 110) == [rows]
    # one position short: two batches of three (the first sized by its longest row, 100)
    assert sampling.cache_batches(rows, lengths, budgets, 6 * 110 - 1) == [[0, 1, 2], [3, 4, 5]]
    assert sampling.cache_batches(rows, lengths, budgets, 50) == [[r] for r in rows]  # alone
    for limit in range(50, 700, 7):
        batches = sampling.cache_batches(rows, lengths, budgets, limit)
        assert [r for b in batches for r in b] == rows
        assert len({len(b) for b in batches[:-1]}) <= 1
        for b in batches:
            assert len(b) == 1 or len(b) * (max(lengths[r] for r in b) + 10) <= limit


def test_sample_tokens_greedy_and_top_p():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    tokens, lps = sample_tokens(logits, 0.0, 1.0, gen)
    assert tokens.tolist() == [1, 0]
    assert torch.allclose(lps, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])
    # A tiny nucleus keeps only the top token, whatever the seed.
    for seed in range(5):
        tokens, lps = sample_tokens(logits, 1.0, 1e-6, torch.Generator().manual_seed(seed))
        assert tokens.tolist() == [1, 0]
    # The reported log-prob is from the tempered, untruncated distribution.
    expected = torch.log_softmax(logits / 0.5, -1)[[0, 1], [1, 0]]
    assert torch.allclose(lps, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])
    tokens, lps = sample_tokens(logits, 0.5, 1e-6, torch.Generator().manual_seed(0))
    assert torch.allclose(lps, expected)


def test_sampling_frequencies_follow_temperature():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(4000, 3)
    tokens, _ = sample_tokens(logits, 1.0, 1.0, torch.Generator().manual_seed(1))
    freq = torch.bincount(tokens, minlength=3).float() / len(tokens)
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)
    # top_p=0.8 drops the 0.1 token entirely and renormalises the rest.
    tokens, _ = sample_tokens(logits, 1.0, 0.8, torch.Generator().manual_seed(1))
    assert int((tokens == 2).sum()) == 0
    assert math.isclose(float((tokens == 0).float().mean()), 0.7 / 0.9, abs_tol=0.03)


class BrokenBackend(ScriptBackend):
    """Row 1's logits go bad (all NaN, one NaN, or all -inf) at the second step."""

    def __init__(self, bad):
        super().__init__([[0, 1, 3, EOS]] * 2)
        self.bad = bad

    def forward_last(self, ids, mask, cache):
        logits = super().forward_last(ids, mask, cache)
        if cache["n"] == 1 and self.bad == "one":
            logits[1, 2] = float("nan")
        elif cache["n"] == 1:
            logits[1] = self.bad
        return logits


@pytest.mark.parametrize("bad", [float("nan"), "one", float("-inf")])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampling_from_broken_logits_is_a_clear_error(bad, temperature):
    sampling = SamplingParams(temperature=temperature, max_new_tokens=4, seed=0)
    with pytest.raises(ValueError, match="cannot sample"):
        generate_tokens(
            BrokenBackend(bad), [[0], [1]], sampling, eos_ids=[EOS], pad_id=PAD,
            decode=decode, max_seq_len=100, device=torch.device("cpu"),
        )  # fmt: skip


def test_stop_checker_cut_uses_earliest_stop():
    checker = StopChecker(["END", "\n\n"], decode)
    assert checker.cut("abc\n\nxEND") == "abc"
    assert checker.cut("no stop") == "no stop"
    assert not StopChecker([], decode).hit([0, 1])


def test_stop_checker_decodes_only_after_tokens_that_can_end_a_stop_string():
    texts = {0: "ab", 1: "E", 2: "N", 3: "D!", 4: "\ufffd"}
    calls = []

    def counting_decode(ids):
        calls.append(list(ids))
        return "".join(texts[i] for i in ids)

    checker = StopChecker(["END"], counting_decode)
    assert not checker.hit([0, 1, 2])  # "N" cannot end "END": no tail decoded
    assert [c for c in calls if len(c) > 1] == []
    assert checker.hit([0, 1, 2, 3])  # "D!" can, and the tail holds "END"
    assert not checker.hit([0, 3])  # it can, but the tail does not hold "END"
    assert checker.can_end(4)  # part of a character: checked to be safe
    assert StopChecker(["a "], counting_decode).can_end(0)  # a stop ending in a space: always


def test_common_beginning_leaves_each_prompt_a_token(monkeypatch):
    """The shared beginning of a batch's prompts: the longest common prefix, but never a whole
    prompt (each must run at least its last token for its logits), and nothing below the
    threshold or for a single prompt."""
    monkeypatch.setattr(sampling, "MIN_SHARED_PREFIX", 2)
    assert sampling.common_beginning([(1, 2, 3, 9), (1, 2, 3, 4, 5), (1, 2, 3, 7)]) == 3
    assert sampling.common_beginning([(1, 2, 3), (1, 2, 3, 4)]) == 2  # the first keeps one
    assert sampling.common_beginning([(1, 2, 3), (1, 5, 3)]) == 0  # 1 token: below 2
    assert sampling.common_beginning([(1, 2, 3)]) == 0
