"""Greedy decoding that checks guessed tokens gives the greedy output in fewer steps."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tooltune.policies import llama_forward  # noqa: E402
from tooltune.policies.drafting import Drafter  # noqa: E402
from tooltune.policies.hf import HFPolicy, position_ids_from_mask  # noqa: E402
from tooltune.rollout import SamplingParams  # noqa: E402

TEXT = "hello world, the answer is 42. the answer is 42, hello world."


def test_a_row_guesses_what_followed_its_last_tokens_before():
    drafter = Drafter()
    row = drafter.row([5, 6, 7, 8, 9, 5, 6])
    assert row.propose(3) == [7, 8, 9]  # after the earlier "5 6"
    assert row.propose(0) == []
    row.extend([1, 2])
    assert row.propose(3) == []  # "6 1 2" was never seen
    drafter.learn([3], [1, 2, 4, 4])  # an earlier completion: "1 2" went on "4 4"
    assert row.propose(3) == [4, 4]
    row.extend([4, 4, 5, 6])
    assert row.propose(2) == [1, 2]  # after the latest "5 6"


def test_rows_of_one_prompt_are_indexed_once_and_go_their_own_ways():
    drafter = Drafter()
    prompt = [5, 6, 7, 8, 9, 5, 6]
    first, second, other = drafter.rows([prompt, prompt, [1, 2, 1, 2]])
    assert first is not second and first.seen == second.seen == drafter.row(prompt).seen
    assert first.propose(3) == second.propose(3) == [7, 8, 9]
    first.extend([1, 2])
    assert first.tokens[-2:] == [1, 2] and second.tokens == prompt
    assert second.propose(3) == [7, 8, 9] and first.propose(3) == []
    assert other.propose(1) == [1]


def test_the_table_of_earlier_completions_is_bounded():
    drafter = Drafter(max_entries=10)
    for start in range(0, 100, 10):
        drafter.learn([], list(range(start, start + 10)))
    assert len(drafter.table) == 21  # cleared before the last completion's 21 runs (of 210)


def test_checked_guesses_give_the_logits_of_one_token_a_step():
    """`decode_tokens` of 3 tokens after a cache with left padding and a hole (a rejected
    guess's column, masked) gives the logits `transformers` gives the sequence without it."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    model = transformers.Qwen2ForCausalLM(config).eval()
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[:, 8] = 0  # a hole in both rows
    cache = llama_forward.StaticKVCache(model, 2, 12)
    with torch.no_grad():
        llama_forward.hidden_states(model, ids[:, :9], mask[:, :9], cache)
        ours = llama_forward.decode_tokens(model, ids[:, 9:], mask, cache)
        for row in range(2):
            real = mask[row].bool()
            kept, kept_mask = ids[row, real][None], mask[row, real][None]
            positions = position_ids_from_mask(kept_mask)
            theirs = model(input_ids=kept, attention_mask=kept_mask, position_ids=positions).logits
            torch.testing.assert_close(ours[row], theirs[0, -3:], rtol=1e-4, atol=1e-4)
    assert cache.length == 12


class Oracle(Drafter):
    """Guesses from the known greedy output (``full``: each row's prompt and completions),
    every third one wrong, so that steps both keep and reject guesses."""

    def __init__(self, full: list[list[int]]) -> None:
        super().__init__()
        self.full = full

    def row(self, tokens):
        return OracleRow(self, tokens)


class OracleRow:
    def __init__(self, oracle: Oracle, tokens) -> None:
        self.oracle, self.tokens = oracle, list(tokens)

    def extend(self, new) -> None:
        self.tokens += new

    def copy(self):
        return OracleRow(self.oracle, self.tokens)

    def propose(self, k: int) -> list[int]:
        n = len(self.tokens)
        for full in self.oracle.full:
            if full[:n] == self.tokens:
                guesses = full[n : n + max(k, 0)]
                return [t if (n + i) % 3 else (t - 1 if t else 1) for i, t in enumerate(guesses)]
        return []


def test_greedy_with_guesses_is_greedy(tmp_path, tiny_qwen2, stale_cache_memory, same_greedy):
    """Guessed tokens checked a few at a time give the tokens and log-probs of one token a step,
    turn after turn (the next turn continues the rows the last call kept, whose caches have
    holes where guesses were rejected; the holes are closed where room runs short), in fewer
    steps."""
    path = tiny_qwen2(tmp_path / "m", [TEXT] * 20)
    policy = HFPolicy.from_pretrained(path)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=24, stop=[])
    first = [policy.encode(TEXT), policy.encode("the answer is 42, the"), policy.encode("hello")]
    tail = policy.encode(" hello")

    def turns(k: int, drafter=None):
        policy.num_speculative_tokens, policy.drafter = k, drafter
        policy.release_turns()
        stale_cache_memory(lambda: llama_forward.StaticKVCache(policy.model, 3, 128))
        one = policy.generate([""] * 3, greedy, first)
        second = [p + c.token_ids + tail for p, c in zip(first, one, strict=True)]
        return one + policy.generate([""] * 3, greedy, second), second

    steps, closed = [], []
    decode, close = llama_forward.decode_tokens, llama_forward.StaticKVCache.close_holes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llama_forward, "decode_tokens", lambda *a: steps.append(1) or decode(*a))
        patch.setattr(llama_forward.StaticKVCache, "close_holes",
                      lambda *a: closed.append(1) or close(*a))  # fmt: skip
        plain, second = turns(0)
        plain_steps, steps[:] = len(steps), []
        full = [p + c.token_ids for p, c in zip(first + second, plain, strict=True)]
        guessed, _ = turns(8, Oracle(full))  # 8 guesses, at most 2 kept: holes fill the room
    assert policy.drafter is not None and len(steps) < plain_steps and closed
    same_greedy(guessed, plain)
    assert 0 < policy.drafter.accepted < policy.drafter.proposed


