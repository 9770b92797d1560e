"""SFT step on SmolLM2-135M-Instruct: LoRA on every layer against LoRA on the top layers.

With adapters on the last N of the model's layers only, the layers below run without autograd
(nothing there needs a gradient), so backward stops at layer 30 - N. This script times one SFT
micro-batch (forward and backward, the LM head on the scored positions only, as `train_sft`
runs it) for each variant on the same rows, interleaved, and prints the medians and ratios.

    python benchmarks/lora_layers.py [--quick] [--json] [--rows 2] [--variants all:0.05,all:0,10:0]

A variant is `LAYERS:DROPOUT` (`all` = every layer). Needs the SmolLM2 cache (`tooltune demo`
converts it once) and the `hf` extra. The learning side (validation loss after the same steps)
is in benchmarks/RESULTS.md; this script measures time only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tooltune.chat_format import TOOL_STYLES
from tooltune.config import AgentConfig
from tooltune.environment import Environment
from tooltune.policies import HFPolicy, LoraSettings, load_smollm2
from tooltune.rollout import TrajectoryCollector, tokenize_trajectory
from tooltune.tasks import sample_tasks, verify
from tooltune.tasks.expert import ExpertPolicy


def demonstrations(n: int, style: str) -> list:
    """`n` verified expert episodes of the sequential and parallel tiers (rows of 600-900
    SmolLM2 tokens in the compact style)."""
    config = AgentConfig(seed=0, max_trajectory_len=2048)
    with Environment(seed=0, config=config) as env:
        tasks = sample_tasks("train", 4 * n, seed=0, world=env,
                             tier_weights={"multi_tool_seq": 0.5, "multi_tool_par": 0.5})  # fmt: skip
        expert = ExpertPolicy(env)
        expert.prepare(tasks)
        collector = TrajectoryCollector(expert, env.registry, config, tool_style=style,
                                        verifier=lambda task, t: verify(task, t, env))  # fmt: skip
        return [d for d in collector.collect(tasks) if d.success][:n]


def batch(policy: HFPolicy, demos: list, style: str):
    records = [tokenize_trajectory(d, policy.encode, style) for d in demos]
    width = max(len(r.ids) for r in records)
    ids = torch.full((len(records), width), policy.pad_token_id)
    mask = torch.zeros_like(ids)
    scored = torch.zeros(len(records), width - 1, dtype=torch.bool)
    for i, r in enumerate(records):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        mask[i, : len(r.ids)] = 1
        scored[i, : len(r.ids) - 1] = torch.tensor(r.mask[1:], dtype=torch.bool)
    return ids, mask, scored, [len(r.ids) for r in records]


def step_seconds(policy: HFPolicy, ids, mask, scored) -> float:
    policy.model.train()
    started = time.perf_counter()
    logprobs = policy.token_logprobs(ids, mask, scored)
    (-logprobs.sum()).backward()
    policy.model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 timed steps a variant, not 5")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rows", type=int, default=2, help="rows in the micro-batch")
    parser.add_argument("--variants", default="all:0.05,all:0,10:0")
    parser.add_argument("--tool-style", default="compact", choices=TOOL_STYLES)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    demos = demonstrations(args.rows, args.tool_style)
    path = load_smollm2()
    policies = {}
    for variant in args.variants.split(","):
        layers, dropout = variant.split(":")
        lora = LoraSettings(
            top_layers=0 if layers == "all" else int(layers), dropout=float(dropout)
        )
        policies[variant] = HFPolicy.from_pretrained(path, lora=lora, dtype="fp32")
    ids, mask, scored, lengths = batch(next(iter(policies.values())), demos, args.tool_style)
    for policy in policies.values():  # warm-up
        step_seconds(policy, ids, mask, scored)
    times: dict[str, list[float]] = {v: [] for v in policies}
    for _ in range(2 if args.quick else 5):  # interleaved, so a slow minute hits every variant
        for variant, policy in policies.items():
            times[variant].append(step_seconds(policy, ids, mask, scored))
    medians = {v: statistics.median(t) for v, t in times.items()}
    first = next(iter(medians))
    result = {
        "rows": lengths,
        "scored_tokens": int(scored.sum()),
        "threads": args.threads,
        "median_s": {v: round(s, 3) for v, s in medians.items()},
        "trainable_parameters": {
            v: sum(p.numel() for p in pol.parameters() if p.requires_grad)
            for v, pol in policies.items()
        },
        f"speedup_vs_{first}": {v: round(medians[first] / s, 2) for v, s in medians.items()},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"rows of {lengths} tokens ({result['scored_tokens']} scored), {args.threads} threads")
    for variant, seconds in medians.items():
        print(f"  LoRA {variant:>8}: {seconds:6.2f} s a step  "
              f"({result['trainable_parameters'][variant]:,} trainable, "
              f"{medians[first] / seconds:.2f}x {first})")  # fmt: skip


if __name__ == "__main__":
    main()
