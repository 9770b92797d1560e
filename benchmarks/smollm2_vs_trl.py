"""SmolLM2-135M-Instruct with LoRA: tooltune against TRL (trl==1.16.0) and `transformers`, CPU/GPU.

One process, the same model on every side: SmolLM2-135M-Instruct from tooltune's offline copy
(`tooltune.policies.smollm2.load_smollm2`, nothing is downloaded), with TRL's Qwen2.5 chat
template in place of SmolLM2's own (which cannot render tools; both use ChatML's
`<|im_start|>`/`<|im_end|>`, so no token is added). Frozen weights in `--dtype` (auto: bf16
where the CPU has AVX-512 BF16 or AMX) on both sides; LoRA r=16, alpha 32, no dropout, on
q/k/v/o/gate/up/down of all 30 layers, adapters in fp32 on both sides (tooltune: `HFPolicy`
with `LoraSettings`; TRL: `peft_config`, PEFT keeps adapters in fp32, and TRL's `bf16=True`
autocast). TRL's gradient checkpointing (on by default in TRL) is off, as tooltune has none
(`--trl-gradient-checkpointing` turns it on). Runs of the two sides alternate; times are
medians after `--warmup` runs.

1. SFT step (`speedup_sft_vs_trl`): expert demonstrations of the built-in world (its train
   split, solved by the scripted expert through the real tools) as OpenAI-style conversations
   with their tool schemas. TRL `SFTTrainer(assistant_only_loss=True)` tokenises them (Qwen2.5
   training template, `{% generation %}` masks); tooltune's `train_sft` trains on exactly those
   ids and masks, so both do the same rows, tokens and supervised tokens (printed). One step =
   one optimiser step on all `--sft-rows` rows, one micro-batch. TRL's step is timed from the
   batch fetch (collation) to `on_step_end`; tooltune's is a `train_sft` call of one step.
2. GRPO step (`speedup_grpo_vs_trl`): the multi-turn tool case of `grpo_vs_trl.py --tools`
   (`compare_tools`: `add_numbers`, up to 3 turns of 48 tokens, reward = verified answer plus
   noise), on SmolLM2 first fitted with tooltune's SFT (LoRA, merged; cached in
   ~/.cache/tooltune/bench) to call the tool in the Qwen2.5 format. tooltune runs the native
   tool style (the same template, the same tool schema), so prompts are the same tokens;
   TRL runs `GRPOTrainer(tools=[add_numbers])`. Tool calls, generated tokens and verified
   answers of each side are printed.
3. Rollouts (`speedup_rollout_vs_generate`): `--rollout-batch` (32) episodes of the fitted
   model, greedy: tooltune's collector against `transformers` `generate`, batched, one call per
   turn (the conversation re-rendered with the template, left-padded; tool calls parsed from
   the text, results appended). Generated tokens per second.
4. Utilisation: the bf16 (or fp32) matmul peak of this machine, measured in the run (on the
   CPU square matmuls of 1024 and 2048, best of both, before and after the benchmarks; on a
   GPU see `--device` below), against the model
   FLOPs of the SFT step (both sides) and of tooltune's GRPO scoring (reference log-probs, policy
   log-probs and backward of one profiled step, over each group's prompt once plus every
   continuation). Counted two ways: `6nt`, 6 x parameters (decoder + LM head) x tokens plus
   causal attention (3 x its forward; the reference pass 2 x and 1 x), as if every weight
   trained; `lora`, what LoRA needs: frozen weights need no weight gradients (4 x parameters x
   tokens: forward and the activations' backward), adapters 6 x their parameters x tokens, the
   LM head only at supervised (scored) positions.

`--quick`: 2 SFT rows, GRPO 2 prompts x 4 samples, 3 timed runs; else 8 rows, 4 x 4, 5 runs;
rollouts at batch 32 either way. The first run fits the tool model; later runs read it back.

`--device` (default `cpu`, as above; `--threads` counts only there): `cuda` runs everything on
one NVIDIA GPU, `auto` on the GPU where torch sees one, else on the CPU. On the GPU, `--dtype
auto` is bf16 where the GPU has it natively (compute capability 8.0 or later), tooltune's
policies (`HFPolicy.from_pretrained(device="cuda")`, the fitted model too) and `generate`'s
model and inputs live there, and TRL runs without `use_cpu` (its Trainer moves the model to
the GPU; the script checks it did) with `bf16=True` autocast for bf16 weights. Every timed region
starts and ends with `torch.cuda.synchronize()` (`grpo_vs_trl.now`), so times count the GPU's
work, not its queueing; each side's peak of allocated GPU memory in its timed runs
(`torch.cuda.max_memory_allocated()`, both sides' models resident) is printed as
`peak_memory_mib`. The peak for utilisation is then the GPU's: square matmuls of 4096 and 8192
in the weights' dtype, 10 products between two synchronisations, best of 5 per size, best
size, before and after the benchmarks; the JSON's `device` gives the GPU's name and that
method (the CPU's output has no `device` key). Where CUDA cannot be used (no GPU visible, more
than one visible, bf16 asked of a GPU without it, TRL leaving the model off the GPU) the script
stops with one line.

    python benchmarks/smollm2_vs_trl.py --quick --json
    python benchmarks/smollm2_vs_trl.py --only sft,rollout
    python benchmarks/smollm2_vs_trl.py --quick --json --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpo_vs_trl as base  # noqa: E402  (sets HF_HUB_OFFLINE and TRL's silences)
import torch  # noqa: E402
from grpo_vs_trl import TOOL_TURN_TOKENS, TOOL_TURNS, add_numbers, log  # noqa: E402

from tooltune.config import AgentConfig  # noqa: E402
from tooltune.registry import ToolDefinition, ToolRegistry, tool  # noqa: E402
from tooltune.rollout import SamplingParams, TrajectoryCollector  # noqa: E402
from tooltune.types import TokenRecord  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 16, 32
SFT_LR = 1e-4
FIT = dict(prompts=8, epochs=6, batch=8, lr=1e-3)  # 6 LoRA steps (5 solved 16 prompts, greedy)
CACHE = Path("~/.cache/tooltune/bench").expanduser()


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def smollm2_dir(root: Path) -> Path:
    """SmolLM2-135M-Instruct (links to the cached files) with TRL's Qwen2.5 chat template."""
    from tooltune.policies.smollm2 import load_smollm2

    source, directory = load_smollm2(), root / "smollm2-qwen-template"
    directory.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name != "chat_template.jinja":
            (directory / path.name).symlink_to(path)
    (directory / "chat_template.jinja").write_text(base.qwen_template())
    return directory


