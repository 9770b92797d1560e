"""Constrained tool calls on BFCL: what the grammar gains and what it costs, side by side.

One model, loaded once, answers the first `-n` questions of each BFCL category twice in turn:
free greedy decoding, and greedy decoding under the question's functions (`--constrained`,
`tooltune.call_grammar`). Each side's score comes from BFCL's rules (`tooltune bfcl check`'s
checker); its time is the generation alone (the model loaded once, the guessed tokens learned
afresh for each side), the side that goes first alternating by category.

    python benchmarks/constrained_calls.py --model RUN_DIR --data DIR/bfcl_eval/data
    python benchmarks/constrained_calls.py --model RUN_DIR --data DIR --quick --json

`DIR` is the unzipped `bfcl-eval` wheel (`pip download bfcl-eval==2026.3.23 --no-deps`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from tooltune import bfcl_run
from tooltune.tasks.bfcl import check_predictions

CATEGORIES = ["simple", "multiple", "parallel", "parallel_multiple", "irrelevance"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a demo run directory or a saved model")
    parser.add_argument("--data", type=Path, help="BFCL's data folder (default: bfcl-eval's)")
    parser.add_argument("-n", type=int, default=40, help="questions a category (default 40)")
    parser.add_argument(
        "--categories",
        default=",".join(CATEGORIES),
        help="comma-separated (default: %(default)s; live_* where given)",
    )
    parser.add_argument("--quick", action="store_true", help="10 questions a category")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    n = 10 if args.quick else args.n
    data = args.data or bfcl_run.default_data_dir()
    if data is None:
        parser.error("no BFCL data: pass --data (BFCL's layout) or install bfcl-eval")
    names = [c.strip() for c in args.categories.split(",") if c.strip()]
    questions = {c: bfcl_run.load_category(Path(data), c, n) for c in names}
    policy, default = bfcl_run.load_model(args.model, next(iter(questions.values())), "")
    style = bfcl_run.tool_style_for(policy, default)
    rows, seconds = {}, {False: 0.0, True: 0.0}
    for category, asked in questions.items():
        row: dict[str, float | int] = {"n": len(asked)}
        # turns alternate which side goes first; each starts with no guesses learned (the
        # drafter learns a pass's completions, which would speed the pass after it)
        for constrained in (False, True) if len(rows) % 2 == 0 else (True, False):
            policy.drafter = None
            policy.release_turns()
            start = time.perf_counter()
            predictions = bfcl_run.predict(policy, asked, style, constrained=constrained)
            took = time.perf_counter() - start
            seconds[constrained] += took
            side = "constrained" if constrained else "free"
            row[f"{side}_correct"] = check_predictions(asked, None, predictions)["correct"]
            row[f"{side}_seconds"] = round(took, 2)
            print(f"{category:18s} {side:12s} {row[f'{side}_correct']}/{len(asked)} "
                  f"{took:6.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        rows[category] = row
    result = {
        "model": args.model,
        "tool_style": style,
        "categories": rows,
        "free_correct": sum(int(r["free_correct"]) for r in rows.values()),
        "constrained_correct": sum(int(r["constrained_correct"]) for r in rows.values()),
        "time_ratio_constrained": round(seconds[True] / seconds[False], 3),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"correct: free {result['free_correct']}, constrained "
              f"{result['constrained_correct']} of {sum(len(q) for q in questions.values())}; "
              f"time constrained / free: {result['time_ratio_constrained']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
