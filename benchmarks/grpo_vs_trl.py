"""One GRPO step, tooltune vs TRL (trl==1.16.0), on the same tiny Hugging Face model, CPU.

Same model weights (a randomly initialised Qwen2 configuration, ~0.5M and ~5M parameters, with a
BPE tokenizer trained here: no downloads), same prompt strings, same group size, batch, sampling
(temperature 1, top-p 1), loss (token-mean / "dapo"), KL coefficient (with a frozen reference
model on both sides) and the same reward function. Generation is forced to a fixed length on
both sides (TRL: `min_new_tokens`; tooltune: no stop ids), so both sample exactly
prompts x group x max_new_tokens tokens per step; the generated-token counts are printed.

Each side runs `--warmup` steps, then `--repeats` timed steps; seconds per step is the median.
TRL steps are timed with a trainer callback (`on_step_begin` -> `on_step_end`: generation,
reward, log-probs, backward and optimiser step); tooltune steps are collect + train_step.

tooltune shares each group's prompt (prefilled once per group in generation, run once per
group in the update: `GRPOTrainer(share_prefix=True)`) and the beginning its distinct
prompts share (system prompt and tool listing: run once per batch); it runs Llama-family
models through its direct forward (`tooltune.policies.llama_forward`: a preallocated KV cache, none of the
`transformers` forward's per-call machinery). Baseline runs, interleaved with the other two,
time tooltune with one of them turned off (`--baselines`): `unshared` (no prompt sharing) and
`transformers-forward` (the model's own forward, as TRL uses it).

Then a profile of one tooltune step (generation, tools, log-probs, backward, optimiser, rest)
and the model FLOPs utilisation (of the necessary work: see `step_flops`) against the fp32
matmul peak measured on this machine
(6 * params * tokens for training, 2 * params * tokens for forward-only passes).

Multi-turn tool use (`--tools`): TRL 1.16's `GRPOTrainer(tools=[add_numbers])` (Qwen2.5 chat
template, TRL's tool loop) against tooltune's collector with the same tool, both with up to 3
assistant turns. A random model writes no tool calls, so the 0.5M model is first fitted with
tooltune's SFT to solve the prompts in both formats (call `add_numbers`, then answer with its
result); the output shows the tool calls, generated tokens and verified answers of every step on
both sides, so equal work can be checked. The reward is the verified answer plus a little
noise, so that no group has zero variance and neither side skips an update.

    python benchmarks/grpo_vs_trl.py            # both sizes, 5 repeats
    python benchmarks/grpo_vs_trl.py --quick    # 0.5M only, 5 repeats, smaller batch
    python benchmarks/grpo_vs_trl.py --json     # one JSON object on stdout
    python benchmarks/grpo_vs_trl.py --tools --sizes ''   # the multi-turn tool case only
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from tooltune.chat_format import END_OF_TEXT, IM_END, IM_START, PAD, SPECIAL_TOKENS  # noqa: E402
from tooltune.config import AgentConfig  # noqa: E402
from tooltune.registry import ToolRegistry, tool  # noqa: E402
from tooltune.rollout import (  # noqa: E402
    SamplingParams,
    ScriptedPolicy,
    TrajectoryCollector,
    opening_text,
)
from tooltune.types import AgentTrajectory, TokenRecord  # noqa: E402

SIZES = {  # Qwen2 shapes: ~0.5M and ~5M parameters with the 1024-token vocabulary below
    "0.5M": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "5M": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6,
               num_attention_heads=4, num_key_value_heads=2),
}  # fmt: skip
VOCAB = 1024
LR = 1e-5
BETA = 0.04


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Timing: the CPU's clock, after the GPU's queued work where the benchmark runs on CUDA
# --------------------------------------------------------------------------------------------

SYNC_CUDA = False  # set by `time_device`: `now()` waits for the GPU before reading the clock


def time_device(device: str | torch.device) -> None:
    """Time the work of `device`: on CUDA, `now()` first waits for every queued kernel
    (`torch.cuda.synchronize()`), and `reset_peak_memory` / `peak_memory_mib` follow the GPU's
    peak of allocated memory; on the CPU, `now()` is `time.perf_counter()` and nothing else."""
    global SYNC_CUDA
    SYNC_CUDA = torch.device(device).type == "cuda"


def now() -> float:
    if SYNC_CUDA:
        torch.cuda.synchronize()
    return time.perf_counter()


def reset_peak_memory() -> None:
    if SYNC_CUDA:
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib() -> float:
    """The GPU's peak of allocated memory since `reset_peak_memory`, MiB (CUDA only)."""
    return torch.cuda.max_memory_allocated() / 2**20


