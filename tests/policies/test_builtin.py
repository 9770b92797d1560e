import math

import pytest
import torch

from tooltune.chat_format import IM_END, IM_START, SPECIAL_TOKENS, TOOL_CALL_OPEN, render_prompt
from tooltune.policies.builtin import BuiltinPolicy
from tooltune.policies.tokenizer import BPETokenizer
from tooltune.policies.transformer import MODEL_SIZES, Transformer, config_for_size
from tooltune.rollout import SamplingParams
from tooltune.training.schedule import make_scheduler


def chat_prompt(question: str) -> str:
    return render_prompt(
        [{"role": "system", "content": "You use tools."}, {"role": "user", "content": question}]
    )


GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24, stop=[])
PROMPTS = [chat_prompt("What is 2 + 2?"), "A quick", chat_prompt("Capital of France? Search it.")]


def test_tokenizer_round_trip_and_special_tokens(tmp_path, texts):
    tok = BPETokenizer.train(texts, vocab_size=512)
    for special in SPECIAL_TOKENS:
        assert len(tok.encode(special)) == 1
    text = f'{IM_START}user\nnaïve 日本 {{"a": [1, 2]}}{IM_END}{TOOL_CALL_OPEN}'
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids[0] == tok.token_id(IM_START) and tok.token_id(TOOL_CALL_OPEN) in ids
    tok.save(tmp_path / "tok.json")
    assert BPETokenizer.load(tmp_path / "tok.json").encode(text) == ids


def test_named_sizes_span_one_to_fifty_million_parameters():
    counts = {}
    for size in MODEL_SIZES:
        with torch.device("meta"):
            counts[size] = Transformer(config_for_size(size, 4096)).num_parameters()
    assert 1e6 <= counts["tiny"] < 2e6
    assert 40e6 <= counts["large"] <= 60e6
    assert sorted(counts.values()) == list(counts.values())


def test_generation_is_deterministic_under_seed(tiny_policy):
    sampling = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=20, stop=[], seed=7)
    a = tiny_policy.generate(PROMPTS, sampling)
    b = tiny_policy.generate(PROMPTS, sampling)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [c.logprobs for c in a] == [c.logprobs for c in b]
    sampling.seed = 8
    c = tiny_policy.generate(PROMPTS, sampling)
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_kv_cache_matches_full_recompute(tiny_policy, same_greedy):
    cached = tiny_policy.generate(PROMPTS, GREEDY)
    full = tiny_policy.generate(PROMPTS, GREEDY, use_cache=False)
    same_greedy(cached, full)


def test_batched_matches_unbatched_with_left_padding(tiny_policy, same_greedy):
    lengths = [len(tiny_policy.encode(p)) for p in PROMPTS]
    assert len(set(lengths)) == len(PROMPTS)  # rows really are padded differently
    batched = tiny_policy.generate(PROMPTS, GREEDY)
    single = [tiny_policy.generate([p], GREEDY)[0] for p in PROMPTS]
    same_greedy(batched, single)
    assert varied_rows(batched)  # the model writes varied text, not one repeated token


def varied_rows(completions) -> int:
    """Rows with a varied continuation, not one repeated token: a model that repeats one token
    whatever the input would make comparisons vacuous. Not every row: which prompts a random
    model ends at once (end token first) depends on its weights, so a check on every row, or
    on two, held for some seeds' weights only."""
    return sum(len(set(c.token_ids)) > 3 for c in completions)


def test_prompt_token_ids_are_used_verbatim(tiny_policy):
    ids = tiny_policy.encode(PROMPTS[1])
    by_ids = tiny_policy.generate(["ignored"], GREEDY, prompt_token_ids=[ids])
    by_text = tiny_policy.generate([PROMPTS[1]], GREEDY)
    assert by_ids[0].token_ids == by_text[0].token_ids


