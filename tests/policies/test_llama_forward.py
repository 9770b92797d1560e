"""tooltune's direct Llama-family forward computes what the `transformers` forward computes."""

import copy
import math
import weakref

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from tooltune.policies import llama_forward, sampling  # noqa: E402
from tooltune.policies.hf import HFPolicy, LoraSettings, position_ids_from_mask  # noqa: E402
from tooltune.rollout import SamplingParams  # noqa: E402

SHAPE = dict(
    vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
)  # fmt: skip


def assert_gradient_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """fp32 gradients summed in another order: close relative to the tensor's own scale (LoRA
    gradients here reach ~26, where 3e-5 is ~16 float32 ulps; another CPU's summation order
    moved one entry by 7.6e-5, a wrong gradient moves them by the scale itself)."""
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=max(3e-5, 2e-5 * scale))


def sharpened(model):
    """Larger random weights, so every output depends on the whole context."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 2.0 * p.shape[1] ** -0.5)
            elif p.dim() == 1:  # norms and the Qwen2 q/k/v biases: not all ones / zeros
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def qwen2():
    torch.manual_seed(0)
    return sharpened(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SHAPE)))


def llama():  # untied head and a scaled rope, unlike the Qwen2 above
    config = transformers.LlamaConfig(
        **SHAPE, tie_word_embeddings=False, rope_theta=500.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    )  # fmt: skip
    torch.manual_seed(0)
    return sharpened(transformers.LlamaForCausalLM(config))


MODELS = {"qwen2": qwen2, "llama": llama}


def reference_logits(model, ids, mask):
    positions = position_ids_from_mask(mask)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def padded_batch():
    torch.manual_seed(2)
    ids = torch.randint(0, SHAPE["vocab_size"], (3, 14))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # right padding (training batches)
    mask[2, :5] = 0  # left padding (generation batches)
    return ids, mask


@pytest.mark.parametrize("name", MODELS)
def test_logits_equal_the_transformers_forward(name):
    model = MODELS[name]()
    assert llama_forward.supports(model)
    ids, mask = padded_batch()
    with torch.no_grad():
        ours = llama_forward.logits(model, llama_forward.hidden_states(model, ids, mask))
        theirs = reference_logits(model, ids, mask)
        unpadded = llama_forward.logits(model, llama_forward.hidden_states(model, ids))
        theirs_unpadded = model(input_ids=ids).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unpadded, theirs_unpadded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_keeping_only_the_last_positions(padded):
    """`keep=n` computes the last layer's output for the last n positions only: the same
    values there, and the same keys/values everywhere (`keep=0`: keys/values only)."""
    model = qwen2()
    ids, mask = padded_batch()
    mask = mask if padded else None
    with torch.no_grad():
        full_kv, kv = [], []
        full = llama_forward.hidden_states(model, ids, mask, kv_out=full_kv)
        for keep in (1, 3):
            part = llama_forward.hidden_states(model, ids, mask, keep=keep)
            torch.testing.assert_close(part, full[:, -keep:], rtol=1e-5, atol=1e-5)
        assert llama_forward.hidden_states(model, ids, mask, kv_out=kv, keep=0).shape[1] == 0
    for (k, v), (fk, fv) in zip(kv, full_kv, strict=True):
        assert torch.equal(k, fk) and torch.equal(v, fv)


@pytest.mark.parametrize("name", MODELS)
def test_cached_decoding_equals_a_full_forward(name):
    """Prefill a left-padded batch, then decode token by token into the static cache, dropping
    a row halfway: every step's logits are the full forward's at that position."""
    model = MODELS[name]()
    ids, mask = padded_batch()
    prompt, rest = ids[[0, 2], :8], ids[[0, 2], 8:]
    pmask = mask[[0, 2], :8]
    cache = llama_forward.StaticKVCache(model, 2, 14)
    with torch.no_grad():
        step = llama_forward.hidden_states(model, prompt, pmask, cache)[:, -1]
        full_mask = torch.cat([pmask, torch.ones_like(rest)], dim=1)
        full = reference_logits(model, torch.cat([prompt, rest], dim=1), full_mask)
        rows = torch.tensor([0, 1])
        for t in range(rest.shape[1]):
            torch.testing.assert_close(  # 1e-5 held for one seed's weights on one CPU only
                llama_forward.logits(model, step), full[rows, 7 + t], rtol=1e-4, atol=1e-4
            )
            if t == 3:  # the first row finishes; its cache row leaves
                rows = torch.tensor([1])
                cache.select_rows(torch.tensor([1]))
            hidden = llama_forward.hidden_states(
                model, rest[rows, t : t + 1], full_mask[rows, : 9 + t], cache
            )
            step = hidden[:, -1]
    with pytest.raises(ValueError, match="overflow"):
        llama_forward.hidden_states(model, rest[rows], full_mask[rows], cache)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "separate"])
@pytest.mark.parametrize("rows", [[0, 2], [0]], ids=["padded", "unpadded"])
@pytest.mark.parametrize("name", MODELS)
def test_decode_step_equals_the_module_path(name, rows, stacked, dtype, monkeypatch):
    """`decode_step` (module functions on their weights, a rotary table, no mask without
    padding, projections stacked for small models) gives the logits and cache contents of
    `hidden_states` through the modules, in bf16 too (norms rounded as the modules round)."""
    model = MODELS[name]().to(dtype)
    # fp32: the two paths run attention as different kernels (grouped query heads against
    # `enable_gqa`), 7e-6 apart at most here; bf16: a stacked product may round apart
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert llama_forward.decodes_plainly(model)
    if not stacked:
        monkeypatch.setattr(llama_forward, "STACK_MAX_BYTES", 0)
    ids, mask = padded_batch()
    cache = assert_decoding_matches(model, ids[rows], mask[rows], tol)  # row 2 is left-padded
    assert bool(cache.stacked) == stacked
    with pytest.raises(ValueError, match="overflow"):
        llama_forward.decode_step(model, ids[rows][:, -1:], mask[rows], cache)


def assert_decoding_matches(model, ids, mask, tol):
    """`decode_step` after an 8-token prefill gives the logits and cache of `hidden_states`; in
    bf16, where the two can run attention differently (eager against the fused kernel) and
    round apart by an ulp, it is about as close to the fp32 computation of the same weights."""
    half = next(model.parameters()).dtype != torch.float32
    exact = copy.deepcopy(model).float() if half else None
    caches = [llama_forward.StaticKVCache(m, len(ids), ids.shape[1]) for m in (model, model, exact)
              if m is not None]  # fmt: skip
    errors = {"decode_step": 0.0, "modules": 0.0}
    with torch.no_grad():
        for cache, m in zip(caches, (model, model, exact), strict=False):
            llama_forward.hidden_states(m, ids[:, :8], mask[:, :8], cache)
        for t in range(8, ids.shape[1]):
            step = ids[:, t : t + 1]
            ours = llama_forward.decode_step(model, step, mask[:, : t + 1], caches[0])
            hidden = llama_forward.hidden_states(model, step, mask[:, : t + 1], caches[1])
            theirs = llama_forward.logits(model, hidden)[:, -1]
            if not half:
                torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
                continue
            hidden = llama_forward.hidden_states(exact, step, mask[:, : t + 1], caches[2])
            truth = llama_forward.logits(exact, hidden)[:, -1]
            errors["decode_step"] = max(errors["decode_step"], float((ours - truth).abs().max()))
            errors["modules"] = max(errors["modules"], float((theirs - truth).abs().max()))
    assert caches[0].length == caches[1].length == ids.shape[1]
    assert errors["decode_step"] <= 3 * errors["modules"] + 1e-3, errors  # ~1-1.9x here
    near = 0.125 if half else tol  # later layers' keys inherit the ulp the attention rounds
    torch.testing.assert_close(caches[0].k, caches[1].k, rtol=near, atol=near)
    torch.testing.assert_close(caches[0].v, caches[1].v, rtol=near, atol=near)
    return caches[0]


@pytest.mark.parametrize("name", MODELS)
def test_rows_attend_from_their_own_first_real_column(name, monkeypatch):
    """Rows whose left padding differs by whole blocks attend in runs, each from its own
    first real column (`kv_cache.attention_groups`), with the logits of the module path."""
    from tooltune.policies import kv_cache

    monkeypatch.setattr(kv_cache, "GROUP_CALL_COST", 0)  # split wherever padding can be skipped
    model = MODELS[name]()
    torch.manual_seed(3)
    ids = torch.randint(0, SHAPE["vocab_size"], (4, 44))
    mask = torch.ones_like(ids)
    for row, padding in enumerate([0, 0, 16, 32]):
        mask[row, :padding] = 0
    caches = [llama_forward.StaticKVCache(model, 4, 44) for _ in range(2)]
    with torch.no_grad():
        for cache in caches:
            llama_forward.hidden_states(model, ids[:, :38], mask[:, :38], cache)
        for t in range(38, 44):
            step, seen = ids[:, t : t + 1], mask[:, : t + 1]
            ours = llama_forward.decode_step(model, step, seen, caches[0])
            hidden = llama_forward.hidden_states(model, step, seen, caches[1])
            theirs = llama_forward.logits(model, hidden)[:, -1]
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert caches[0].groups == [(0, 2, 0), (2, 3, 16), (3, 4, 32)]


def lora_model(model, dropout=0.0):
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])  # fmt: skip
    model = peft.get_peft_model(model, config)
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters an effect
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.5)
    return model


class ProductDtypes(torch.overrides.TorchFunctionMode):
    """Records the dtype of every matrix product's first input."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.nn.functional.linear, torch.addmm, torch.matmul):
            self.seen.add(args[1 if func is torch.addmm else 0].dtype)
        return func(*args, **(kwargs or {}))