# --------------------------------------------------------------------------------------------
# Shared workload: tokenizer, model, prompts, reward
# --------------------------------------------------------------------------------------------

WORDS = [
    "alpha", "beta", "gamma", "delta", "sum", "add", "number", "city", "river", "count", "total",
    "answer", "question", "what", "is", "the", "of", "and", "to", "compute", "how", "many",
    "please", "tool", "call", "result", "value",
]  # fmt: skip


def corpus(n: int = 400) -> list[str]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        idx = torch.randint(0, len(WORDS), (12,), generator=g).tolist()
        nums = torch.randint(0, 100, (2,), generator=g).tolist()
        out.append(" ".join(WORDS[i] for i in idx) + f" {nums[0]} + {nums[1]} = {sum(nums)}")
    return out


def build_tokenizer(
    directory: Path, extra_texts: Sequence[str] = (), plain_markers: bool = False
) -> Any:
    """A byte-level BPE with tooltune's markers and the Qwen2.5 chat template TRL ships (needed
    for TRL's tool calling), saved as a Hugging Face tokenizer, and returned as both frameworks
    load it again: `transformers` 5 loads it as a `Qwen2Tokenizer`, whose own pre-tokenizer
    splits some text differently from the tokenizer trained here, so anything tokenised for
    training must use the reloaded one. `plain_markers` adds `<tool_call>` and the other markers
    as ordinary (not special) tokens, as Qwen's tokenizer does: TRL parses tool calls from text
    decoded without special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = [PAD, END_OF_TEXT, IM_START, IM_END]
    markers = [t for t in SPECIAL_TOKENS if t not in core]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=core if plain_markers else list(SPECIAL_TOKENS),
        show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(corpus() + list(extra_texts), trainer=trainer)
    if plain_markers:
        tok.add_tokens([AddedToken(m, special=False, normalized=False) for m in markers])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=PAD,
        additional_special_tokens=[] if plain_markers else [t for t in SPECIAL_TOKENS if t not in (IM_END, PAD)],
    )  # fmt: skip
    hf.chat_template = qwen_template()
    hf.save_pretrained(directory)
    return len(hf)


def load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def qwen_template() -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()


def build_model(directory: Path, size: str, vocab: int) -> int:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab, max_position_embeddings=1024,
                         tie_word_embeddings=True, **SIZES[size])  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def prompt_texts(n: int) -> list[str]:
    return [f"What is {3 * i + 1} + {5 * i + 2}? Answer with the number." for i in range(n)]


def completion_reward(text: str) -> float:
    """Any cheap function of the text that varies within a group (it is the same for both)."""
    letters = [c for c in text if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(1, len(letters))


# --------------------------------------------------------------------------------------------
# TRL
# --------------------------------------------------------------------------------------------


def run_trl(
    model_dir: Path,
    prompts: list[Any],
    args: argparse.Namespace,
    steps: int,
    between: Callable[[], None] | None = None,
    reward: Callable[[Any, Any], float] | None = None,
    tools: list[Callable] | None = None,
    dtype: torch.dtype = torch.float32,
    peft_config: Any = None,
    overrides: dict | None = None,
    device: str = "cpu",
) -> dict:
    """TRL's GRPO for `steps` steps; `between()` runs after each timed step (outside it).

    Without `tools`, generation is forced to `max_new_tokens` (`min_new_tokens`) and the reward
    is `completion_reward`. With `tools`, prompts are conversations, episodes end when the model
    stops (up to `TOOL_TURNS` assistant turns of at most `TOOL_TURN_TOKENS` each) and `reward`
    scores (prompt, completion messages). `dtype` is the weights' (bf16 also turns on TRL's
    `bf16` autocast), `peft_config` TRL's LoRA, `overrides` further `GRPOConfig` fields.
    `device` "cuda": no `use_cpu`, the Trainer moves the model to the GPU (checked)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    n = len(prompts)
    data = Dataset.from_dict({"prompt": prompts * (steps + 1)})
    score = reward or (lambda prompt, completion: completion_reward(completion))

    def reward_fn(prompts: list, completions: list, **kwargs) -> list[float]:
        return [score(p, c) for p, c in zip(prompts, completions, strict=True)]

    times: list[float] = []
    tokens: list[float] = []
    calls: list[int] = []
    memory: list[float] = []
    counts = {"tokens": 0, "calls": 0}

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            counts.update(tokens=0, calls=0)
            reset_peak_memory()
            self.t0 = now()

        def on_step_end(self, *a, **k):
            times.append(now() - self.t0)
            if SYNC_CUDA:
                memory.append(peak_memory_mib())
            tokens.append(float(counts["tokens"]))
            calls.append(counts["calls"])
            if between is not None:
                between()

    if tools:
        length = dict(max_completion_length=TOOL_TURN_TOKENS * TOOL_TURNS,
                      max_tool_calling_iterations=TOOL_TURNS - 1)  # fmt: skip
    else:  # fixed-length generation
        length = dict(max_completion_length=args.max_new_tokens,
                      generation_kwargs={"min_new_tokens": args.max_new_tokens})  # fmt: skip
    config = GRPOConfig(
        output_dir=str(model_dir / "trl-out"), use_cpu=torch.device(device).type == "cpu",
        report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
        learning_rate=LR, max_steps=steps, per_device_train_batch_size=n * args.group,
        gradient_accumulation_steps=1, num_generations=args.group, num_iterations=1,
        temperature=1.0, top_p=1.0, beta=BETA, epsilon=0.2, loss_type="dapo",
        scale_rewards="group", shuffle_dataset=False, dataloader_num_workers=0,
        bf16=dtype == torch.bfloat16, max_grad_norm=1.0, **length, **(overrides or {}),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=config,
                              train_dataset=data, processing_class=tokenizer,
                              callbacks=[Timer()], tools=tools, peft_config=peft_config)  # fmt: skip
        check_placed(trainer.model, device, "TRL's GRPOTrainer")
        generate, tool_loop = trainer._generate_single_turn, trainer._tool_call_loop

        def counting_generate(*a, **k):  # once per step, plus once per round of tool results
            out = generate(*a, **k)
            counts["tokens"] += sum(len(c) for c in out[0])
            return out

        def counting_tool_loop(*a, **k):
            out = tool_loop(*a, **k)
            counts["calls"] += out[4]  # tool_call_count
            return out

        trainer._generate_single_turn = counting_generate
        trainer._tool_call_loop = counting_tool_loop
        with contextlib.redirect_stdout(sys.stderr):  # TRL prints its metrics on stdout
            trainer.train()
    out = {"times": times, "generated_tokens": tokens, "tool_calls": calls}
    return {**out, "peak_memory_mib": memory} if SYNC_CUDA else out