def lora_settings() -> Any:
    from tooltune.policies.hf import LoraSettings

    return LoraSettings(r=RANK, alpha=ALPHA, dropout=0.0, target_modules=list(TARGETS))


def peft_lora() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS),
                      task_type="CAUSAL_LM")  # fmt: skip


def tooltune_policy(directory: Path, args: argparse.Namespace, lora: bool = True) -> Any:
    from tooltune.policies.hf import HFPolicy

    return HFPolicy.from_pretrained(directory, lora=lora_settings() if lora else None,
                                    dtype=args.dtype, device=args.device)  # fmt: skip


def trainable(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def dtypes(model: Any) -> str:
    frozen = {str(p.dtype) for p in model.parameters() if not p.requires_grad}
    train = {str(p.dtype) for p in model.parameters() if p.requires_grad}
    return f"frozen {'/'.join(sorted(frozen))}, trainable {'/'.join(sorted(train))}"


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


class Shape:
    """Matmul parameters per token of a Llama-family model: decoder body, LM head, LoRA
    adapters (rank `RANK` on `TARGETS` of every layer), attention width."""

    def __init__(self, c: Any) -> None:
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        d, q, kv, ff = c.hidden_size, c.num_attention_heads * hd, c.num_key_value_heads * hd, c.intermediate_size  # fmt: skip
        self.layers, self.q, self.head = c.num_hidden_layers, q, c.vocab_size * d
        self.body = self.layers * (d * (2 * q + 2 * kv) + 3 * d * ff)
        self.lora = self.layers * RANK * (2 * (d + q) + 2 * (d + kv) + 3 * (d + ff))

    def attention(self, length: int) -> float:
        """Forward FLOPs of causal attention (QK^T and AV) over a sequence of `length`."""
        return 2.0 * self.layers * self.q * length * (length + 1)

    def train(self, tokens: float, supervised: float, attention: float) -> dict[str, float]:
        """FLOPs of a forward and backward pass with LoRA, both counts (see the docstring)."""
        return {"6nt": 6 * (self.body + self.head) * tokens + 3 * attention,
                "lora": 4 * self.body * tokens + 6 * self.lora * tokens + 4 * self.head * supervised
                + 3 * attention}  # fmt: skip

    def forward(self, tokens: float, scored: float, attention: float) -> dict[str, float]:
        return {"6nt": 2 * (self.body + self.head) * tokens + attention,
                "lora": 2 * self.body * tokens + 2 * self.head * scored + attention}  # fmt: skip


def bf16_peak(dtype: torch.dtype) -> float:
    return max(base.matmul_peak_gflops(n, dtype=dtype) for n in (1024, 2048))


GPU_PEAK = dict(sizes=(4096, 8192), products=10, repeats=5)


def gpu_peak(dtype: torch.dtype, device: str) -> float:
    """GFLOP/s of square `dtype` matmuls on the GPU: `GPU_PEAK["products"]` products between two
    synchronisations, best of `GPU_PEAK["repeats"]`, after three unmeasured ones, best size."""
    best = 0.0
    for n in GPU_PEAK["sizes"]:
        a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
        for _ in range(3):
            torch.mm(a, b)
        for _ in range(GPU_PEAK["repeats"]):
            t0 = base.now()
            for _ in range(GPU_PEAK["products"]):
                torch.mm(a, b)
            best = max(best, GPU_PEAK["products"] * 2 * n**3 / (base.now() - t0) / 1e9)
        del a, b
    torch.cuda.empty_cache()
    return best


def matmul_peak(args: argparse.Namespace) -> float:
    return gpu_peak(args.dtype, args.device) if args.device == "cuda" else bf16_peak(args.dtype)


def mfu(gflop: dict[str, float], seconds: float, peak: float) -> dict[str, float]:
    return {k: v / seconds / peak for k, v in gflop.items()}


# --------------------------------------------------------------------------------------------
# SFT
# --------------------------------------------------------------------------------------------


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` expert demonstrations of the built-in world as {messages, tools} rows (tool-call
    arguments as objects, as chat templates render them; the expert's thinking left out: the
    Qwen2.5 template does not render it)."""
    from tooltune.env_data import collect_successes
    from tooltune.environment import BuiltinWorld
    from tooltune.messages import trajectory_to_messages

    config = AgentConfig(max_turns=6, max_new_tokens=160)
    with BuiltinWorld(config=config) as env:
        tasks = env.sample_tasks("train", 2 * n, seed=seed)
        demos, _ = collect_successes(env.expert(), env, tasks, config, "compact")
    rows = []
    for demo in demos[:n]:
        messages = []
        for m in trajectory_to_messages(demo):
            m = {k: v for k, v in m.items() if k != "reasoning_content"}
            for call in m.get("tool_calls", []):
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
            messages.append(m)
        rows.append({"messages": messages, "tools": json.dumps(demo.tools)})
    return rows


def trl_sft(directory: Path, rows: list[dict], args: argparse.Namespace, steps: int,
            between: Any) -> tuple[Any, dict]:  # fmt: skip
    """TRL's SFTTrainer on `rows` (one step = every row), `between()` after each timed step."""
    from datasets import Dataset, Features, Json, Value
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list(
        rows, features=Features({"messages": Json(), "tools": Value("string")})
    )
    result: dict[str, Any] = {"times": [], "work": [], "autocast": set(), "memory": []}
    fetch = {"s": 0.0}

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = base.now()

        def on_step_end(self, *a, **k):
            result["times"].append(base.now() - self.t0 + fetch["s"])
            if base.SYNC_CUDA:  # from the batch fetch on
                result["memory"].append(base.peak_memory_mib())
            between()

    config = SFTConfig(
        output_dir=str(directory / "trl-sft"), use_cpu=args.device == "cpu", report_to="none",
        save_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=0, learning_rate=SFT_LR, max_steps=steps,
        per_device_train_batch_size=len(rows), gradient_accumulation_steps=1,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=args.dtype == torch.bfloat16, gradient_checkpointing=args.trl_gradient_checkpointing,
        assistant_only_loss=True, max_length=None, packing=False, dataloader_num_workers=0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=args.dtype)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(model=model, args=config, train_dataset=data,
                             processing_class=AutoTokenizer.from_pretrained(directory),
                             peft_config=peft_lora(), callbacks=[Timer()])  # fmt: skip
    base.check_placed(trainer.model, args.device, "TRL's SFTTrainer")
    fetch_batches, compute_loss = trainer.get_batch_samples, trainer.compute_loss

    def timed_fetch(*a, **k):
        base.reset_peak_memory()
        t0 = base.now()
        out = fetch_batches(*a, **k)
        fetch["s"] = base.now() - t0
        return out

    def counting_loss(model, inputs, *a, **k):
        labels = inputs["labels"]
        result["work"].append({"rows": int(labels.shape[0]), "padded_tokens": labels.numel(),
                               "tokens": int(inputs["attention_mask"].sum()),
                               "supervised_tokens": int((labels[:, 1:] != -100).sum())})  # fmt: skip
        return compute_loss(model, inputs, *a, **k)

    trainer.get_batch_samples, trainer.compute_loss = timed_fetch, counting_loss
    embed = trainer.model.get_input_embeddings()
    embed.register_forward_pre_hook(
        lambda m, i: result["autocast"].add(torch.is_autocast_enabled(args.device))
    )
    result["trainable"], result["dtypes"] = trainable(trainer.model), dtypes(trainer.model)
    return trainer, result


def bench_sft(args: argparse.Namespace, directory: Path) -> dict:
    from tooltune.training.sft import train_sft

    rows = sft_rows(args.sft_rows)
    policy = tooltune_policy(directory, args)
    config = AgentConfig(sft_learning_rate=SFT_LR, sft_batch_size=len(rows), grad_accum_steps=1,
                         micro_batch_tokens=0, warmup_ratio=0.0, max_grad_norm=1.0,
                         weight_decay=0.0)  # fmt: skip
    records: list[TokenRecord] = []
    tt_times: list[float] = []
    tt_memory: list[float] = []

    def tooltune_step() -> None:
        base.reset_peak_memory()
        t0 = base.now()
        train_sft(policy, records, config, epochs=1)
        tt_times.append(base.now() - t0)
        if base.SYNC_CUDA:
            tt_memory.append(base.peak_memory_mib())

    trainer, trl = trl_sft(directory, rows, args, args.warmup + args.repeats, tooltune_step)
    for row in trainer.train_dataset:  # the ids and labels TRL trains on, in the rows' order
        mask = [int(label != -100) for label in row["labels"]]
        records.append(TokenRecord(list(row["input_ids"]), mask, [0.0] * len(mask)))
    lengths = [len(r.ids) for r in records]
    work = {"rows": len(records), "padded_tokens": len(records) * max(lengths),
            "tokens": sum(lengths), "supervised_tokens": sum(sum(r.mask[1:]) for r in records)}  # fmt: skip
    log(f"[sft] {len(rows)} conversations, {work['tokens']} tokens ({min(lengths)}-{max(lengths)} "
        f"a row), {work['supervised_tokens']} supervised; TRL and tooltune steps interleaved ...")  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    log(f"[sft] TRL step times {[round(t, 2) for t in trl['times']]}")
    log(f"[sft] tooltune step times {[round(t, 2) for t in tt_times]}")
    trl_s = statistics.median(trl["times"][args.warmup :])
    tt_s = statistics.median(tt_times[args.warmup :])
    shape = Shape(policy.model.config)
    attention = sum(shape.attention(n) for n in lengths)
    flops = shape.train(work["tokens"], work["supervised_tokens"], attention)
    memory = {}
    if base.SYNC_CUDA:  # the GPU's peak of allocated memory in each side's timed steps (MiB)
        memory = {"peak_memory_mib": {"trl": max(trl["memory"]), "tooltune": max(tt_memory)}}
    return {
        "rows": len(rows),
        "tooltune_work_per_step": work,
        "trl_work_per_step": trl["work"][-1],
        "trl_s_per_step": trl_s,
        "tooltune_s_per_step": tt_s,
        "speedup_vs_trl": trl_s / tt_s,
        "trl_step_times": trl["times"],
        "tooltune_step_times": tt_times,
        "trainable_parameters": {
            "tooltune": trainable(policy.model),
            "trl": trl["trainable"],
            "counted": shape.lora,
        },  # fmt: skip
        "dtype": {
            "tooltune": f"{dtypes(policy.model)}, no autocast",
            "trl": f"{trl['dtypes']}, autocast bf16 {sorted(trl['autocast'])}",
        },  # fmt: skip
        "model_gflop_per_step": {k: v / 1e9 for k, v in flops.items()},
        **memory,
    }


# --------------------------------------------------------------------------------------------
# The fitted tool model; GRPO
# --------------------------------------------------------------------------------------------


class SchemaTool(ToolDefinition):
    """A tool listed as `transformers` lists the function (what TRL's `tools=` shows), so that
    tooltune's native prompt is TRL's, token for token."""

    def to_openai(self) -> dict[str, Any]:
        from transformers.utils import get_json_schema

        return get_json_schema(self.function)


def tool_registry() -> ToolRegistry:
    plain = tool(add_numbers)
    return ToolRegistry([SchemaTool(plain.name, plain.description, plain.parameters, add_numbers)])


def fitted_model(directory: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """SmolLM2 fitted (LoRA, merged) to call `add_numbers` in the Qwen2.5 format and answer with
    its result, on `FIT["prompts"]` prompts; cached under `CACHE` by what it depends on."""
    from tooltune.training.sft import train_sft

    key = hashlib.sha256(json.dumps([FIT, RANK, ALPHA, base.qwen_template(), str(args.dtype)])
                         .encode()).hexdigest()[:12]  # fmt: skip
    target = CACHE / f"smollm2-add-numbers-{key}"
    if (target / "model.safetensors").exists() and not args.refit:
        return target, {"fit": "cached", "path": str(target)}
    log(f"[fit] fitting SmolLM2 (LoRA) to call add_numbers on {FIT['prompts']} prompts ...")
    t0 = base.now()
    policy = tooltune_policy(directory, args)
    records = [base.trl_record(policy.tokenizer, u) for u in base.prompt_texts(FIT["prompts"])]
    config = AgentConfig(sft_epochs=FIT["epochs"], sft_learning_rate=FIT["lr"], warmup_ratio=0.0,
                         sft_batch_size=FIT["batch"], grad_accum_steps=1, micro_batch_tokens=0)  # fmt: skip
    history = train_sft(policy, records, config)
    merged = policy.model.merge_and_unload()
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=CACHE))
    merged.save_pretrained(tmp)
    policy.tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target, {"fit": "fitted", "fit_seconds": base.now() - t0,
                    "fit_loss": history.train_loss[-1], "path": str(target)}  # fmt: skip


def bench_grpo(args: argparse.Namespace, fitted: Path) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    users = base.prompt_texts(args.prompts)
    ns = argparse.Namespace(prompts=args.prompts, group=args.group, warmup=args.warmup,
                            repeats=args.repeats, max_new_tokens=TOOL_TURN_TOKENS)  # fmt: skip
    overrides = {"gradient_checkpointing": args.trl_gradient_checkpointing}
    out = base.compare_tools(
        fitted, users, tool_registry(), ns,
        trl_options=dict(dtype=args.dtype, peft_config=peft_lora(), overrides=overrides,
                         device=args.device),
        tooltune_options=dict(load=dict(lora=lora_settings(), dtype=args.dtype, device=args.device),
                              tool_style="native"),
    )  # fmt: skip
    profile, phases = out.pop("tooltune_profile_step"), out["tooltune_profile_s"]
    trl_prompt = AutoTokenizer.from_pretrained(fitted).apply_chat_template(
        [{"role": "user", "content": users[0]}], tools=[add_numbers], add_generation_prompt=True,
        tokenize=True, return_dict=False,
    )  # fmt: skip
    out["prompt_tokens"] = {"tooltune": profile["shapes"][0][0], "trl": len(trl_prompt)}
    # Scoring FLOPs of the profiled step: each group's prompt once, then every continuation
    shape = Shape(AutoConfig.from_pretrained(fitted))
    tokens = scored = attention = 0.0
    for g in range(0, len(profile["shapes"]), args.group):
        group = profile["shapes"][g : g + args.group]
        prompt = group[0][0]
        tokens += prompt + sum(length - prompt for _, length, _ in group)
        scored += sum(n for _, _, n in group)
        attention += shape.attention(prompt) + sum(
            shape.attention(length) - shape.attention(prompt) for _, length, _ in group
        )
    ref, train = shape.forward(tokens, scored, attention), shape.train(tokens, scored, attention)
    flops = {k: ref[k] + train[k] for k in ref}
    seconds = sum(v for k, v in phases.items() if k.startswith("logprobs") or k == "backward")
    for side in ("trl", "tooltune"):  # sampled episodes differ: the work each side did, per second
        timed = slice(args.warmup, None)
        out[f"{side}_generated_tokens_per_s"] = sum(out[f"{side}_generated_tokens_per_step"][timed]) / sum(out[f"{side}_step_times"][timed])  # fmt: skip
    out.update(scoring_tokens=tokens, scoring_seconds=seconds,
               scoring_gflop={k: v / 1e9 for k, v in flops.items()})  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------


def generate_episodes(model: Any, tokenizer: Any, users: list[str]) -> dict:
    """The episodes with `transformers` `generate`: one batched call per turn over the
    conversations still running, each re-rendered with the chat template."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    chats = [[{"role": "user", "content": u}] for u in users]
    active, answers, generated, calls = list(range(len(users))), {}, 0, 0
    for turn in range(TOOL_TURNS):
        if not active:
            break
        texts = [tokenizer.apply_chat_template(chats[i], tools=[add_numbers], tokenize=False,
                                               add_generation_prompt=True) for i in active]  # fmt: skip
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(model.device)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=TOOL_TURN_TOKENS, do_sample=False,
                                 eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                 temperature=None, top_p=None, top_k=None)  # fmt: skip
        running = []
        for row, i in zip(out[:, batch["input_ids"].shape[1] :].tolist(), active, strict=True):
            n = row.index(eos) + 1 if eos in row else len(row)
            generated += n
            text = tokenizer.decode(row[:n], skip_special_tokens=True)
            found = []
            for body in re.findall(r"<tool_call>\s*(.*?)\s*</tool_call>", text, re.S):
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    found.append(json.loads(body))
            if found and turn < TOOL_TURNS - 1:
                chats[i].append({"role": "assistant", "content": "", "tool_calls":
                                 [{"type": "function", "function": c} for c in found]})  # fmt: skip
                for c in found:
                    result = "error"
                    with contextlib.suppress(Exception):
                        result = str(add_numbers(**c.get("arguments", {})))
                    chats[i].append({"role": "tool", "name": c.get("name"), "content": result})
                calls += len(found)
                running.append(i)
            else:
                answers[i] = text.strip()
        active = running
    return {"generated": generated, "calls": calls,
            "answers": [answers.get(i, "") for i in range(len(users))]}  # fmt: skip


def bench_rollout(args: argparse.Namespace, fitted: Path) -> dict:
    from transformers import AutoTokenizer

    policy = tooltune_policy(fitted, args, lora=False).eval()
    users = base.prompt_texts(args.rollout_batch)
    config = AgentConfig(max_turns=TOOL_TURNS, max_new_tokens=TOOL_TURN_TOKENS)
    sampling = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=TOOL_TURN_TOKENS)
    collector = TrajectoryCollector(policy, tool_registry(), config, sampling=sampling,
                                    tool_style="native")  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(fitted, padding_side="left")

    def tooltune_run() -> dict:
        episodes = collector.collect(users)
        return {"generated": sum(sum(e.tokens.mask) for e in episodes),
                "calls": sum(len(e.tool_calls) for e in episodes),
                "answers": [(e.final_answer or "").strip() for e in episodes]}  # fmt: skip

    runs = {
        "tooltune": tooltune_run,
        "generate": lambda: generate_episodes(policy.model, tokenizer, users),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    memory: dict[str, list[float]] = {k: [] for k in runs}
    last: dict[str, dict] = {}
    log(f"[rollout] {len(users)} episodes, greedy, up to {TOOL_TURNS} turns, interleaved ...")
    for _ in range(args.warmup + args.repeats):
        for name, run in runs.items():
            base.reset_peak_memory()
            t0 = base.now()
            last[name] = run()
            times[name].append(base.now() - t0)
            if base.SYNC_CUDA:
                memory[name].append(base.peak_memory_mib())
    log(f"[rollout] step times { {k: [round(t, 2) for t in v] for k, v in times.items()} }")
    out: dict[str, Any] = {"episodes": len(users)}
    for name, result in last.items():
        seconds = statistics.median(times[name][args.warmup :])
        truth = [str(sum(base.tool_operands(u))) for u in users]
        out[name] = {"s_per_run": seconds, "times": times[name],
                     "generated_tokens": result["generated"], "tool_calls": result["calls"],
                     "verified": sum(a == t for a, t in zip(result["answers"], truth, strict=True)),
                     "tokens_per_s": result["generated"] / seconds}  # fmt: skip
        if base.SYNC_CUDA:  # the GPU's peak of allocated memory in the side's runs (MiB)
            out[name]["peak_memory_mib"] = max(memory[name])
    out["same_answers"] = sum(
        a == b
        for a, b in zip(last["tooltune"]["answers"], last["generate"]["answers"], strict=True)
    )
    out["speedup"] = out["tooltune"]["tokens_per_s"] / out["generate"]["tokens_per_s"]
    return out


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, 3 repeats")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", default="sft,grpo,rollout", help="comma list of sft,grpo,rollout")
    parser.add_argument("--sft-rows", type=int, default=None, help="conversations a SFT step")
    parser.add_argument("--prompts", type=int, default=None, help="GRPO prompts a step")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--rollout-batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                        help="where both sides run: cpu, cuda (one GPU), auto (cuda if present)")  # fmt: skip
    parser.add_argument("--dtype", default="auto", help="frozen weights: auto | bf16 | fp32")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true",
                        help="TRL's default (off here: tooltune does not checkpoint)")  # fmt: skip
    parser.add_argument("--refit", action="store_true", help="fit the tool model again")
    args = parser.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    if not parts or set(parts) - {"sft", "grpo", "rollout"}:
        parser.error("--only takes a comma list of sft, grpo, rollout")
    args.sft_rows = args.sft_rows or (2 if args.quick else 8)
    args.prompts = args.prompts or (2 if args.quick else 4)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.device = resolve_device(args.device)
    torch.set_num_threads(args.threads)

    import datasets
    import transformers
    import trl

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()

    from tooltune.policies.hf import fast_bf16, resolve_dtype

    args.dtype = resolve_dtype(args.dtype, args.device)
    if args.device == "cuda" and args.dtype == torch.bfloat16 and not fast_bf16("cuda"):
        fail(f"--dtype bf16 needs a GPU with native bf16 (compute capability 8.0 or later; "
             f"{torch.cuda.get_device_name()} has "
             f"{'.'.join(map(str, torch.cuda.get_device_capability()))}, and TRL's bf16 refuses "
             "it); use --dtype auto or fp32")  # fmt: skip
    base.time_device(args.device)
    peaks = [matmul_peak(args)]
    gpu: dict[str, Any] = {}
    if args.device == "cuda":
        gpu = {"type": "cuda", "name": torch.cuda.get_device_name(),
               "capability": ".".join(map(str, torch.cuda.get_device_capability())),
               "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
               "cuda": torch.version.cuda,
               "peak": f"{str(args.dtype).removeprefix('torch.')} square matmuls of "
                       f"{' and '.join(map(str, GPU_PEAK['sizes']))} on the GPU, "
                       f"{GPU_PEAK['products']} products between synchronisations, best of "
                       f"{GPU_PEAK['repeats']}, before and after the benchmarks"}  # fmt: skip
        log(f"device: cuda, {gpu['name']} (compute capability {gpu['capability']}, "
            f"{gpu['memory_gib']} GiB); {args.dtype} matmul peak: {peaks[0]:.0f} GFLOP/s "
            f"({gpu['peak']})")  # fmt: skip
    else:
        log(f"{args.dtype} matmul peak: {peaks[0]:.0f} GFLOP/s ({args.threads} threads)")
    out: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}",
        "threads": args.threads,
        "dtype": str(args.dtype),
        "workload": {
            "sft_rows": args.sft_rows,
            "prompts": args.prompts,
            "group": args.group,
            "rollout_batch": args.rollout_batch,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "lora": f"r={RANK}, alpha={ALPHA}, {'/'.join(TARGETS)}",
            "trl_gradient_checkpointing": args.trl_gradient_checkpointing,
        },  # fmt: skip
    }
    if args.device == "cuda":  # the CPU's output has no such key, as before the option
        out["device"] = gpu
    with tempfile.TemporaryDirectory(prefix="smollm2-vs-trl-") as tmp:
        directory = smollm2_dir(Path(tmp))
        if "sft" in parts:
            out["sft"] = bench_sft(args, directory)
            out["speedup_sft_vs_trl"] = out["sft"]["speedup_vs_trl"]
        if {"grpo", "rollout"} & set(parts):
            fitted, out["fit"] = fitted_model(directory, args)
        if "grpo" in parts:
            out["grpo"] = bench_grpo(args, fitted)
            out["speedup_grpo_vs_trl"] = out["grpo"]["speedup_vs_trl"]
        if "rollout" in parts:
            out["rollout"] = bench_rollout(args, fitted)
            out["speedup_rollout_vs_generate"] = out["rollout"]["speedup"]
    peaks.append(matmul_peak(args))
    peak = max(peaks)  # the machine is shared: the better of two measurements
    out["matmul_peak_gflops"] = {"before": peaks[0], "after": peaks[1], "used": peak}
    out["mfu"] = {}
    if "sft" in out:
        s = out["sft"]
        out["mfu"]["sft_tooltune"] = mfu(s["model_gflop_per_step"], s["tooltune_s_per_step"], peak)
        out["mfu"]["sft_trl"] = mfu(s["model_gflop_per_step"], s["trl_s_per_step"], peak)
    if "grpo" in out:
        g = out["grpo"]
        out["mfu"]["grpo_scoring_tooltune"] = mfu(g["scoring_gflop"], g["scoring_seconds"], peak)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print_table(out)
    return 0


def fail(message: str) -> NoReturn:
    """Stop with one line on stderr (exit status 1), no traceback."""
    raise SystemExit(f"{Path(__file__).name}: {message}")


def resolve_device(name: str) -> str:
    """`--device`: "cpu" or "cuda" (one GPU there); `fail`s where CUDA cannot be used."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
        fail(f"--device cuda, but torch {torch.__version__} ({build}) sees no CUDA GPU; "
             "use --device cpu or auto")  # fmt: skip
    if torch.cuda.device_count() > 1:  # the Trainer would spread TRL's batch over every GPU
        fail(f"--device cuda runs on one GPU and {torch.cuda.device_count()} are visible "
             "(TRL's Trainer would use them all); set CUDA_VISIBLE_DEVICES=0")  # fmt: skip
    return name


def print_table(out: dict) -> None:
    p, s, g, r = (out.get(k) for k in ("matmul_peak_gflops", "sft", "grpo", "rollout"))
    lines = [f"machine: {out['machine']}; {out['dtype']} matmul peak {p['used']:.0f} GFLOP/s",
             f"workload: {out['workload']}"]  # fmt: skip
    if "device" in out:
        d = out["device"]
        lines.insert(1, f"device: cuda, {d['name']} ({d['memory_gib']} GiB); peak of {d['peak']}")
    if s:
        lines += [f"[sft] {s['speedup_vs_trl']:.2f}x: TRL {s['trl_s_per_step']:.2f} s/step, "
                  f"tooltune {s['tooltune_s_per_step']:.2f} s/step",
                  f"  work per step: TRL {s['trl_work_per_step']}, tooltune {s['tooltune_work_per_step']}",
                  f"  dtype: {s['dtype']}; trainable {s['trainable_parameters']}"]  # fmt: skip
    if g:
        lines.append(f"[grpo] {g['speedup_vs_trl']:.2f}x; prompt tokens {g['prompt_tokens']}")
        lines += [f"  {k:9s} {g[f'{k}_s_per_step']:.2f} s/step, calls {g[f'{k}_tool_calls_per_step']}, "
                  f"generated {g[f'{k}_generated_tokens_per_step']} ({g[f'{k}_generated_tokens_per_s']:.1f}/s), verified {g[f'{k}_verified_answers']}"
                  for k in ("trl", "tooltune")]  # fmt: skip
    if r:
        lines.append(
            f"[rollout] {r['speedup']:.2f}x tokens/s; same answers {r['same_answers']}/{r['episodes']}"
        )
        lines += [f"  {k:9s} {x['s_per_run']:.2f} s, {x['generated_tokens']} tokens, {x['tool_calls']} "
                  f"calls, verified {x['verified']}" for k, x in ((k, r[k]) for k in ("generate", "tooltune"))]  # fmt: skip
    lines += [f"MFU {name}: {v}" for name, v in out["mfu"].items()]
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