def test_fp32_adapters_over_bf16_weights_compute_in_bf16(monkeypatch):
    """Adapters in fp32 over a bf16 model: every product runs in bf16 (the activations are not
    copied to fp32 for the adapters); the adapters' gradients come back in fp32, and outputs
    and gradients are about as close to an all-fp32 computation as with peft's rule (adapter
    products in fp32)."""
    from tooltune.policies import lora_layers

    half = lora_model(qwen2().to(torch.bfloat16))
    state = {k: v.float() for k, v in half.state_dict().items()}
    ids, mask = padded_batch()

    def run(dtype, rule=None):
        model = lora_model(qwen2().to(dtype))
        model.load_state_dict(state)
        model.train()  # dropout 0: the plain path runs while training too
        if rule is not None:
            monkeypatch.setattr(lora_layers, "adapter_dtype", rule)
        products = ProductDtypes()
        with products:
            if dtype == torch.float32:  # the truth: peft's own layers, in fp32
                logits = reference_logits(model, ids, mask)
            else:
                logits = llama_forward.logits(model, llama_forward.hidden_states(model, ids, mask))
        logits = logits.float() * mask[..., None]  # padding's outputs are never used
        (logits * torch.linspace(-1, 1, SHAPE["vocab_size"])).sum().backward()
        monkeypatch.undo()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        return logits, grads, products.seen

    ours, full = run(torch.bfloat16), run(torch.float32)
    pefts = run(torch.bfloat16, rule=lambda x, a: a.dtype)
    assert ours[2] == {torch.bfloat16} and torch.float32 in pefts[2]
    assert ours[1] and all(g.dtype == torch.float32 for g in ours[1].values())

    def error(a, b):
        return float((a - b).norm() / b.norm())

    # here ~2% for the logits and up to ~9% for a gradient, either rule, ours at most 1.25x
    # peft's for any one tensor (x1.1 on the adapters' scaling: 19% and 74%); the bounds leave
    # room for another CPU's rounding
    assert error(ours[0], full[0]) < min(0.05, 2 * error(pefts[0], full[0]) + 0.005)
    for name, grad in full[1].items():
        assert error(ours[1][name], grad) < min(0.2, 2 * error(pefts[1][name], grad) + 0.02), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", MODELS)