def check_placed(model: Any, device: str | torch.device, who: str) -> None:
    """Stop, with one clear line, where `model`'s weights are not all on `device`'s kind."""
    wanted = torch.device(device).type
    found = {p.device.type for p in model.parameters()}
    if found != {wanted}:
        raise SystemExit(f"{who} left the model's weights on {', '.join(sorted(found))}, "
                         f"not on {wanted}")  # fmt: skip


# --------------------------------------------------------------------------------------------
# tooltune
# --------------------------------------------------------------------------------------------


class Phases:
    """Wall-clock per phase of one step, collected by wrapping the calls that do the work."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, dt: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + dt

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*a, **k):
            t0 = now()
            try:
                return fn(*a, **k)
            finally:
                self.add(name, now() - t0)

        return timed


@contextlib.contextmanager
def profiled(policy: Any, ref: Any, optimizer: Any, registry: ToolRegistry, phases: Phases):
    """Time generation, tool calls, log-probs (grad / no-grad), backward and the optimiser."""
    saved_backward = torch.Tensor.backward
    policy.generate = phases.wrap("generation", policy.generate)
    start_many = registry.start_many

    def timed_start(calls):  # starting the calls and waiting for them are both tool time
        return phases.wrap("tools", phases.wrap("tools", start_many)(calls))

    registry.start_many = timed_start
    plain = policy.token_logprobs

    def logprobs(*a, **k):
        name = "logprobs (grad)" if torch.is_grad_enabled() else "logprobs (old/ref, no grad)"
        return phases.wrap(name, plain)(*a, **k)

    policy.token_logprobs = logprobs
    ref.token_logprobs = phases.wrap("logprobs (old/ref, no grad)", ref.token_logprobs)
    plain_prefix = policy.prefix_token_logprobs

    def prefix_logprobs(*a, **k):
        name = "logprobs (grad)" if torch.is_grad_enabled() else "logprobs (old/ref, no grad)"
        return phases.wrap(name, plain_prefix)(*a, **k)

    policy.prefix_token_logprobs = prefix_logprobs
    ref.prefix_token_logprobs = phases.wrap(
        "logprobs (old/ref, no grad)", ref.prefix_token_logprobs
    )
    optimizer.step = phases.wrap("optimizer", optimizer.step)
    torch.Tensor.backward = phases.wrap("backward", saved_backward)
    try:
        yield
    finally:
        torch.Tensor.backward = saved_backward
        for obj, attr in ((policy, "generate"), (policy, "token_logprobs"), (ref, "token_logprobs"),
                          (policy, "prefix_token_logprobs"), (ref, "prefix_token_logprobs"),
                          (optimizer, "step"), (registry, "start_many")):  # fmt: skip
            obj.__dict__.pop(attr, None)


def completion_text(trajectory: AgentTrajectory) -> str:
    step = trajectory.steps[0] if trajectory.steps else None
    return "" if step is None else (step.action.raw or step.action.content or "")


BASELINES = {  # name: what tooltune_setup turns off
    "unshared": dict(shared=False),
    "transformers-forward": dict(direct=False),
}


def tooltune_setup(
    model_dir: Path,
    args: argparse.Namespace,
    registry: ToolRegistry,
    turns: int,
    shared: bool = True,
    direct: bool = True,
    reward: Callable[[AgentTrajectory], float] | None = None,
    load: dict | None = None,
    tool_style: str = "json",
):
    """`shared=False` turns off both prompt-sharing optimisations (prefill once per group in
    generation, prompt once per group in the update); `direct=False` runs the model's own
    `transformers` forward instead of tooltune's direct Llama-family forward. With `turns` > 1
    (the tool case) episodes end when the model stops, each turn at most `TOOL_TURN_TOKENS`,
    and `reward` scores each trajectory. `load` goes to `HFPolicy.from_pretrained` (LoRA,
    dtype), `tool_style` to the collector."""
    from tooltune.policies.hf import HFPolicy
    from tooltune.training.grpo import GRPOTrainer

    policy = HFPolicy.from_pretrained(model_dir, direct_forward=direct, **(load or {}))
    if not shared:
        policy.generate = functools.partial(policy.generate, share_prefill=False)
    if turns == 1:
        policy._stop_ids = []  # fixed-length generation, as min_new_tokens does for TRL
    ref = policy.clone()
    max_new_tokens = args.max_new_tokens if turns == 1 else TOOL_TURN_TOKENS
    config = AgentConfig(
        temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens, max_turns=turns,
        kl_coef=BETA, clip_eps=0.2, loss_aggregation="token_mean", scale_rewards=True,
        reward_baseline="mean", ppo_epochs=1, grad_accum_steps=1, max_grad_norm=1.0,
        learning_rate=LR, weight_decay=0.0,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=LR, weight_decay=0.0
    )
    trainer = GRPOTrainer(policy, ref, optimizer, config, share_prefix=shared)
    stop = [] if turns == 1 else None
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens,
                              **({"stop": stop} if stop is not None else {}))  # fmt: skip
    score = reward or (lambda t: completion_reward(completion_text(t)))
    collector = TrajectoryCollector(policy, registry, config, sampling=sampling,
                                    tool_style=tool_style, reward_fn=lambda t, task: score(t))  # fmt: skip
    return policy, ref, optimizer, trainer, collector, collector.sampling  # native: a copy


def tooltune_step(collector, trainer, sampling, tasks: list[str], group: int, seed: int) -> dict:
    sampling.seed = seed
    reset_peak_memory()
    t0 = now()
    trajectories = collector.collect(tasks, num_samples=group)
    groups = [trajectories[i : i + group] for i in range(0, len(trajectories), group)]
    metrics = trainer.train_step(groups)
    seconds = now() - t0
    memory = {"peak_memory_mib": peak_memory_mib()} if SYNC_CUDA else {}
    generated = sum(sum(t.tokens.mask) for t in trajectories)
    total = sum(len(t.tokens.ids) for t in trajectories)
    calls = sum(len(t.tool_calls) for t in trajectories)
    # (prompt tokens, tokens up to the last generated one, generated tokens) of each episode
    shapes = [episode_shape(t.tokens.mask) for t in trajectories]
    return {"seconds": seconds, "generated_tokens": generated, "sequence_tokens": total,
            "tool_calls": calls, "loss": metrics["loss"], "shapes": shapes, **memory}  # fmt: skip


def episode_shape(mask: list[int]) -> tuple[int, int, int]:
    """(prompt tokens, tokens up to the last generated one, generated tokens) of an episode."""
    scored = [i for i, m in enumerate(mask) if m]
    if not scored:
        return len(mask), len(mask), 0
    return scored[0], scored[-1] + 1, len(scored)


class Tooltune:
    """tooltune's side: `step()` runs one timed step, `profile()` one instrumented step."""

    def __init__(self, model_dir: Path, tasks: list[str], args, registry, turns=1, **switches):
        self.policy, self.ref, self.optimizer, self.trainer, self.collector, self.sampling = (
            tooltune_setup(model_dir, args, registry, turns, **switches)
        )
        self.tasks, self.group, self.registry = tasks, args.group, registry
        self.results: list[dict] = []

    def step(self) -> None:
        self.results.append(
            tooltune_step(
                self.collector,
                self.trainer,
                self.sampling,
                self.tasks,
                self.group,
                len(self.results),
            )  # fmt: skip
        )

    def profile(self) -> tuple[dict, dict[str, float]]:
        phases = Phases()
        with profiled(self.policy, self.ref, self.optimizer, self.registry, phases):
            result = tooltune_step(self.collector, self.trainer, self.sampling, self.tasks,
                                   self.group, len(self.results))  # fmt: skip
        phases.add("other", result["seconds"] - sum(phases.seconds.values()))
        return result, phases.seconds


