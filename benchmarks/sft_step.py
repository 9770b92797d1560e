"""SFT on SmolLM2-135M-Instruct as the default demo trains it, and as it did before two
changes: freed pages kept inside the training block (`tooltune.allocator.keep_freed_pages`) and
the beginning a batch's rows share run once (`sft_share_prefix`).

The default preset's model and data: SmolLM2 with its top 20 of 30 layers trained (embeddings
frozen), in bf16 where the CPU has fast bf16 and fp32 elsewhere, on expert demonstrations of the
built-in world's train split in the compact tool style, 4 rows a step. The rows are those of
the first `--batches` batches SFT forms (random rows, length-bucketed); every way trains
`train_sft` on exactly these rows, which forms the same batches of them each time:

* **before**: each row run in full, jemalloc's own decay (the demo before 2026-12-05's sixth
  session);
* **kept pages**: freed pages kept for reuse during the steps (the default in bf16);
* **shared beginning**: pages kept, and the tokens every row of a batch begins with (the
  system prompt's instructions) run once (the default in fp32: `sft_share_prefix`).

The process restarts itself with jemalloc preloaded where the system has it (as `tooltune
demo` does); without jemalloc `kept pages` equals `before`. Ways take turns (`--repeats`),
each keeps its fastest; the rows and their tokens (the same for every way) are printed.

    python benchmarks/sft_step.py --quick --json      # 3 batches a way, one round
    python benchmarks/sft_step.py                     # 8 batches a way, two rounds
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import torch

from tooltune import allocator
from tooltune.config import AgentConfig
from tooltune.env_data import collect_successes
from tooltune.environment import BuiltinWorld
from tooltune.policies.hf import HFPolicy, train_top_layers
from tooltune.policies.smollm2 import load_smollm2
from tooltune.training import sft
from tooltune.training.demo import load_preset

WAYS = ("before", "kept_pages", "shared_beginning")


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def demonstrations(config: Any, tasks: int, style: str) -> list[Any]:
    with BuiltinWorld(config=config, seed=config.seed) as env:
        found = env.sample_tasks("train", tasks, seed=config.seed)
        demos, _ = collect_successes(env.expert(), env, found, config, style)
    return demos


def chosen_rows(demos: list[Any], encode: Any, style: str, batches: int) -> list[Any]:
    """The rows of the first `batches` batches SFT forms from all `demos`."""
    records = sft.to_token_records(demos, encode, style)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(0)).tolist()
    formed = sft._batches(records, order, 4, torch.Generator().manual_seed(1))
    index = {id(r): i for i, r in enumerate(records)}
    return [demos[index[id(r)]] for batch in formed[:batches] for r in batch]


def run(way: str, policy: Any, rows: list[Any], config: Any, style: str) -> float:
    """Seconds `train_sft` takes on `rows` the `way` says (one epoch, a rate too small to
    change the weights between ways); `before` calls it without its `keep_freed_pages`."""
    train = sft.train_sft.__wrapped__ if way == "before" else sft.train_sft
    start = time.perf_counter()
    train(policy, rows, config, epochs=1, batch_size=4, learning_rate=1e-9, tool_style=style,
          share_prefix=way == "shared_beginning")  # fmt: skip
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 batches a way, one round")
    parser.add_argument("--batches", type=int, default=None, help="batches of 4 rows a way")
    parser.add_argument(
        "--repeats", type=int, default=None, help="rounds; each way keeps its fastest"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    allocator.restart_with_jemalloc()
    batches = args.batches or (3 if args.quick else 8)
    repeats = args.repeats or (1 if args.quick else 2)
    torch.set_num_threads(2)

    config_table, pipeline = load_preset("default")
    config, style = AgentConfig(**config_table), pipeline["tool_style"]
    policy = HFPolicy.from_pretrained(load_smollm2(), lora=None, dtype="auto", device="cpu",
                                      marker_tokens=False)  # fmt: skip
    train_top_layers(policy.model, pipeline["train_layers"], keep_embeddings=False)
    demos = demonstrations(config, pipeline["sft_tasks"], style)
    rows = chosen_rows(demos, policy.encode, style, batches)
    log(f"{len(rows)} rows of {len(demos)} demonstrations; {allocator.allocator_name()}; "
        f"{next(policy.model.parameters()).dtype}")  # fmt: skip
    run("before", policy, rows[:4], config, style)  # warm-up
    best: dict[str, float] = {}
    for round_ in range(repeats):
        for way in WAYS:
            seconds = run(way, policy, rows, config, style)
            log(f"round {round_ + 1} {way}: {seconds:.1f} s")
            best[way] = min(seconds, best.get(way, seconds))
    out = {
        "machine": platform.processor() or platform.machine(),
        "allocator": allocator.allocator_name(),
        "dtype": str(next(policy.model.parameters()).dtype),
        "rows": len(rows),
        "tokens": sum(len(r.ids) for r in sft.to_token_records(rows, policy.encode, style)),
        **{f"{way}_seconds": round(best[way], 2) for way in WAYS},
        "speedup_kept_pages": round(best["before"] / best["kept_pages"], 3),
        "speedup_shared_beginning": round(best["kept_pages"] / best["shared_beginning"], 3),
        "default_shares_beginning": next(policy.model.parameters()).dtype == torch.float32,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:24s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