def test_stop_string_truncates_text_but_keeps_ids(tiny_policy):
    # the prompt the model writes most after (a random model may end some prompts at once)
    prompt, free = max(
        ((p, tiny_policy.generate([p], GREEDY)[0]) for p in PROMPTS),
        key=lambda pair: len(pair[1].text),
    )
    assert len(free.text) > 6
    stop = free.text[3:6]  # a string the model is known to produce
    stopped = tiny_policy.generate([prompt], SamplingParams(**{**vars(GREEDY), "stop": [stop]}))[0]
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text and free.text.startswith(stopped.text + stop)
    n = len(stopped.token_ids)
    assert stopped.token_ids == free.token_ids[:n]
    assert stop in tiny_policy.decode(stopped.token_ids)
    assert stop not in tiny_policy.decode(stopped.token_ids[:-1])


def test_token_logprobs_match_sampling_logprobs_and_carry_gradients(tiny_policy):
    policy = tiny_policy.clone()
    for p in policy.parameters():
        p.requires_grad_(True)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=12, stop=[], seed=3)
    completions = policy.generate(PROMPTS[:2], sampling)
    seqs = [policy.encode(p) + c.token_ids for p, c in zip(PROMPTS[:2], completions, strict=True)]
    width = max(map(len, seqs))
    ids = torch.full((2, width), policy.pad_token_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for row, s in enumerate(seqs):  # right padding, as trainers collate
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
    policy.train()
    logp = policy.token_logprobs(ids, mask)
    assert logp.shape == (2, width - 1)
    for row, (s, c) in enumerate(zip(seqs, completions, strict=True)):
        n = len(c.token_ids)
        got = logp[row, len(s) - 1 - n : len(s) - 1]
        assert torch.allclose(got, torch.tensor(c.logprobs), atol=1e-4)
    assert (logp[0, len(seqs[0]) - 1 :] == 0).all() and (logp[1, len(seqs[1]) - 1 :] == 0).all()
    (-logp.sum()).backward()
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_token_logprobs_ignore_padding_side(tiny_policy):
    seq = tiny_policy.encode(PROMPTS[0])
    alone = tiny_policy.token_logprobs(
        torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long)
    )
    pad = tiny_policy.pad_token_id
    left = torch.tensor([[pad] * 5 + seq])
    left_mask = torch.tensor([[0] * 5 + [1] * len(seq)])
    with torch.no_grad():
        shifted = tiny_policy.token_logprobs(left, left_mask)
    assert torch.allclose(shifted[0, 5:], alone[0].detach(), atol=1e-5)


def test_save_load_round_trip(tiny_policy, tmp_path):
    tiny_policy.save(tmp_path / "policy")
    assert {p.name for p in (tmp_path / "policy").iterdir()} == {
        "config.json", "tokenizer.json", "model.pt",
    }  # fmt: skip
    loaded = BuiltinPolicy.load(tmp_path / "policy")
    sampling = SamplingParams(temperature=0.8, max_new_tokens=16, stop=[], seed=1)
    a = tiny_policy.generate(PROMPTS, sampling)
    b = loaded.generate(PROMPTS, sampling)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [c.logprobs for c in a] == [c.logprobs for c in b]


def test_clone_is_frozen_and_independent(tiny_policy):
    ref = tiny_policy.clone()
    assert not any(p.requires_grad for p in ref.parameters())
    assert not ref.model.training
    with torch.no_grad():
        ref.model.embed.weight.add_(1.0)
    assert not torch.equal(ref.model.embed.weight, tiny_policy.model.embed.weight)