# --------------------------------------------------------------------------------------------
# Peak and FLOPs
# --------------------------------------------------------------------------------------------


def matmul_peak_gflops(
    n: int = 1024, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def step_flops(params: int, prompt_tokens: int, generated: int) -> dict:
    """Model FLOPs of one step's necessary work: generation (each distinct prompt once, then
    the generated tokens; forward only), reference log-probs (forward only) and the policy
    update (forward + backward), each over the distinct prompt tokens plus the generated ones.
    A group's samples share their prompt, so running it once per sample is repeated work and
    not counted: utilisation then measures useful work, and cannot pass 100%."""
    tokens = prompt_tokens + generated
    gen, ref, train = 2 * params * tokens, 2 * params * tokens, 6 * params * tokens
    return {"generation": gen, "reference": ref, "training": train, "total": gen + ref + train}


# --------------------------------------------------------------------------------------------


def add_numbers(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First number.
        b: Second number.
    """
    return a + b


def bench_size(size: str, args: argparse.Namespace, root: Path, peak: float) -> dict:
    directory = root / size
    params = build_model(directory, size, build_tokenizer(directory))
    tokenizer = load_tokenizer(directory)
    users = prompt_texts(args.prompts)
    registry = ToolRegistry([])
    # The exact prompt strings tooltune's collector builds (system turn, user turn, open
    # assistant header) are TRL's prompts too, so both tokenise the same text.
    prompts = [opening_text(AgentTrajectory(prompt=u, task_tier="simple")) for u in users]
    prompt_tokens = sum(len(tokenizer.encode(p)) for p in prompts)  # distinct prompts, once
    steps = args.warmup + args.repeats
    log(f"[{size}] {params:,} parameters, {args.prompts} prompts x {args.group} samples x "
        f"{args.max_new_tokens} tokens; TRL and tooltune steps interleaved ...")  # fmt: skip
    # Steps alternate (TRL, tooltune, baselines..., TRL, ...) so all see the same load.
    side = Tooltune(directory, users, args, registry)
    bases = {name: Tooltune(directory, users, args, registry, **BASELINES[name])
             for name in args.baselines}  # fmt: skip

    def between() -> None:
        side.step()
        for base in bases.values():
            base.step()

    trl = run_trl(directory, prompts, args, steps, between=between)
    tt = side.results
    profile, phases = side.profile()
    log(f"[{size}] TRL step times {[round(t, 3) for t in trl['times']]}")
    log(f"[{size}] tooltune step times {[round(r['seconds'], 3) for r in tt]}")
    trl_s = statistics.median(trl["times"][args.warmup :])
    tt_s = statistics.median(r["seconds"] for r in tt[args.warmup :])
    baselines: dict[str, Any] = {}
    for name, base in bases.items():
        times = [r["seconds"] for r in base.results]
        log(f"[{size}] tooltune {name} step times {[round(t, 3) for t in times]}")
        base_s = statistics.median(times[args.warmup :])
        baselines[name] = {
            "s_per_step": base_s,
            "step_times": times,
            "tooltune_speedup": base_s / tt_s,  # what turning it back on gains
            "speedup_vs_trl": trl_s / base_s,
        }
    flops = step_flops(params, prompt_tokens, profile["generated_tokens"])
    return {
        "parameters": params,
        "trl_s_per_step": trl_s,
        "tooltune_s_per_step": tt_s,
        "speedup_vs_trl": trl_s / tt_s,
        "trl_generated_tokens_per_step": trl["generated_tokens"][-1],
        "tooltune_generated_tokens_per_step": profile["generated_tokens"],
        "trl_generated_tokens_per_s": trl["generated_tokens"][-1] / trl_s,
        "tooltune_generated_tokens_per_s": profile["generated_tokens"] / tt_s,
        "trl_step_times": trl["times"],
        "tooltune_step_times": [r["seconds"] for r in tt],
        "tooltune_profile_s": phases,
        "tooltune_profile_pct": {k: 100 * v / profile["seconds"] for k, v in phases.items()},
        "model_gflop_per_step": {k: v / 1e9 for k, v in flops.items()},
        "tooltune_mfu": flops["total"] / tt_s / 1e9 / peak,
        "trl_mfu": flops["total"] / trl_s / 1e9 / peak,
        "baselines": baselines,
    }


# --------------------------------------------------------------------------------------------
# Multi-turn tool use
# --------------------------------------------------------------------------------------------

TOOL_TURNS = 3  # assistant turns an episode may take (TRL: 2 rounds of tool results)
TOOL_TURN_TOKENS = 48  # new tokens a turn may take (a call is ~30)


def tool_operands(user: str) -> tuple[int, int]:
    """The two numbers of a `prompt_texts` question."""
    a, b = (int(x) for x in re.findall(r"\d+", user)[:2])
    return a, b


def solved_messages(user: str) -> list[dict]:
    """One solved episode as chat messages: the call, the tool's result, the answer."""
    a, b = tool_operands(user)
    call = {"type": "function", "function": {"name": "add_numbers", "arguments": {"a": a, "b": b}}}
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "add_numbers", "content": str(a + b)},
        {"role": "assistant", "content": str(a + b)},
    ]


