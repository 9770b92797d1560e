"""What the built-in model's copy head costs in training, side by side in one run.

1. One forward + backward of `target_logprobs` on a [batch, tokens] batch, without and with the
   copy head (the SFT step's model cost).
2. GRPO's shared-prefix scoring with the copy head: rows that share a prompt scored with the
   prompt run once (`prefix_token_logprobs`) against every row scored in full.

Random weights and tokens: only time is measured. Median of `--repeats` after one warm-up.

    .venv/bin/python benchmarks/copy_head_cost.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tooltune.policies.builtin import BuiltinPolicy
from tooltune.policies.transformer import Transformer, config_for_size


def _timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    ids = torch.randint(10, 2048, (args.batch, args.tokens))
    out: dict[str, float] = {}
    for copy in (False, True):
        model = Transformer(config_for_size("tiny", 2048, max_seq_len=2048, copy_head=copy))
        out[f"step_s_copy_head_{copy}".lower()] = _timed(
            lambda m=model: m.target_logprobs(ids).sum().backward(), args.repeats
        )
    out["copy_head_overhead"] = out["step_s_copy_head_true"] / out["step_s_copy_head_false"] - 1

    policy = BuiltinPolicy.create(["a b c"], size="tiny", vocab_size=300, copy_head=True)
    policy.model = Transformer(config_for_size("tiny", 2048, max_seq_len=2048, copy_head=True))
    prompts, rows, prompt_len, cont_len = 4, 32, 300, 150
    p_ids = torch.randint(10, 2048, (prompts, prompt_len))
    c_ids = torch.randint(10, 2048, (rows, cont_len))
    index = torch.arange(rows) // (rows // prompts)

    def shared():
        logp = policy.prefix_token_logprobs(
            p_ids, torch.ones_like(p_ids), c_ids, torch.ones_like(c_ids), index
        )
        logp.sum().backward()

    def per_row():
        full = torch.cat([p_ids[index], c_ids], dim=1)
        policy.token_logprobs(full, torch.ones_like(full))[:, prompt_len:].sum().backward()

    out["scoring_s_per_row"] = _timed(per_row, args.repeats)
    out["scoring_s_shared_prefix"] = _timed(shared, args.repeats)
    out["speedup_shared_prefix"] = out["scoring_s_per_row"] / out["scoring_s_shared_prefix"]
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in out.items()}))
    else:
        for key, value in out.items():
            print(f"{key:28s} {value:.3f}")


if __name__ == "__main__":
    main()
