"""The Hugging Face paths of `tooltune demo` on a CUDA device, against the same computation on the
CPU: generation (padding, shared beginnings, kept turns, guesses), log-probs (shared prefixes,
scored positions), an SFT and a GRPO step in bf16, a checkpoint written there and read on the
CPU, and constrained decoding's search. A tiny Qwen2 (the direct Llama-family forward), seconds.

Skipped without CUDA. ``TOOLTUNE_TEST_DEVICE`` picks another device (``cuda:1``; ``cpu`` checks
the tests themselves on a machine without a GPU).
"""

import math
import os

import pytest
import torch

pytest.importorskip("transformers")

from tooltune.chat_format import render_prompt  # noqa: E402
from tooltune.config import AgentConfig, TaskTier  # noqa: E402
from tooltune.policies.hf import HFPolicy  # noqa: E402
from tooltune.rollout import SamplingParams  # noqa: E402
from tooltune.types import AgentTrajectory, TokenRecord  # noqa: E402

DEVICE = torch.device(os.environ.get("TOOLTUNE_TEST_DEVICE", "cuda"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    '{"name": "search", "arguments": {"query": "capital of France"}}',
    "Paris is the capital of France. The answer is 42.",
] * 20
SYSTEM = "You are a helpful assistant. Answer with one tool call or one short sentence."
QUESTIONS = ["What is the capital of France?", "Hi", "Which fox is quick and which dog is lazy?"]


def prompts() -> list[str]:
    """Prompts of different lengths (left padding) that share a system turn of over 16 tokens
    (kept between calls and run once: `sampling.first_pass`)."""
    return [render_prompt([{"role": "system", "content": SYSTEM},
                           {"role": "user", "content": q}]) for q in QUESTIONS]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_qwen2):
    return tiny_qwen2(tmp_path_factory.mktemp("cuda_qwen2"), CORPUS, vocab_size=400)


def load(model_dir, device, dtype="fp32", guesses=4):
    policy = HFPolicy.from_pretrained(model_dir, dtype=dtype, device=device)
    policy.num_speculative_tokens = guesses
    assert policy.direct_forward and policy.device.type == torch.device(device).type
    return policy


@pytest.mark.parametrize("guesses", [0, 4], ids=["one-token-a-step", "guesses"])
def test_generation_on_the_device_is_the_cpus(model_dir, same_greedy, guesses):
    """Greedy completions, and an episode's next turn that continues the kept rows, as on the
    CPU; sampled ones repeat with their seed and have finite log-probs."""
    cpu, dev = load(model_dir, "cpu", guesses=guesses), load(model_dir, DEVICE, guesses=guesses)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=24, stop=[])
    first = {name: p.generate(prompts(), greedy) for name, p in (("cpu", cpu), ("dev", dev))}
    same_greedy(first["dev"], first["cpu"], atol=1e-3)
    for name, policy in (("cpu", cpu), ("dev", dev)):  # again: kept system turns, guesses
        same_greedy(policy.generate(prompts(), greedy), first[name], atol=1e-3)
    follow = [p + c.text + "<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n"
              for p, c in zip(prompts(), first["cpu"], strict=True)]  # fmt: skip
    same_greedy(dev.generate(follow, greedy), cpu.generate(follow, greedy), atol=1e-3)
    sampled = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16, stop=[], seed=3)
    a, b = dev.generate(prompts(), sampled), dev.generate(prompts(), sampled)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert all(math.isfinite(lp) for c in a for lp in c.logprobs)


def test_bf16_generation_runs_on_the_device(model_dir):
    policy = load(model_dir, DEVICE, dtype="bf16")
    assert policy.compute_dtype == torch.bfloat16
    if DEVICE.type == "cuda":  # a GPU's batches get a quarter of its memory for keys/values
        total = torch.cuda.get_device_properties(policy.device).total_memory
        assert policy.max_cache_bytes == total // 4
    for sampling in (SamplingParams(temperature=0.0, max_new_tokens=16, stop=[]),
                     SamplingParams(temperature=1.0, max_new_tokens=16, stop=[], seed=1)):  # fmt: skip
        out = policy.generate(prompts(), sampling)
        assert all(c.token_ids and all(math.isfinite(lp) for lp in c.logprobs) for c in out)