@pytest.mark.parametrize("seed", [0, 1])
def test_sft_steps_make_the_model_reproduce_a_string(texts, seed):
    # Warm-up then cosine decay, as SFT runs: at a constant 3e-3 AdamW can jump out of the
    # minimum in the last steps on one CPU's rounding and not another's. What the test means is
    # that the model learned the string: its best loss is small and greedy decoding writes it.
    target = chat_prompt("Say the code.") + 'The code is <tool_call>{"x": 731}</tool_call>' + IM_END
    policy = BuiltinPolicy.create([target] * 5 + texts, size="tiny", seed=seed, vocab_size=512)
    prompt = chat_prompt("Say the code.")
    ids = torch.tensor([policy.encode(target)])
    mask = torch.ones_like(ids)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    scheduler = make_scheduler(opt, total_steps=150, warmup_ratio=0.1)
    policy.train()
    losses = []
    for _ in range(150):
        loss = -policy.token_logprobs(ids, mask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        scheduler.step()
        losses.append(loss.item())
    assert min(losses) < 0.05 < losses[0]
    out = policy.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=40))[0]
    assert out.text == 'The code is <tool_call>{"x": 731}</tool_call>'
    assert out.token_ids[-1] == policy.eos_token_id and out.finish_reason == "stop"


def test_rows_that_finish_early_leave_the_others_unchanged(tiny_policy, same_greedy):
    # The long prompt leaves room for only 3 new tokens (max_seq_len=256), so its row finishes
    # first and is dropped from the batch and the KV cache while the others continue.
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 40
    ids = tiny_policy.encode(long_prompt)
    ids = ids[: tiny_policy.max_seq_len - 3]
    prompts = ["long", PROMPTS[0], PROMPTS[1], PROMPTS[2]]
    prompt_ids = [ids] + [tiny_policy.encode(p) for p in PROMPTS]
    batched = tiny_policy.generate(prompts, GREEDY, prompt_token_ids=prompt_ids)
    assert len(batched[0].token_ids) == 3 and batched[0].finish_reason == "length"
    same_greedy(batched[1:], [tiny_policy.generate([p], GREEDY)[0] for p in PROMPTS])


def test_a_name_has_the_same_tokens_wherever_it_appears(texts):
    tok = BPETokenizer.train([*texts, "Laheith Laheith 'Laheith' \"Laheith\""] * 3, vocab_size=512)
    name = tok.encode("Laheith")
    for context in ("Where is Laheith?", "name = 'Laheith'", '{"company": "Laheith"}'):
        ids = tok.encode(context)
        assert any(ids[i : i + len(name)] == name for i in range(len(ids))), context
    assert tok.encode("x 2025")[-4:] == [tok.encode(d)[0] for d in "2025"]  # one token a digit