def test_decode_step_runs_lora_adapters_as_peft_does(name, dtype):
    """A LoRA model (adapters in fp32 over frozen weights of `dtype`) decodes plainly, with the
    logits of peft's layers; merged, disabled or training adapters take the module path."""
    model = lora_model(MODELS[name]().to(dtype), dropout=0.1).eval()
    assert llama_forward.decodes_plainly(model)
    ids, mask = padded_batch()
    cache = assert_decoding_matches(model, ids, mask, 1e-4 if dtype == torch.float32 else 2e-2)
    assert all(len(p.adapters) == 1 for layer in cache.projections for p in layer.values())
    assert not cache.stacked  # the frozen weights alone would miss the adapters
    with model.disable_adapter():
        assert not llama_forward.decodes_plainly(model)
    model.train()
    assert not llama_forward.decodes_plainly(model)  # dropout would be skipped
    model.eval().merge_adapter()
    assert not llama_forward.decodes_plainly(model)


def test_generation_takes_the_plain_step(tmp_path, tiny_qwen2, monkeypatch):
    """A plain model's generation decodes through `decode_step`, with the tokens and
    log-probs the module path samples."""
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    policy = HFPolicy.from_pretrained(path)
    steps = []
    real = llama_forward.decode_step
    monkeypatch.setattr(llama_forward, "decode_step", lambda *a: steps.append(1) or real(*a))
    sampling = SamplingParams(temperature=1.0, max_new_tokens=6, seed=0, stop=[])
    prompts = ["hello world", "the answer is", "hello world"]
    plain = policy.generate(prompts, sampling)
    assert len(steps) == 5
    monkeypatch.setattr(llama_forward, "decodes_plainly", lambda model: False)
    modules = policy.generate(prompts, sampling)
    assert len(steps) == 5
    assert [c.token_ids for c in plain] == [c.token_ids for c in modules]
    for a, b in zip(plain, modules, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_next_turn_continues_the_last_call(
    tmp_path, tiny_qwen2, monkeypatch, stale_cache_memory, same_greedy
):
    """A prompt that continues a row the last generate call finished (its prompt and
    completion, then new tokens) runs only its new tokens, with the completions a fresh prefill
    gives; a prompt that continues nothing, in the same batch, runs whole. The caches start on
    NaN-filled memory: padding the prefill leaves unwritten must be zeroed."""
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    policy = HFPolicy.from_pretrained(path)
    assert policy.continues_turns
    greedy = SamplingParams(temperature=0.0, max_new_tokens=5, stop=[])
    first = [policy.encode("hello world"), policy.encode("the answer is 42, the answer")]
    turn1 = policy.generate(["", ""], greedy, first)
    new = policy.encode(" world, the")
    second = [p + c.token_ids + new for p, c in zip(first, turn1, strict=True)]
    second.append(policy.encode("a fresh prompt"))
    runs = []
    real = llama_forward.prefill
    monkeypatch.setattr(
        llama_forward, "prefill", lambda *a: runs.append((a[1].shape[0], len(a[4]))) or real(*a)
    )
    stale_cache_memory(lambda: llama_forward.StaticKVCache(policy.model, 4, 64))
    continued = policy.generate(["", "", ""], greedy, second)
    assert all(math.isfinite(lp) for c in continued for lp in c.logprobs)
    assert runs == [(3, 2)]  # two of the three rows continue; the fresh one has no prefix
    fresh = policy.generate(["", "", ""], greedy, second, reuse_turns=False)
    assert len(runs) == 1
    same_greedy(continued, fresh)
    policy.generate(["", ""], greedy, first)  # a weight update discards what was kept
    with torch.no_grad():
        next(policy.model.parameters()).add_(0.0)
    policy.generate(["", "", ""], greedy, second)
    assert len(runs) == 1


def test_kept_rows_are_freed_before_the_next_call_decodes(tmp_path, tiny_qwen2, monkeypatch):
    """The rows a call continues are copied into its cache and let go of before it decodes:
    held to the end, they were a third copy of the batch (SmolLM2 at batch 32: ~2 GB in fp32),
    and evaluation's peak."""
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    policy = HFPolicy.from_pretrained(path)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=5, stop=[])
    first = [policy.encode("hello world"), policy.encode("the answer is 42, the answer")]
    turn1 = policy.generate(["", ""], greedy, first)
    kept = [weakref.ref(prefix.k) for prefix in policy._turn_cache.values()]
    assert len(kept) == 2 and all(ref() is not None for ref in kept)
    alive = []
    real = llama_forward.decode_step
    monkeypatch.setattr(
        llama_forward,
        "decode_step",
        lambda *a: alive.append(sum(ref() is not None for ref in kept)) or real(*a),
    )
    second = [
        p + c.token_ids + policy.encode(" world, the") for p, c in zip(first, turn1, strict=True)
    ]
    policy.generate(["", ""], greedy, second)
    assert alive and alive[0] == 0