def test_log_probs_on_the_device_are_the_cpus(model_dir):
    """Left and right padding, scored positions only, and shared prefixes (GRPO's groups)."""
    from tooltune.training.sft import collate
    from tooltune.training.shared_prefix import plan_shared_prefix, shared_prefix_logprobs

    cpu, dev = load(model_dir, "cpu"), load(model_dir, DEVICE)
    seq = cpu.encode(prompts()[0])
    pad = cpu.pad_token_id
    ids = torch.tensor([seq + [pad] * 3, [pad] * 3 + seq])
    mask = torch.tensor([[1] * len(seq) + [0] * 3, [0] * 3 + [1] * len(seq)])
    scored = (torch.arange(ids.shape[1] - 1) % 3 == 0).float().expand(2, -1)
    with torch.no_grad():
        for kwargs in ({}, {"scored": scored}):
            want = cpu.token_logprobs(ids, mask, **kwargs)
            got = dev.token_logprobs(ids.to(DEVICE), mask.to(DEVICE),
                                     **{k: v.to(DEVICE) for k, v in kwargs.items()})  # fmt: skip
            assert got.device.type == DEVICE.type
            torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-3)
    records = [rec for group in groups(cpu) for rec in (t.tokens for t in group)]
    batch = collate(records, pad, drop_unscored_tail=True)
    plan = plan_shared_prefix(batch.to(DEVICE))
    assert plan is not None and plan.prefix_index.device.type == DEVICE.type
    width = batch.input_ids.shape[1]
    with torch.no_grad():
        got = shared_prefix_logprobs(dev, plan, width, batch.loss_mask.to(DEVICE))
        want = cpu.token_logprobs(batch.input_ids, batch.attention_mask, scored=batch.loss_mask)
    torch.testing.assert_close(got.cpu() * batch.loss_mask, want, rtol=0, atol=1e-3)


def groups(policy, n_groups: int = 2, size: int = 3) -> list[list[AgentTrajectory]]:
    """GRPO groups: each task's samples share their prompt, then differ; rewards differ."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for task in range(n_groups):
        prompt = policy.encode(prompts()[task])
        group = []
        for s in range(size):
            rec = TokenRecord()
            rec.extend(prompt, generated=False)
            answer = torch.randint(3, len(policy.tokenizer), (4 + 3 * s,), generator=gen).tolist()
            rec.extend(answer, generated=True, logprobs=[-3.0] * len(answer))
            traj = AgentTrajectory(prompt="p", task_tier=TaskTier.SIMPLE, task_id=f"t{task}")
            traj.tokens, traj.total_reward = rec, float(s)
            group.append(traj)
        out.append(group)
    return out


def test_bf16_training_steps_and_a_checkpoint_read_back_on_the_cpu(model_dir, tmp_path):
    """The demo's defaults on the device: full fine-tuning of the top layers in bf16 with fp32
    masters (fused AdamW), an SFT step, a GRPO step against a reference copy (shared prompts),
    then the checkpoint a resumed run reads: the policy and the optimizer's state, on the CPU."""
    from tooltune.policies.hf import train_top_layers
    from tooltune.training.grpo import GRPOTrainer
    from tooltune.training.optim import AdamW
    from tooltune.training.run_dir import RunDirectory, load_policy
    from tooltune.training.schedule import make_scheduler
    from tooltune.training.sft import train_sft
    from tooltune.training.tracking import peak_gpu_memory_gb

    policy = load(model_dir, DEVICE, dtype="bf16")
    train_top_layers(policy.model, 1)
    config = AgentConfig(sft_batch_size=3, sft_learning_rate=1e-3, micro_batch_tokens=0,
                         beta=0.05, temperature=1.0, max_new_tokens=16, learning_rate=1e-3)  # fmt: skip
    records = [t.tokens for group in groups(policy) for t in group]
    before = [p.detach().clone() for p in policy.parameters() if p.requires_grad]
    history = train_sft(policy, records, config, epochs=1)
    assert all(math.isfinite(x) for x in history.step_loss + history.grad_norm)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert any(not torch.equal(p, q) for p, q in zip(trainable, before, strict=True))
    assert all(p.dtype == torch.bfloat16 and p.device.type == DEVICE.type for p in trainable)

    optimizer = AdamW(trainable, lr=config.learning_rate)
    assert optimizer.defaults["fused"]
    scheduler = make_scheduler(optimizer, 4, 0.0)
    trainer = GRPOTrainer(policy, policy.clone(), optimizer, config, scheduler=scheduler)
    metrics = trainer.train_step(groups(policy))
    assert metrics["skipped_groups"] == 0 and metrics["optimizer_steps"] == 1
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    if DEVICE.type == "cuda":
        assert peak_gpu_memory_gb() > 0

    run = RunDirectory(tmp_path / "run")
    extra = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    saved = run.dir / run.checkpoint("latest", policy, extra)
    on_cpu = load_policy(saved / "policy", dtype="bf16", device="cpu")
    train_top_layers(on_cpu.model, 1)  # as a resumed run restricts it again
    weights = on_cpu.model.state_dict()
    for name, value in policy.model.state_dict().items():
        assert torch.equal(value.cpu(), weights[name]), name  # the trained weights, exactly
    state = torch.load(saved / "trainer.pt", map_location="cpu", weights_only=False)  # as resumed
    again = AdamW([p for p in on_cpu.parameters() if p.requires_grad], lr=config.learning_rate)
    again.load_state_dict(state["optimizer"])
    assert all(s["exp_avg"].device.type == "cpu" for s in again.state.values())