def test_old_checkpoints_without_the_previous_token_mix_still_load(tiny_policy, tmp_path):
    import json

    tiny_policy.save(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["model"]["prev_token_mix"]
    meta["model"]["vocab_size"] = tiny_policy.model.config.vocab_size
    state = torch.load(tmp_path / "model.pt")
    del state["prev_mix.weight"]
    torch.save(state, tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps(meta))
    loaded = BuiltinPolicy.load(tmp_path)
    assert loaded.model.prev_mix is None and not loaded.model.config.prev_token_mix


@pytest.mark.parametrize(
    "change", [{"n_kv_heads": "x"}, {"n_kv_heads": 3}, {"from_a_newer_version": 1}]
)
def test_a_config_with_unusable_model_settings_is_a_clear_error(tiny_policy, tmp_path, change):
    import json

    tiny_policy.save(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"].update(change)
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="config.json has model settings"):
        BuiltinPolicy.load(tmp_path)


def test_copy_head_mixes_a_pointer_over_the_context_into_the_vocabulary(texts):
    policy = BuiltinPolicy.create(texts, size="tiny", seed=0, vocab_size=512, copy_head=True)
    model = policy.model
    ids = torch.tensor([policy.encode("Qwerty Zxcv Qwerty")])
    with torch.no_grad():
        torch.nn.init.zeros_(model.copy_q.weight)  # uniform attention over the tokens so far
        model.copy_match.zero_()
        model.copy_gate.bias.fill_(-30.0)  # all mass on the pointer
        logp = model(ids)
    probs = logp.exp()
    assert torch.allclose(probs.sum(-1), torch.ones(ids.shape))
    vocab_only = model.norm(model._hidden(ids, None, None, None)) @ model.embed.weight.T
    assert torch.allclose(probs[0, 0], vocab_only[0, 0].softmax(-1))  # nothing to point at yet
    for t in range(1, ids.shape[1]):  # p(w) = share of the tokens that followed 0..t-1 that are w
        followers = ids[0, 1 : t + 1].tolist()
        expected = torch.zeros(model.config.vocab_size)
        for w in followers:
            expected[w] += 1 / len(followers)
        assert torch.allclose(probs[0, t], expected, atol=1e-5)
    with torch.no_grad():
        model.copy_gate.bias.fill_(30.0)  # all mass on the vocabulary: a plain output head
        plain = model.norm(model._hidden(ids, None, None, None)) @ model.embed.weight.T
        assert torch.allclose(model(ids).exp(), plain.softmax(-1), atol=1e-5)
    with torch.no_grad():  # both parts, attention not uniform: training's path agrees
        model.copy_gate.bias.fill_(0.0)
        torch.nn.init.normal_(model.copy_q.weight, std=0.5)
        model.copy_match.fill_(1.0)
    targets = ids[:, 1:, None]
    assert torch.allclose(
        model.target_logprobs(ids), model(ids)[:, :-1].gather(-1, targets).squeeze(-1), atol=1e-5
    )


def test_copy_head_continues_the_longest_match_and_its_gate_sees_the_proposal(texts):
    policy = BuiltinPolicy.create(texts, size="tiny", seed=0, vocab_size=512, copy_head=True)
    model = policy.model
    ids = torch.tensor([[5, 7, 7, 7, 9, 3, 5, 7, 7, 7]])  # "7779" copied again: which 7 follows?
    with torch.no_grad():
        torch.nn.init.zeros_(model.copy_q.weight)
        model.copy_match.fill_(10.0)
        torch.nn.init.zeros_(model.copy_gate.weight)
        model.copy_gate.bias.fill_(-30.0)
        probs = model(ids)[0].exp()
        # after "5 7 7 7" only position 3 matches four tokens: it writes the 9 that followed
        assert probs[-1, 9] > 0.99
        assert probs[-2, 7] > 0.99  # after "5 7 7": the third 7
        # a gate that refuses to propose 9: the same position now writes from the vocabulary
        e7, e9 = model.embed.weight[7], model.embed.weight[9]
        refuse_9 = e9 - (e9 @ e7) / (e7 @ e7) * e7  # orthogonal to 7's embedding
        model.copy_gate.weight[0, model.config.d_model :] = refuse_9 * 1e3 / (refuse_9 @ e9)
        vocab = (model.norm(model._hidden(ids, None, None, None)) @ model.embed.weight.T).softmax(
            -1
        )
        assert torch.allclose(model(ids)[0, -1].exp(), vocab[0, -1], atol=1e-4)
        assert model(ids)[0, -2, 7].exp() > 0.99  # proposals other than 9 are unaffected


def test_copy_head_points_only_at_earlier_turns(texts):
    policy = BuiltinPolicy.create(texts, size="tiny", seed=0, vocab_size=512, copy_head=True)
    model = policy.model
    turn = model.config.turn_start_id
    assert turn == policy.tokenizer.token_id("<|im_start|>")
    with torch.no_grad():
        torch.nn.init.zeros_(model.copy_q.weight)
        model.copy_match.fill_(10.0)
        model.copy_gate.bias.fill_(-30.0)
        two_turns = model(torch.tensor([[turn, 5, 7, 9, turn, 5, 7]]))[0].exp()
        assert two_turns[-1, 9] > 0.99  # copied from the earlier turn
        one_turn = torch.tensor([[turn, 5, 7, 9, 5, 7]])
        vocab = model.norm(model._hidden(one_turn, None, None, None)) @ model.embed.weight.T
        # inside its own turn the pointer has nothing to point at: the vocabulary alone speaks
        assert torch.allclose(model(one_turn)[0].exp(), vocab[0].softmax(-1), atol=1e-5)


def test_a_checkpoint_from_another_model_version_fails_clearly(texts, tmp_path):
    policy = BuiltinPolicy.create(texts, size="tiny", seed=0, vocab_size=512, copy_head=True)
    policy.save(tmp_path)
    state = torch.load(tmp_path / "model.pt")
    del state["copy_next.weight"]  # as saved before keys saw the token they would write
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="another version of the built-in model"):
        BuiltinPolicy.load(tmp_path)