def test_guesses_come_from_earlier_completions(tmp_path, tiny_qwen2, same_greedy):
    """The default drafter learns each finished completion: the same prompts again are
    decoded from its guesses, mostly kept, with the same output; a guess count that is no
    whole number >= 0 is a clear error that keeps the model's mode."""
    path = tiny_qwen2(tmp_path / "m", [TEXT] * 20)
    policy = HFPolicy.from_pretrained(path)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16, stop=[])
    prompts = [policy.encode(TEXT), policy.encode("the answer is")]
    once = policy.generate(["", ""], greedy, prompts, reuse_turns=False)
    accepted = policy.drafter.accepted
    again = policy.generate(["", ""], greedy, prompts, reuse_turns=False)
    same_greedy(again, once)
    assert policy.drafter.accepted - accepted >= 16  # of 2 x 15 checked
    policy.model.train()
    for bad in (-1, 2.5, True):
        policy.num_speculative_tokens = bad
        with pytest.raises(ValueError, match="num_speculative_tokens"):
            policy.generate([""], greedy, prompts[:1])
    assert policy.model.training


def same_samples(policy, prompts, a, b, sample) -> None:
    """Sampled completions of two computations equal in exact arithmetic, drawn with the same
    uniform numbers: the same tokens, up to a rounding tie. Inverse-CDF sampling turns a
    rounding difference into another token only where a number sits on the boundary between
    two tokens, so a row may part only into two tokens with (next to) no nucleus mass between
    them in vocabulary order; it is compared up to there."""
    from tooltune.policies.sampling import _nucleus

    for row, (prompt, x, y) in enumerate(zip(prompts, a, b, strict=True)):
        xs, ys = x.token_ids, y.token_ids
        n = 0
        while n < min(len(xs), len(ys)) and xs[n] == ys[n]:
            n += 1
        if n == len(xs) == len(ys):
            continue
        assert n < min(len(xs), len(ys)), f"row {row}: one ended at token {n}"
        ids = torch.tensor([prompt + xs[:n]])
        with torch.no_grad():
            logits = policy.model(ids).logits[0, -1] / sample.temperature
        probs = _nucleus(torch.softmax(logits, dim=-1)[None], sample.top_p)[0]
        low, high = sorted((xs[n], ys[n]))
        between = float(probs[low + 1 : high].sum() / probs.sum())
        assert between < 1e-3, f"row {row}: token {n} differs ({xs[n]} / {ys[n]}), not at a tie"


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sampling_with_guesses_draws_the_tokens_of_one_token_a_step(tmp_path, tiny_qwen2, top_p):
    """Every position's uniform number is drawn before decoding, so sampling that checks
    guesses draws the very tokens sampling one token a step draws with the same seed (and
    log-probs the scoring of those tokens gives: what GRPO's ratio starts from), in fewer
    steps, in a first turn and in a second that continues the kept rows with holes."""
    path = tiny_qwen2(tmp_path / "m", [TEXT] * 20)
    policy = HFPolicy.from_pretrained(path, dtype="float32")
    sample = SamplingParams(temperature=0.1, top_p=top_p, max_new_tokens=24, stop=[], seed=3)
    first = [policy.encode(TEXT), policy.encode("the answer is 42, the"), policy.encode("hello")]
    tail = policy.encode(" hello")
    steps, decode = [], llama_forward.decode_tokens

    def turns(k: int, drafter=None):
        policy.num_speculative_tokens, policy.drafter = k, drafter
        policy.release_turns()
        one = policy.generate([""] * 3, sample, first)
        second = [p + c.token_ids + tail for p, c in zip(first, one, strict=True)]
        return one + policy.generate([""] * 3, sample, second), second

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llama_forward, "decode_tokens", lambda *a: steps.append(1) or decode(*a))
        plain, second = turns(0)
        plain_steps, steps[:] = len(steps), []
        full = [p + c.token_ids for p, c in zip(first + second, plain, strict=True)]
        guessed, _ = turns(4, Oracle(full))  # the tokens drawn, every third guess wrong
    same_samples(policy, first + second, guessed, plain, sample)
    assert len(steps) < plain_steps and 0 < policy.drafter.accepted < policy.drafter.proposed
    for prompt, c in zip(first + second, guessed, strict=True):
        ids = torch.tensor([prompt + c.token_ids])
        with torch.no_grad():
            logits = policy.model(ids).logits[0, len(prompt) - 1 : -1] / sample.temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, len(prompt) :, None])
        torch.testing.assert_close(torch.tensor(c.logprobs), logp[:, 0], rtol=1e-4, atol=1e-3)
