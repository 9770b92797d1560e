"""Evaluation throughput: a trained model on the demo's test tasks, evaluated as before
2026-12-04's sixth session, as before 2026-12-06's third, and as now.

Every way runs the real evaluation path (`TrajectoryCollector` on the built-in world, the
demo's settings from the run directory's `config.json`, greedy decoding) on the same tasks:

* **batch by batch** (before): the tasks in chunks of `--batch`, each chunk collected to its
  end (its longest episode) before the next starts, every system prompt run afresh;
* **kept full, no system prompts kept**: `collect(tasks, max_active=--batch)`, a finished
  episode handing its place to the next task, every system prompt still run afresh;
* **kept full**: the same, new episodes starting from the system prompts earlier generate
  calls ran, one token a row at each decoding step;
* **kept full, guesses checked** (now): the same, each decoding step checking up to
  `num_speculative_tokens` guessed tokens a row (`tooltune.policies.drafting`; the guesses
  start from nothing at each run, as in a fresh evaluation).

The runs take turns (`--repeats`) and each way keeps its fastest. All print the tokens they
generated and the tasks they solved: the work is the same up to float rounding (batches of
another shape round differently, which can flip a near-tied greedy token).

`--sampled` measures GRPO's rollouts instead: 8 samples of each of `--tasks` / 8 training tasks
at the model's sampling settings (temperature 1 in the demo), kept full, one token a step
against guesses checked; the guessing side's drafter first learns a greedy pass over 16 test
tasks (untimed), as GRPO's follows the demo's evaluation. With the same seed both sides draw
the same tokens up to float rounding; the figure compared is the time a generated token.

    python benchmarks/evaluation.py --model RUN_DIR              # 96 tasks, batch 32
    python benchmarks/evaluation.py --model RUN_DIR --quick --json
    python benchmarks/evaluation.py --model RUN_DIR --sampled --quick --json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

import tooltune.policies.module as module
from tooltune.config import AgentConfig
from tooltune.environment import Environment
from tooltune.policies.sampling import generate_tokens
from tooltune.rollout import SamplingParams, TrajectoryCollector
from tooltune.training.run_dir import load_policy

GUESSES = module.ModulePolicy.num_speculative_tokens  # the default


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def policy_dir(model: Path) -> Path:
    for candidate in (model / "checkpoints" / "latest" / "policy", model):
        if (candidate / "config.json").exists():
            return candidate
    raise SystemExit(f"--model: no saved policy in {model} (a demo run directory or a policy)")


SIDES = ("batch_by_batch", "kept_full_no_openings", "kept_full", "kept_full_guessing")


def without_openings(*args: Any, **kwargs: Any) -> Any:
    return generate_tokens(*args, **{**kwargs, "openings": None})


def collect(collector: TrajectoryCollector, tasks: list, batch: int, side: str) -> tuple:
    kept = side.startswith("kept_full") and side != "kept_full_no_openings"
    module.generate_tokens = generate_tokens if kept else without_openings
    policy = collector.policy
    policy.num_speculative_tokens = GUESSES if side == "kept_full_guessing" else 0
    policy.drafter = None
    start = time.perf_counter()
    if side.startswith("kept_full"):
        out = collector.collect(tasks, max_active=batch)
    else:
        out = [
            t for i in range(0, len(tasks), batch) for t in collector.collect(tasks[i : i + batch])
        ]
    seconds = time.perf_counter() - start
    generated = sum(sum(t.tokens.mask) for t in out)
    return seconds, generated, sum(t.success for t in out)


def sampled(policy: Any, env: Environment, config: AgentConfig, args: Any, style: str) -> dict:
    """GRPO-style rollouts, one token a step against guesses checked (see the docstring)."""
    fmt = policy.prompt_format
    sampling = SamplingParams(temperature=fmt.temperature if fmt else 1.0,
                              top_p=fmt.top_p if fmt else 1.0,
                              max_new_tokens=config.max_new_tokens, seed=config.seed)  # fmt: skip
    greedy = SamplingParams(temperature=0.0, max_new_tokens=config.max_new_tokens)
    tasks = env.sample_tasks("train", max(1, args.tasks // 8), seed=config.seed + 7)
    warm = env.sample_tasks("test", 16, seed=config.seed + 1)
    best: dict[str, tuple] = {}
    for repeat in range(args.repeats):
        for side in ("kept_full", "kept_full_guessing"):
            policy.num_speculative_tokens = GUESSES if side == "kept_full_guessing" else 0
            policy.drafter = None
            if policy.num_speculative_tokens:
                TrajectoryCollector(policy, env, config, sampling=greedy,
                                    tool_style=style).collect(warm, max_active=args.batch)  # fmt: skip
            collector = TrajectoryCollector(policy, env, config, sampling=sampling,
                                            tool_style=style, verifier=env.verify)  # fmt: skip
            start = time.perf_counter()
            out = collector.collect(tasks, num_samples=8, max_active=args.batch)
            seconds = time.perf_counter() - start
            generated = sum(sum(t.tokens.mask) for t in out)
            per_token = 1000 * seconds / max(1, generated)
            log(f"run {repeat + 1} sampled {side}: {seconds:.1f} s, {generated} tokens, "
                f"{per_token:.2f} ms a token")  # fmt: skip
            if side not in best or per_token < best[side][0]:
                best[side] = (per_token, seconds, generated)
    return {
        "sampled_episodes": 8 * len(tasks),
        "temperature": sampling.temperature,
        **{f"sampled_{side}_ms_per_token": round(r[0], 3) for side, r in best.items()},
        **{f"sampled_{side}_generated_tokens": r[2] for side, r in best.items()},
        "speedup_sampled_guesses_checked": round(
            best["kept_full"][0] / best["kept_full_guessing"][0], 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a demo run directory")
    parser.add_argument("--tasks", type=int, default=96, help="test tasks, spread over the tiers")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="48 tasks, one run a side")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sampled", action="store_true", help="GRPO-style sampled rollouts")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.repeats = 48, 1
    run = args.model
    saved = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    config = AgentConfig.from_dict(saved.get("config", {}))
    policy = load_policy(policy_dir(run))
    env = Environment(config=config)
    per_tier = max(1, args.tasks // len(env.groups))
    tasks = env.sample_tasks("test", per_tier, seed=config.seed + 1, per_group=True)
    sampling = SamplingParams(
        temperature=0.0, max_new_tokens=config.max_new_tokens, seed=config.seed
    )
    style = policy.prompt_format.tool_style if policy.prompt_format else "compact"
    collector = TrajectoryCollector(policy, env, config, sampling=sampling, tool_style=style,
                                    verifier=env.verify)  # fmt: skip
    log(f"{len(tasks)} tasks, batch {args.batch}, {torch.get_num_threads()} threads")
    if args.sampled:
        try:
            out = sampled(policy, env, config, args, style)
        finally:
            env.close()
        print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
        return
    best: dict[str, tuple] = {}
    try:
        for repeat in range(args.repeats):
            for side in SIDES:
                result = collect(collector, tasks, args.batch, side)
                log(
                    f"run {repeat + 1} {side}: {result[0]:.1f} s, {result[1]} tokens, {result[2]} solved"
                )
                drafter = collector.policy.drafter
                if drafter is not None:
                    log(f"  guesses kept: {drafter.accepted} of {drafter.proposed}")
                if side not in best or result[0] < best[side][0]:
                    best[side] = result
    finally:
        env.close()
    out = {
        "tasks": len(tasks),
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        **{
            f"{side}_{key}": value
            for side, r in best.items()
            for key, value in zip(("seconds", "generated_tokens", "solved"), r, strict=True)
        },  # fmt: skip
        "speedup_kept_full_vs_batch_by_batch": round(
            best["batch_by_batch"][0] / best["kept_full"][0], 3
        ),
        "speedup_system_prompts_kept": round(
            best["kept_full_no_openings"][0] / best["kept_full"][0], 3
        ),
        "speedup_guesses_checked": round(best["kept_full"][0] / best["kept_full_guessing"][0], 3),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