def test_attention_groups_skip_padding_only_where_it_pays():
    from tooltune.policies.kv_cache import GROUP_CALL_COST, attention_groups

    # rows sorted longest first: two long rows, then three short ones (first real columns)
    assert attention_groups([0, 10, 600, 600, 610], 700) == [(0, 2, 0), (2, 5, 592)]
    assert attention_groups([0, 0, 0], 700) == [(0, 3, 0)]  # nothing to skip: one call
    # skipping 16 columns of one row does not pay for another call
    assert GROUP_CALL_COST > 16
    assert attention_groups([0, 16], 700) == [(0, 2, 0)]


def test_grouped_attention_decodes_exactly_as_one_call(tiny_policy, monkeypatch, same_greedy):
    import tooltune.policies.kv_cache as kv_cache
    import tooltune.policies.transformer as transformer

    long = chat_prompt("Tell me everything about the capital of France, please. " * 6)
    prompts = [long, "The quick", long + " Now", "A"]
    plans = []
    plan = transformer.attention_groups
    monkeypatch.setattr(
        transformer, "attention_groups", lambda *a: plans.append(plan(*a)) or plans[-1]
    )
    grouped = tiny_policy.generate(prompts, GREEDY)
    assert any(len(p) > 1 for p in plans)  # the long and the short rows were split
    monkeypatch.setattr(kv_cache, "GROUP_CALL_COST", 10**9)
    plans.clear()
    single = tiny_policy.generate(prompts, GREEDY)
    assert all(len(p) == 1 for p in plans)
    same_greedy(grouped, single, atol=1e-5)


def test_a_dropped_cache_gives_its_memory_to_the_next(tiny_policy):
    import gc

    cache = tiny_policy.model.new_cache(2, 64)
    memory = {cache.k.data_ptr(), cache.v.data_ptr()}
    del cache
    gc.collect()
    smaller = tiny_policy.model.new_cache(1, 64)  # fits in either buffer
    assert {smaller.k.data_ptr(), smaller.v.data_ptr()} <= memory


def test_the_cache_memory_pool_holds_a_bounded_amount():
    import gc

    from tooltune.policies.kv_cache import CacheMemory

    class Owner:
        pass

    pool = CacheMemory(keep=2, max_bytes=1000 * 4)  # room for 1,000 floats
    owners = [Owner() for _ in range(4)]
    for owner, n in zip(owners, (100, 200, 300, 2000), strict=True):
        pool.empty(owner, (n,), "cpu", torch.float32)
    del owners
    gc.collect()
    # the 2,000-float buffer exceeds the bytes allowed; of the rest, the largest two are kept
    assert sorted(b.numel() for b in pool.free) == [200, 300]


def test_reused_cache_memory_holds_no_stale_numbers_that_attention_reads(
    tiny_policy, stale_cache_memory
):
    prompts = [PROMPTS[0], PROMPTS[1]]  # left padding in the second row
    before = tiny_policy.generate(prompts, GREEDY)
    stale_cache_memory(lambda: tiny_policy.model.new_cache(4, 1024))
    after = tiny_policy.generate(prompts, GREEDY)
    assert [c.token_ids for c in after] == [c.token_ids for c in before]
    assert all(math.isfinite(lp) for c in after for lp in c.logprobs)