def test_the_constrained_search_reads_logits_on_the_device():
    """Where the grammar refuses the model's choice, the best allowed token is found on the
    CPU whatever device the logits are on."""
    from tooltune.call_grammar import CallGrammar
    from tooltune.policies.constrained import TokenPieces, best_allowed

    tool = {"type": "function", "function": {"name": "ping", "parameters": {
        "type": "object", "properties": {"host": {"type": "string"}}, "required": ["host"]}}}  # fmt: skip
    grammar = CallGrammar([tool])
    vocab = ['<tool_call>{"name": "', "ping", "pong", '", "arguments": {', '"host": "', "a",
             '"}}', "</tool_call>", "!", " "]  # fmt: skip
    eos = {len(vocab)}
    gen = torch.Generator().manual_seed(0)
    for text in ['<tool_call>{"name": "', '<tool_call>{"name": "ping", "arguments": {', "Hi"]:
        for _ in range(20):
            logits = torch.randn(len(vocab) + 1, generator=gen) * 3
            want = best_allowed(grammar, text, logits, TokenPieces(vocab), eos)
            assert best_allowed(grammar, text, logits.to(DEVICE), TokenPieces(vocab), eos) == want
            assert best_allowed(grammar, text, logits.to(DEVICE), list(vocab), eos) == want


def test_fused_attention_on_the_device_is_the_eager_attention_of_the_cpu():
    """bf16 attention of a few queries (computed eagerly on the CPU, by the fused kernel on
    CUDA): causal, padded (a mask) and one query, with grouped key/value heads."""
    from tooltune.policies.llama_forward import _attention
    from tooltune.policies.transformer import additive_mask, padded_causal_mask

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 12, 16, generator=gen).bfloat16() for h in (6, 2, 2))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0
    padded = additive_mask(padded_causal_mask(mask, 12), torch.bfloat16)
    for args in (
        (q, k, v, None, True),
        (q, k, v, padded, False),
        (q[:, :, -1:], k, v, None, False),
    ):
        want = _attention(*args, 0.25, 0.0).float()
        got = _attention(*(a.to(DEVICE) if torch.is_tensor(a) else a for a in args), 0.25, 0.0)
        torch.testing.assert_close(got.float().cpu()[:, :, -8:], want[:, :, -8:], rtol=0, atol=3e-2)
