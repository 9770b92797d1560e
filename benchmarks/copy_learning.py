"""How fast the built-in model learns to copy a name from its prompt (the copy drills of
`tasks.augment`), under several training settings, side by side in one run.

Copying names and values from the question and from tool output is most of what a tool call
needs; a model trained from scratch has to form that circuit before SFT can use it. For each
model variant (plain transformer, previous-token mix, copy head) and learning rate this trains a fresh `tiny` model for `--steps` steps of 32 drills and reports the mean
loss of the last 20 steps and greedy exact-copy accuracy on 100 unseen drills.

    .venv/bin/python benchmarks/copy_learning.py --steps 600 --lr 3e-3 --json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from tooltune.chat_format import IM_END, render_prompt
from tooltune.config import AgentConfig
from tooltune.policies import BuiltinPolicy
from tooltune.rollout import SamplingParams
from tooltune.tasks.augment import copy_drills
from tooltune.training.sft import train_sft
from tooltune.types import TokenRecord

VARIANTS = {
    "plain": dict(prev_token_mix=False, copy_head=False),
    "prev_mix": dict(prev_token_mix=True, copy_head=False),
    "copy_head": dict(prev_token_mix=True, copy_head=True),
}


def _prompt(user: str) -> str:
    return render_prompt([{"role": "user", "content": user}])


def run(steps: int, lr: float, variant: str, seed: int, batch: int = 32) -> dict:
    rng = random.Random(seed)
    pairs = copy_drills(steps * batch, rng)
    held_out = copy_drills(100, random.Random(seed + 1))
    texts = [_prompt(u) + r + IM_END for u, r in pairs[:4000]]
    policy = BuiltinPolicy.create(texts, size="tiny", seed=seed, vocab_size=2048,
                                  max_seq_len=256, **VARIANTS[variant])  # fmt: skip
    records = []
    for user, reply in pairs:
        record = TokenRecord()
        record.extend(policy.encode(_prompt(user)), False)
        record.extend(policy.encode(reply + IM_END), True)
        records.append(record)
    config = AgentConfig(sft_learning_rate=lr, seed=seed)
    started = time.perf_counter()
    history = train_sft(policy, records, config, epochs=1, batch_size=batch)
    seconds = time.perf_counter() - started
    policy.eval()
    outs = policy.generate([_prompt(u) for u, _ in held_out],
                           SamplingParams(temperature=0.0, max_new_tokens=24, stop=[IM_END]))  # fmt: skip
    exact = sum(o.text.strip() == r for o, (_, r) in zip(outs, held_out, strict=True))
    last = history.step_loss[-20:]
    return {"variant": variant, "steps": steps, "lr": lr,
            "final_loss": round(sum(last) / len(last), 3), "exact_copy": exact / len(held_out),
            "seconds": round(seconds, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-3])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run(args.steps, lr, v, args.seed) for lr in args.lr for v in args.variants]
    if args.json:
        print(json.dumps({"runs": rows}))
        return
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