def trl_record(tokenizer: Any, user: str) -> TokenRecord:
    """A solved episode as TRL's tool loop builds it: the prompt (Qwen2.5 template with the
    tools), the call, the tool result it appends, the answer; mask 1 on the assistant turns."""
    render = functools.partial(tokenizer.apply_chat_template, tools=[add_numbers],
                               tokenize=True, return_dict=False)  # fmt: skip
    messages = solved_messages(user)
    prompt, after_tool = (render(messages[:n], add_generation_prompt=True) for n in (1, 3))
    full = render(messages)
    ends = [i for i, t in enumerate(full) if t == tokenizer.eos_token_id]  # 5 turns end
    record = TokenRecord()
    record.extend(prompt, generated=False)
    record.extend(full[len(prompt) : ends[2] + 1], generated=True)
    record.extend(after_tool[ends[2] + 1 :], generated=False)
    record.extend(full[len(after_tool) : ends[4] + 1], generated=True)
    if record.ids != full[: ends[4] + 1]:
        raise ValueError("TRL's turns do not tokenise to the whole conversation")
    return record


def scripted_episodes(users: list[str], registry: ToolRegistry) -> list[AgentTrajectory]:
    """The same solved episodes in tooltune's format, through tooltune's own collector."""
    script = {}
    for user in users:
        a, b = tool_operands(user)
        call = json.dumps({"name": "add_numbers", "arguments": {"a": a, "b": b}})
        script[user] = [f"<tool_call>{call}</tool_call>", str(a + b)]
    config = AgentConfig(max_turns=TOOL_TURNS, max_new_tokens=TOOL_TURN_TOKENS)
    return TrajectoryCollector(ScriptedPolicy(script), registry, config).collect(users)