def test_a_call_over_the_cache_limit_runs_in_batches(
    tmp_path, tiny_qwen2, monkeypatch, stale_cache_memory, same_greedy
):
    """With `max_cache_bytes` below what one cache of a call's rows takes, the rows decode in
    batches, each continuing what the last call kept of its rows: the completions of one batch,
    turn after turn."""
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    policy = HFPolicy.from_pretrained(path)
    policy.num_speculative_tokens = 0  # a row's cache: its prompt and 5 tokens (no guesses)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=5, stop=[])
    prompts = [policy.encode(t) for t in ("hello world", "the answer is 42, the", "hello", "42")]
    new = policy.encode(" world, the")
    stale_cache_memory(lambda: llama_forward.StaticKVCache(policy.model, 4, 64))
    rows, continued = [], []  # rows of each cache; rows that continue a kept one, per prefill
    init, prefill = llama_forward.StaticKVCache.__init__, llama_forward.prefill

    def counting_init(self, model, batch, capacity):
        rows.append(batch)
        init(self, model, batch, capacity)

    monkeypatch.setattr(llama_forward.StaticKVCache, "__init__", counting_init)
    monkeypatch.setattr(
        llama_forward, "prefill", lambda *a: continued.append(len(a[4])) or prefill(*a)
    )
    runs = []
    for limit in (None, 2 * (len(prompts[1]) + 5) * llama_forward.position_bytes(policy.model)):
        policy.max_cache_bytes = limit
        policy.release_turns()
        rows.clear()
        continued.clear()
        one = policy.generate([""] * 4, greedy, prompts)
        two = [p + c.token_ids + new for p, c in zip(prompts, one, strict=True)]
        runs.append((one, policy.generate([""] * 4, greedy, two), max(rows), sum(continued)))
    (one, two, widest, reused), (one_split, two_split, widest_split, reused_split) = runs
    assert widest == 4 and widest_split == 2  # at most two rows a cache
    policy.max_cache_bytes = 0
    with pytest.raises(ValueError, match="max_cache_bytes must be a positive"):
        policy.generate([""], greedy, prompts[:1])
    assert reused == reused_split == 4  # every row of the second turn continued the first
    same_greedy(one_split, one)
    same_greedy(two_split, two)