@pytest.mark.parametrize("T", [1, 3])
def test_decoding_masks_and_positions_equal_the_general_ones(T):
    from tooltune.policies.transformer import padded_causal_mask, token_positions

    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]])
    S = mask.shape[1]
    cumsum = (mask.cumsum(-1) - 1).clamp(min=0)[:, S - T :]
    assert torch.equal(token_positions(mask, T), cumsum)
    q_pos = torch.arange(S - T, S)[:, None]
    k_pos = torch.arange(S)[None, :]
    general = ((k_pos <= q_pos) & mask.bool()[:, None, :]) | (k_pos == q_pos)
    flags = mask.bool()
    assert torch.equal(padded_causal_mask(flags, T), general[:, None])
    assert torch.equal(flags, mask.bool())  # the caller's mask is left alone


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_grouped_query_attention_equals_query_heads_with_repeated_keys_and_values(
    texts, n_kv_heads, same_greedy
):
    """A model whose query heads share key/value heads computes what a model with one key/value
    head per query head computes when those heads hold the shared head's weights: query head h
    reads key/value head h // (n_heads / n_kv_heads), in the training forward, the prefill and
    the decoding step (which folds a group's query heads into rows of one product)."""
    grouped = BuiltinPolicy.create(
        texts, size="tiny", seed=0, vocab_size=512, max_seq_len=256, n_kv_heads=n_kv_heads
    )
    full = BuiltinPolicy.create(
        texts, size="tiny", seed=0, vocab_size=512, max_seq_len=256, n_kv_heads=4
    )
    full.tokenizer = grouped.tokenizer
    assert full.model.config.n_kv_heads == 4
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in grouped.model.named_parameters():
            if p.dim() == 2:  # sharp random weights, as in the `tiny_policy` fixture
                std = 0.1 if name == "embed.weight" else 2.0 * p.shape[1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        state = grouped.model.state_dict()

        def per_query_head(w: torch.Tensor) -> torch.Tensor:  # [n_kv_heads * 32, 128]
            return w.view(n_kv_heads, 32, 128).repeat_interleave(4 // n_kv_heads, 0).flatten(0, 1)

        for i in range(len(grouped.model.blocks)):
            name = f"blocks.{i}.attn.qkv.weight"
            q, k, v = state[name].split([128, 32 * n_kv_heads, 32 * n_kv_heads])
            state[name] = torch.cat([q, per_query_head(k), per_query_head(v)])
        full.model.load_state_dict(state)
    assert grouped.model.num_parameters() < full.model.num_parameters()

    ids = torch.tensor([grouped.encode(PROMPTS[0])])
    torch.testing.assert_close(grouped.model(ids), full.model(ids), atol=1e-4, rtol=1e-4)
    a = grouped.generate(PROMPTS, GREEDY)  # left-padded rows: prefill, then decoding steps
    b = full.generate(PROMPTS, GREEDY)
    same_greedy(a, b)
    assert varied_rows(a)
    cache = grouped.model.new_cache(2, 8)
    assert cache.k.shape == (4, 2, n_kv_heads, 8, 32)  # the cache holds the shared heads only


def test_query_heads_must_divide_among_the_key_value_heads():
    with pytest.raises(ValueError, match="n_kv_heads"):
        config_for_size("tiny", 512, n_kv_heads=3)
    assert config_for_size("tiny", 512, n_kv_heads=None).n_kv_heads == 4


def test_checkpoints_saved_before_key_value_heads_were_configurable_load_as_before(texts, tmp_path):
    import json

    policy = BuiltinPolicy.create(texts, size="tiny", seed=0, vocab_size=512, n_kv_heads=4)
    policy.save(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["model"]["n_kv_heads"]
    (tmp_path / "config.json").write_text(json.dumps(meta))
    loaded = BuiltinPolicy.load(tmp_path)
    assert loaded.model.config.n_kv_heads == loaded.model.config.n_heads == 4
    ids = torch.tensor([policy.encode(PROMPTS[0])])
    torch.testing.assert_close(loaded.model(ids), policy.model(ids))