def fit_tool_model(directory: Path, users: list[str], registry: ToolRegistry) -> dict:
    """A 0.5M Qwen2 model that solves `users` with one tool call in both formats: TRL's
    (Qwen2.5 template) and tooltune's. Fitted with tooltune's SFT, saved to `directory`."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from tooltune.policies.hf import HFPolicy
    from tooltune.rollout import tokenize_trajectory
    from tooltune.training.sft import train_sft

    episodes = scripted_episodes(users, registry)
    renderer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))  # renders text
    renderer.chat_template = qwen_template()
    texts = [renderer.apply_chat_template(solved_messages(u), tools=[add_numbers], tokenize=False)
             for u in users] + [t.metadata["text"] for t in episodes]  # fmt: skip
    params = build_model(
        directory, "0.5M", build_tokenizer(directory, texts * 4, plain_markers=True)
    )
    tokenizer = load_tokenizer(directory)
    policy = HFPolicy.from_pretrained(directory)
    records = [tokenize_trajectory(t, policy.encode) for t in episodes]
    records += [trl_record(tokenizer, u) for u in users]
    config = AgentConfig(sft_epochs=200, sft_learning_rate=1e-2, sft_batch_size=len(records),
                         warmup_ratio=0.05)  # fmt: skip
    t0 = time.perf_counter()
    history = train_sft(policy, records, config)
    policy.save(directory)
    return {
        "parameters": params,
        "fit_seconds": time.perf_counter() - t0,
        "fit_loss": history.train_loss[-1],
        "prompt_tokens": {"tooltune": records[0].mask.index(1), "trl": records[-1].mask.index(1)},
    }


def bench_tools(args: argparse.Namespace, root: Path) -> dict:
    """Multi-turn tool use, equal work: a model fitted to call `add_numbers` and answer with
    its result runs one GRPO step at a time in TRL (`tools=[add_numbers]`) and in tooltune
    (`compare_tools`)."""
    directory = root / "tools-0.5M"
    registry = ToolRegistry([tool(add_numbers)])
    users = prompt_texts(args.prompts)
    log(
        f"[tools] fitting a 0.5M model to call add_numbers in both formats ({len(users)} prompts) ..."
    )
    fit = fit_tool_model(directory, users, registry)
    log(f"[tools] fitted in {fit['fit_seconds']:.1f}s, loss {fit['fit_loss']:.5f}")
    return {**fit, **compare_tools(directory, users, registry, args)}


def compare_tools(
    directory: Path,
    users: list[str],
    registry: ToolRegistry,
    args: argparse.Namespace,
    trl_options: dict | None = None,
    tooltune_options: dict | None = None,
) -> dict:
    """GRPO steps of TRL (`tools=[add_numbers]`) and tooltune on the model in `directory`,
    interleaved. The reward is the verified answer plus a little noise, so that no group has
    zero variance and neither side skips the update of a group (tooltune would).
    `trl_options` go to `run_trl` (dtype, peft_config, overrides), `tooltune_options` to
    `tooltune_setup` (load, tool_style)."""
    noise = random.Random(0)
    verified: dict[str, list[bool]] = {"trl": [], "tooltune": []}

    def score(side: str, user: str, answer: str) -> float:
        correct = answer.strip() == str(sum(tool_operands(user)))
        verified[side].append(correct)
        return float(correct) + 0.1 * noise.random()

    def trl_reward(prompt: list[dict], completion: list[dict]) -> float:
        last = completion[-1] if completion else {}
        answer = (last.get("content") or "") if last.get("role") == "assistant" else ""
        return score("trl", prompt[-1]["content"], answer)

    side = Tooltune(directory, users, args, registry, turns=TOOL_TURNS,
                    reward=lambda t: score("tooltune", t.prompt, t.final_answer or ""),
                    **(tooltune_options or {}))  # fmt: skip
    log(f"[tools] {args.prompts} prompts x {args.group} samples, up to {TOOL_TURNS} turns; "
        "TRL and tooltune steps interleaved ...")  # fmt: skip
    trl = run_trl(directory, [[{"role": "user", "content": u}] for u in users], args,
                  args.warmup + args.repeats, between=side.step, reward=trl_reward,
                  tools=[add_numbers], **(trl_options or {}))  # fmt: skip
    tt = side.results
    profile, phases = side.profile()
    log(f"[tools] TRL step times {[round(t, 3) for t in trl['times']]}")
    log(f"[tools] tooltune step times {[round(r['seconds'], 3) for r in tt]}")
    trl_s = statistics.median(trl["times"][args.warmup :])
    tt_s = statistics.median(r["seconds"] for r in tt[args.warmup :])
    memory = {}
    if SYNC_CUDA:  # the GPU's peak of allocated memory in each side's timed steps (MiB)
        memory = {"trl_peak_memory_mib": max(trl["peak_memory_mib"]),
                  "tooltune_peak_memory_mib": max(r["peak_memory_mib"] for r in tt)}  # fmt: skip
    return {
        "trl_s_per_step": trl_s,
        "tooltune_s_per_step": tt_s,
        "speedup_vs_trl": trl_s / tt_s,
        "trl_tool_calls_per_step": trl["tool_calls"],
        "tooltune_tool_calls_per_step": [r["tool_calls"] for r in tt],
        "trl_generated_tokens_per_step": trl["generated_tokens"],
        "tooltune_generated_tokens_per_step": [r["generated_tokens"] for r in tt],
        "trl_verified_answers": f"{sum(verified['trl'])}/{len(verified['trl'])}",
        "tooltune_verified_answers": f"{sum(verified['tooltune'])}/{len(verified['tooltune'])}",
        "trl_step_times": trl["times"],
        "tooltune_step_times": [r["seconds"] for r in tt],
        "tooltune_profile_s": phases,
        "tooltune_profile_step": profile,
        **memory,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.5M model, small batch, 5 repeats")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--sizes", default=None, help="comma list of 0.5M,5M ('' with --tools: tools only)"
    )
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--group", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tools", action="store_true", help="also run the multi-turn tool case")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help=f"comma list of tooltune runs with one optimisation off "
                             f"({', '.join(BASELINES)}); empty for none")  # fmt: skip
    parser.add_argument("--no-baseline", action="store_true", help="same as --baselines ''")
    args = parser.parse_args(argv)
    sizes = ("0.5M" if args.quick else "0.5M,5M") if args.sizes is None else args.sizes
    args.sizes = [size for size in sizes.split(",") if size]
    if not args.sizes and not args.tools:
        parser.error("nothing to run: give --sizes or --tools")
    args.prompts = args.prompts or (2 if args.quick else 4)
    args.group = args.group or 4
    args.max_new_tokens = args.max_new_tokens or (16 if args.quick else 32)
    args.repeats = args.repeats or 5
    args.baselines = [] if args.no_baseline else [b for b in args.baselines.split(",") if b]
    for name in args.baselines:
        if name not in BASELINES:
            parser.error(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    for size in args.sizes:
        if size not in SIZES:
            parser.error(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    torch.set_num_threads(args.threads)

    import transformers
    import trl

    peak = matmul_peak_gflops()
    log(f"fp32 matmul peak on this machine: {peak:.1f} GFLOP/s ({args.threads} threads)")
    out: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}",
        "threads": args.threads,
        "workload": {
            "prompts": args.prompts,
            "group": args.group,
            "max_new_tokens": args.max_new_tokens,
            "warmup": args.warmup,
            "repeats": args.repeats,
        },  # fmt: skip
        "matmul_peak_gflops": peak,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="grpo-vs-trl-") as tmp:
        for size in args.sizes:
            out["sizes"][size] = bench_size(size, args, Path(tmp), peak)
        if args.tools:
            out["tools"] = bench_tools(args, Path(tmp))
    first = out["sizes"][args.sizes[0]] if args.sizes else out["tools"]
    out["trl_s_per_step"] = first["trl_s_per_step"]
    out["tooltune_s_per_step"] = first["tooltune_s_per_step"]
    out["speedup_vs_trl"] = first["speedup_vs_trl"]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print_table(out)
    return 0


def print_table(out: dict) -> None:
    print(f"machine: {out['machine']}; fp32 matmul peak {out['matmul_peak_gflops']:.1f} GFLOP/s")
    w = out["workload"]
    print(f"workload: {w['prompts']} prompts x {w['group']} samples x {w['max_new_tokens']} new "
          f"tokens, median of {w['repeats']} steps after {w['warmup']} warm-up")  # fmt: skip
    for size, r in out["sizes"].items():
        print(f"\n[{size}] {r['parameters']:,} parameters")
        print(f"  TRL       {r['trl_s_per_step']:.3f} s/step  "
              f"{r['trl_generated_tokens_per_s']:.0f} gen tok/s  MFU {100 * r['trl_mfu']:.2f}%")  # fmt: skip
        print(f"  tooltune  {r['tooltune_s_per_step']:.3f} s/step  "
              f"{r['tooltune_generated_tokens_per_s']:.0f} gen tok/s  MFU {100 * r['tooltune_mfu']:.2f}%")  # fmt: skip
        print(f"  speedup   {r['speedup_vs_trl']:.2f}x  (generated tokens per step: TRL "
              f"{r['trl_generated_tokens_per_step']:.0f}, tooltune {r['tooltune_generated_tokens_per_step']})")  # fmt: skip
        for name, b in r["baselines"].items():
            print(f"  tooltune {name:20s} {b['s_per_step']:.3f} s/step (turning it back on: "
                  f"{b['tooltune_speedup']:.2f}x faster; vs TRL {b['speedup_vs_trl']:.2f}x)")  # fmt: skip
        print("  tooltune step profile:")
        for k, v in sorted(r["tooltune_profile_s"].items(), key=lambda kv: -kv[1]):
            print(f"    {k:30s} {v:7.3f} s  {r['tooltune_profile_pct'][k]:5.1f}%")
        g = r["model_gflop_per_step"]
        print(f"  model GFLOP/step: generation {g['generation']:.2f}, reference {g['reference']:.2f}, "
              f"training {g['training']:.2f}")  # fmt: skip
    if "tools" in out:
        t = out["tools"]
        print(f"\n[tools] multi-turn tool use, {t['parameters']:,} parameters fitted to call "
              f"add_numbers (loss {t['fit_loss']:.5f}); prompt tokens TRL {t['prompt_tokens']['trl']}, "
              f"tooltune {t['prompt_tokens']['tooltune']}")  # fmt: skip
        print(f"  TRL       {t['trl_s_per_step']:.3f} s/step  tool calls {t['trl_tool_calls_per_step']}  "
              f"generated {t['trl_generated_tokens_per_step']}  verified {t['trl_verified_answers']}")  # fmt: skip
        print(f"  tooltune  {t['tooltune_s_per_step']:.3f} s/step  tool calls "
              f"{t['tooltune_tool_calls_per_step']}  generated {t['tooltune_generated_tokens_per_step']}  "
              f"verified {t['tooltune_verified_answers']}")  # fmt: skip
        print(f"  speedup   {t['speedup_vs_trl']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
