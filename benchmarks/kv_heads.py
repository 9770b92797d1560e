"""The built-in model's key/value head layout on the same episodes: batched (32) and
one-at-a-time collection with the `tiny` model's one shared key/value head, against the same
model written with one key/value head per query head (each a copy of the shared one). Both
layouts compute the same logits, so both write the same tokens (checked): the difference is
only the keys and values a decoding step reads. The model is fitted as in `rollout.py`.

    python benchmarks/kv_heads.py --json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import rollout as bench  # noqa: E402

from tooltune.config import AgentConfig  # noqa: E402
from tooltune.policies.builtin import BuiltinPolicy  # noqa: E402
from tooltune.policies.transformer import Transformer  # noqa: E402
from tooltune.rollout import SamplingParams, TrajectoryCollector  # noqa: E402


def one_head_per_query_head(policy: BuiltinPolicy) -> BuiltinPolicy:
    """The same model with each shared key/value head repeated for every query head using it."""
    config = copy.deepcopy(policy.model.config)
    kv, config.n_kv_heads = config.n_kv_heads, config.n_heads
    hd, C = config.d_model // config.n_heads, config.d_model
    state = policy.model.state_dict()
    for i in range(config.n_layers):
        name = f"blocks.{i}.attn.qkv.weight"
        q, k, v = state[name].split([C, kv * hd, kv * hd])
        repeat = [w.view(kv, hd, C).repeat_interleave(config.n_heads // kv, 0).flatten(0, 1)
                  for w in (k, v)]  # fmt: skip
        state[name] = torch.cat([q, *repeat])
    model = Transformer(config)
    model.load_state_dict(state)
    return BuiltinPolicy(model.eval(), policy.tokenizer)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    workload = bench.make_workload(32, 0, False)
    try:
        grouped = BuiltinPolicy.create(workload.demos, size="tiny", seed=0, max_seq_len=2048)
        bench.fit(grouped, workload, 8, 3e-3, 768, 0)
        sampling = SamplingParams(temperature=0.0, max_new_tokens=96, stop=[bench.IM_END])
        runs, outputs = {}, {}
        for name, policy in [
            ("shared", grouped),
            ("per_query_head", one_head_per_query_head(grouped)),
        ]:
            config = AgentConfig(max_turns=4, max_new_tokens=96,
                                 max_trajectory_len=policy.max_seq_len, seed=0)  # fmt: skip
            collector = TrajectoryCollector(policy, workload.tools, config, sampling=sampling,
                                            tool_style=bench.TOOL_STYLE)  # fmt: skip
            collector.collect(workload.tasks[:2])  # warm-up
            runs[f"{name} batch 32"] = lambda c=collector: c.collect(workload.tasks[:32])
            runs[f"{name} one at a time"] = lambda c=collector: [
                t for task in workload.tasks[:32] for t in c.collect([task])
            ]
        timed = bench.interleaved_best(args.repeats, runs)
        report: dict = {
            "command": "python benchmarks/kv_heads.py " + " ".join(argv or sys.argv[1:])
        }
        for name in ("shared", "per_query_head"):
            batch, out, batch_every = timed[f"{name} batch 32"]
            seq, _, seq_every = timed[f"{name} one at a time"]
            outputs[name] = [t.tokens.ids for t in out]
            report[name] = {
                "key_value_heads": (grouped.model.config.n_kv_heads if name == "shared" else grouped.model.config.n_heads),
                "batch_32_s": batch_every, "one_at_a_time_s": seq_every,
                "batched_vs_sequential": round(seq / batch, 2),
                "generated_tokens": bench.generated_tokens(out),
            }  # fmt: skip
        report["same_tokens"] = outputs["shared"] == outputs["per_query_head"]
        report["batch_32_speedup_of_shared"] = round(
            min(report["per_query_head"]["batch_32_s"]) / min(report["shared"]["batch_32_s"]), 2
        )
    finally:
        workload.close()
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
