"""Peak memory and time of an evaluation's late generate calls on SmolLM2-135M-Instruct.

Late in an evaluation, 32 episodes are deep in their conversations and the collector writes
their turns 32 tokens a call (`tooltune.rollout.DECODE_CHUNK`); each call continues the rows
the last one kept (`ModulePolicy.generate`'s turn cache), and some rows arrive with a tool
result after theirs. Here: `--rows` prompts of about `--length` tokens (random ids after a
shared 300-token beginning), one call to fill the kept rows, then `--calls` calls of 32 new
tokens each, where every fourth row gets 150 more tokens (a tool result) before the next call.
Three ways, one after another in this process, the resident-memory peak reset before each:

* **held**: the rows a call continues are held until it ends, in one batch (what the code did
  before 2026-12-06: three copies of the batch at once, kept rows, cache and the rows kept for
  the next call);
* **freed**: each kept row let go of once the prefill has copied it, one batch
  (`max_cache_bytes=None`);
* **batched**: freed, and rows decoded in batches whose cache holds at most `max_cache_bytes`
  (the default, 1 GiB).

Greedy decoding: the ways write the same tokens up to float rounding (the share of completions
equal to `held`'s is printed). Printed per way: the peak's rise over what the process held
before it, and the median seconds of a continued call.

    python benchmarks/generate_memory.py --quick --json   # 32 rows of ~700 tokens, 2 calls
    python benchmarks/generate_memory.py                  # 32 rows of ~1,400 tokens, 3 calls
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tooltune import allocator
from tooltune.policies.hf import HFPolicy
from tooltune.policies.smollm2 import load_smollm2
from tooltune.rollout import SamplingParams

WAYS = ("held", "freed", "batched")


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def resident_gib() -> tuple[float, float]:
    """(resident now, peak since the last `reset_peak`) in GiB, from /proc/self/status."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 2**20
    return found["VmRSS"], found["VmHWM"]


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to VmRSS (Linux)


def prompts(rows: int, length: int) -> list[list[int]]:
    rng = random.Random(0)
    shared = [rng.randrange(100, 40000) for _ in range(300)]
    return [shared + [rng.randrange(100, 40000) for _ in range(length - 300 - 8 * r)]
            for r in range(rows)]  # fmt: skip


def run(way: str, policy: HFPolicy, start: list[list[int]], calls: int) -> dict[str, Any]:
    """One way: a call to fill the kept rows, then `calls` timed calls continuing them."""
    default = type(policy).max_cache_bytes
    policy.max_cache_bytes = default if way == "batched" else None
    policy.release_turns()
    rng = random.Random(1)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=32, stop=[])
    rows = list(start)
    base, _ = resident_gib()
    reset_peak()
    seconds, written, longest = [], [], 0
    for call in range(calls + 1):
        longest = max(longest, *map(len, rows))
        held = list(policy._turn_cache.values()) if way == "held" else []
        begin = time.perf_counter()
        out = policy.generate([""] * len(rows), greedy, rows)
        if call:
            seconds.append(time.perf_counter() - begin)
        del held
        written.append([c.token_ids for c in out])
        extra = [[rng.randrange(100, 40000) for _ in range(150)] if r % 4 == 0 else []
                 for r in range(len(rows))]  # fmt: skip
        rows = [p + c.token_ids + e for p, c, e in zip(rows, out, extra, strict=True)]
    _, peak = resident_gib()
    policy.release_turns()
    return {
        "peak_rise_gib": round(peak - base, 2),
        "seconds_a_call": round(statistics.median(seconds), 1),
        "written": written,
        "longest": longest,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 rows of ~700 tokens, 2 calls")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--length", type=int, default=None, help="tokens of the longest prompt")
    parser.add_argument("--calls", type=int, default=None, help="continued calls a way")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    allocator.restart_with_jemalloc()
    length = args.length or (700 if args.quick else 1400)
    calls = args.calls or (2 if args.quick else 3)
    torch.set_num_threads(2)
    policy = HFPolicy.from_pretrained(load_smollm2(), dtype="auto", device="cpu").eval()
    start = prompts(args.rows, length)
    results = {}
    for way in WAYS:
        results[way] = run(way, policy, start, calls)
        log(f"{way}: peak +{results[way]['peak_rise_gib']} GiB, "
            f"{results[way]['seconds_a_call']} s a call")  # fmt: skip
    held = [row for call in results["held"]["written"] for row in call]

    def agreement(way: str) -> float:  # completions equal to held's (rounding may flip a tie)
        rows = [row for call in results[way]["written"] for row in call]
        return round(sum(a == b for a, b in zip(rows, held, strict=True)) / len(held), 3)

    out = {
        "machine": platform.processor() or platform.machine(),
        "allocator": allocator.allocator_name(),
        "dtype": str(next(policy.model.parameters()).dtype),
        "rows": args.rows,
        "longest_prompt": results["held"]["longest"],
        "calls": calls,
        **{f"{w}_same_completions": agreement(w) for w in WAYS[1:]},
        **{f"{w}_peak_rise_gib": results[w]["peak_rise_gib"] for w in WAYS},
        **{f"{w}_seconds_a_call": results[w]["seconds_a_call"] for w in WAYS},
        "memory_ratio_held_vs_batched": round(
            results["held"]["peak_rise_gib"] / results["batched"]["peak_rise_gib"], 2
        ),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:32s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