def test_prompts_that_begin_alike_run_the_beginning_once(
    tmp_path, tiny_qwen2, monkeypatch, stale_cache_memory, same_greedy
):
    """Distinct prompts with a common beginning (a system prompt) prefill it once, as one row
    whose keys/values each prompt continues: the completions of a plain prefill."""
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    policy = HFPolicy.from_pretrained(path)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=5, stop=[])
    system = policy.encode("the answer is 42, hello world")
    prompts = [system + policy.encode(" the answer"), system + policy.encode(" hello world, the")]
    prompts.append(prompts[0])  # a GRPO group: one prompt twice
    runs = []
    real = llama_forward.prefill
    monkeypatch.setattr(
        llama_forward, "prefill", lambda *a: runs.append((a[1].shape[0], len(a[4]))) or real(*a)
    )
    monkeypatch.setattr(sampling, "MIN_SHARED_PREFIX", len(system))
    stale_cache_memory(lambda: llama_forward.StaticKVCache(policy.model, 4, 64))
    shared = policy.generate(["", "", ""], greedy, prompts, reuse_turns=False)
    assert runs == [(2, 2)]  # the two distinct prompts, both after the common beginning
    policy.generate(["", "", ""], greedy, prompts, reuse_turns=False, share_prefill=False)
    assert len(runs) == 1  # no sharing asked for: every prompt runs whole
    monkeypatch.setattr(sampling, "MIN_SHARED_PREFIX", len(system) + 1)  # too short now
    plain = policy.generate(["", "", ""], greedy, prompts, reuse_turns=False)
    assert len(runs) == 1
    same_greedy(shared, plain)


def test_decode_step_only_for_plain_models(tmp_path, tiny_qwen2):
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    assert llama_forward.decodes_plainly(HFPolicy.from_pretrained(path).model)
    lora = HFPolicy.from_pretrained(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    assert lora.direct_forward and llama_forward.decodes_plainly(lora.eval().model)
    assert llama_forward.decodes_plainly(qwen2().to(torch.bfloat16))
    mixed = qwen2().to(torch.bfloat16)
    mixed.model.layers[1].mlp.down_proj.float()  # one dtype for every weight, or the modules
    assert not llama_forward.decodes_plainly(mixed)
    assert not llama_forward.decodes_plainly(qwen2().train())  # dropout would be skipped
    hooked = qwen2()
    hooked.model.layers[1].mlp.register_forward_hook(lambda *args: None)
    assert not llama_forward.decodes_plainly(hooked)  # the hook would not run
    dynamic = transformers.LlamaConfig(
        **SHAPE, rope_scaling={"rope_type": "dynamic", "factor": 2.0}
    )
    assert not llama_forward.decodes_plainly(transformers.LlamaForCausalLM(dynamic))


@pytest.mark.parametrize("common", [0, 4], ids=["distinct", "common-beginning"])
def test_prefix_scoring_and_gradients_equal_the_transformers_path(
    tmp_path, tiny_qwen2, common, monkeypatch
):
    """`prefix_token_logprobs` (a shared prompt run once, kept in the graph; prompts that
    begin alike run that beginning once) and `token_logprobs`: the same values and the same
    parameter gradients on both paths."""
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    direct = HFPolicy.from_pretrained(path)
    plain = HFPolicy.from_pretrained(path, direct_forward=False)
    assert direct.direct_forward and not plain.direct_forward
    torch.manual_seed(3)
    prefix = torch.randint(0, 50, (2, 8))
    prefix_mask = torch.ones_like(prefix)
    prefix_mask[1, :2] = 0  # left-padded prefixes
    prefix[1, 2 : 2 + common] = prefix[0, :common]
    monkeypatch.setattr(sampling, "MIN_SHARED_PREFIX", 3)
    passes = []
    real = llama_forward.hidden_states
    monkeypatch.setattr(
        llama_forward, "hidden_states", lambda *a, **k: passes.append(1) or real(*a, **k)
    )
    suffix = torch.randint(0, 50, (4, 5))
    suffix_mask = torch.ones_like(suffix)
    suffix_mask[3, 3:] = 0
    index = torch.tensor([0, 0, 1, 1])
    grads = []
    for policy in (direct, plain):
        policy.model.zero_grad(set_to_none=True)
        a = policy.prefix_token_logprobs(prefix, prefix_mask, suffix, suffix_mask, index)
        b = policy.token_logprobs(suffix, suffix_mask)
        (a.sum() + b.sum()).backward()
        grads.append(((a, b), {n: p.grad.clone() for n, p in policy.model.named_parameters()}))
    assert len(passes) == (4 if common else 3)  # (beginning,) prefixes, suffixes, plain rows
    (values_d, grads_d), (values_p, grads_p) = grads
    for x, y in zip(values_d, values_p, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    assert grads_d.keys() == grads_p.keys()
    for name in grads_d:
        assert_gradient_close(grads_d[name], grads_p[name])


def test_lora_model_with_trainable_tokens(tmp_path, tiny_qwen2):
    """peft's wrappers (LoRA layers, trainable embedding rows) run inside the direct path."""
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    policy = HFPolicy.from_pretrained(path, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    assert policy.direct_forward
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters an effect
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    policy.eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        ours = policy.token_logprobs(ids, mask)
        policy.direct_forward = False
        theirs = policy.token_logprobs(ids, mask)
    scored = (mask[:, :-1] * mask[:, 1:]).bool()  # a padding query predicts nothing
    torch.testing.assert_close(ours[scored], theirs[scored], rtol=1e-5, atol=1e-5)
    # Training: the adapters of layers that read one input run together; same gradients.
    policy.train()
    grads = []
    for direct in (True, False):
        policy.direct_forward = direct
        policy.model.zero_grad(set_to_none=True)
        policy.token_logprobs(ids, mask)[scored].sum().backward()
        grads.append(
            {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.requires_grad}
        )
    assert any("lora_A" in n for n in grads[0]) and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert_gradient_close(grads[0][name], grads[1][name])


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "masked"])
def test_short_half_precision_attention_is_the_eager_computation(causal):
    """bf16 attention of short sequences (computed eagerly: `_attention`) gives what fp32
    attention of the same inputs gives, to bf16's rounding, values and gradients alike;
    queries of a key/value head read that head."""
    torch.manual_seed(0)
    B, H, heads, T, S, D = 2, 6, 2, 5, 9, 8
    q, k, v = (torch.randn(B, n, t, D) for n, t in ((H, T), (heads, S), (heads, S)))
    allowed = torch.ones(B, 1, T, S, dtype=torch.bool).tril(S - T)
    allowed[0, :, :, :3] = False  # row 0: three padding keys on the left
    mask = None if causal else torch.zeros(B, 1, T, S).masked_fill(~allowed, float("-inf"))
    if causal:  # as many keys as queries
        k, v = k[:, :, :T], v[:, :, :T]
    outs, grads = [], []
    for dtype in (torch.float32, torch.bfloat16):
        inputs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        m = None if mask is None else mask.to(dtype)
        y = llama_forward._attention(*inputs, m, causal, D**-0.5, 0.0)
        (y.float() * torch.linspace(-1, 1, D)).sum().backward()
        outs.append(y.float())
        grads.append([t.grad.float() for t in inputs])
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=D**-0.5, enable_gqa=True
    )
    torch.testing.assert_close(outs[0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[1], outs[0], rtol=0.05, atol=0.05)
    for half, full in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)


def test_other_models_keep_the_transformers_path(tmp_path, tiny_qwen2):
    windowed = transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=4)
    )
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2)
    )
    assert not llama_forward.supports(windowed)
    assert not llama_forward.supports(gpt2)
    path = tiny_qwen2(tmp_path / "m", ["hello world, the answer is 42."] * 20)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    with pytest.raises(ValueError, match="direct_forward supports"):
        HFPolicy(gpt2, tokenizer, direct_forward=True)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)
    )
    policy = HFPolicy(model, tokenizer)
    assert not policy.direct_forward
    out = policy.generate(["hello"], SamplingParams(temperature=0.0, max_new_tokens=4, stop=[]))
    assert len(out[0].token_ids) == 4
