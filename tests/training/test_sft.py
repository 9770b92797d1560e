import copy
import json
import random

import pytest
import torch

from tooltune.chat_format import IM_END
from tooltune.training.schedule import make_scheduler, warmup_cosine
from tooltune.training.sft import (
    SFTProgress,
    collate,
    evaluate_loss,
    load_chat_jsonl,
    micro_batches,
    to_token_records,
    train_sft,
)
from tooltune.types import TokenRecord

# prompt token p in {1..4}; the model must answer 4 + p, then END; token 9 -> 10 is masked noise
END = 15


def dataset(n):
    out = []
    for i in range(n):
        p = 1 + i % 4
        ids = [p, 9, 10, p, 4 + p, END]
        mask = [0, 0, 0, 0, 1, 1]
        out.append(TokenRecord(ids=ids, mask=mask, logprobs=[0.0] * len(ids)))
    return out


def sft_config(make_config, **kw):
    base = dict(sft_epochs=3, sft_learning_rate=0.05, sft_batch_size=8, warmup_ratio=0.1)
    base.update(kw)
    return make_config(**base)


def test_collate_aligns_targets_and_pads():
    recs = [
        TokenRecord([1, 2, 3], [0, 1, 1], [0.0, -0.5, -0.25]),
        TokenRecord([4, 5], [0, 1], [0.0, -1.0]),
    ]
    batch = collate(recs, pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch.loss_mask.tolist() == [[1, 1], [1, 0]]
    assert batch.old_logprobs.tolist() == [[-0.5, -0.25], [-1.0, 0.0]]
    assert collate(recs, pad_id=0, max_len=2).input_ids.tolist() == [[1, 2], [4, 5]]
    with pytest.raises(ValueError, match="lengths differ"):
        collate([TokenRecord([1, 2], [0], [])], 0)


def test_collate_drops_tokens_after_the_last_scored_one():
    """For GRPO a trailing tool result is never a target nor context for one: it can go."""
    recs = [
        TokenRecord([1, 2, 3, 7, 7, 7], [0, 1, 1, 0, 0, 0], [0.0] * 6),
        TokenRecord([4, 5, 6], [0, 1, 0], [0.0] * 3),
        TokenRecord([8, 9], [0, 0], [0.0] * 2),  # nothing scored: kept whole
    ]
    assert collate(recs, pad_id=0).input_ids.shape == (3, 6)  # kept by default (SFT)
    batch = collate(recs, pad_id=0, drop_unscored_tail=True)
    assert batch.input_ids.tolist() == [[1, 2, 3], [4, 5, 0], [8, 9, 0]]
    assert batch.loss_mask.tolist() == [[1, 1], [1, 0], [0, 0]]


def test_sft_learns_supervised_tokens(policy, make_config):
    train, val = dataset(32), dataset(8)
    before = evaluate_loss(policy, val)
    seen = []
    history = train_sft(
        policy, train, sft_config(make_config, sft_epochs=15), val,
        callback=lambda epoch, p: seen.append(epoch) or {"epoch_seen": epoch},
    )  # fmt: skip
    assert seen == list(range(15))
    assert [m["epoch_seen"] for m in history.epoch_metrics] == seen
    assert len(history.train_loss) == len(history.val_loss) == 15
    assert history.val_loss[-1] < 0.25 * before
    # the mapping p -> 4 + p is learned
    ids = torch.tensor([[3, 7]])
    assert policy.token_logprobs(ids, torch.ones_like(ids)).exp().item() > 0.8


def spy_on_logprobs(policy) -> list[torch.Tensor]:
    """The log-prob tensors `policy.token_logprobs` returns from now on, their gradients kept."""
    grads: list[torch.Tensor] = []
    inner = policy.token_logprobs

    def spy(input_ids, attention_mask):
        out = inner(input_ids, attention_mask)
        out.retain_grad()
        grads.append(out)
        return out

    policy.token_logprobs = spy
    return grads


def test_loss_only_on_supervised_tokens(policy, make_config):
    grads = spy_on_logprobs(policy)
    train_sft(policy, dataset(4), sft_config(make_config, sft_epochs=1))
    grad = grads[0].grad
    target_mask = torch.tensor([0, 0, 0, 1, 1]).bool()
    assert torch.all(grad[:, ~target_mask] == 0)
    assert torch.all(grad[:, target_mask] < 0)  # descending the NLL raises these log-probs


def test_context_weight_trains_context_tokens_and_reports_own_loss(policy, make_config):
    before = evaluate_loss(policy, dataset(4))
    grads = spy_on_logprobs(policy)
    config = sft_config(make_config, sft_epochs=1, sft_context_weight=0.25)
    history = train_sft(policy, dataset(4), config)
    grad = grads[0].grad  # d loss / d log p: -1/N on own targets, -0.25/N on context, N = 8
    assert torch.allclose(grad[:, 3:], torch.full((4, 2), -1 / 8))
    assert torch.allclose(grad[:, :3], torch.full((4, 3), -0.25 / 8))
    assert history.step_loss[0] == pytest.approx(before, rel=1e-5)  # the own-token NLL


def test_gradient_accumulation_matches_large_batch(toy_policy_cls, make_config):
    # records of different supervised lengths, so a per-batch mean would differ from the total
    recs = dataset(6) + [TokenRecord([2, 6, 1, 2, 3, END], [0, 1, 1, 1, 1, 1], [0.0] * 6)] * 2
    a, b = toy_policy_cls(seed=1), toy_policy_cls(seed=1)
    train_sft(a, recs, sft_config(make_config, sft_epochs=1, sft_batch_size=8))
    hist = train_sft(
        b, recs, sft_config(make_config, sft_epochs=1, sft_batch_size=8, grad_accum_steps=3)
    )
    assert len(hist.step_loss) == 1
    assert torch.allclose(a.params(), b.params(), atol=1e-6)
    c = toy_policy_cls(seed=1)  # a token cap splits the batch further: the same update
    train_sft(
        c, recs, sft_config(make_config, sft_epochs=1, sft_batch_size=8, micro_batch_tokens=12)
    )
    assert torch.allclose(a.params(), c.params(), atol=1e-6)


def test_micro_batches_follow_steps_and_token_cap():
    lengths = [3, 3, 5, 5, 9, 2]
    assert micro_batches(lengths, 1) == [[0, 1, 2, 3, 4, 5]]
    assert micro_batches(lengths, 2) == [[0, 1, 2], [3, 4, 5]]
    # at most 10 padded tokens: 3+3 fit, 5+5 fit, 9 alone (over by itself), 2 alone after it
    assert micro_batches(lengths, 1, max_tokens=10) == [[0, 1], [2, 3], [4], [5]]
    assert micro_batches(lengths, 2, max_tokens=10) == [[0, 1], [2], [3], [4], [5]]
    runs = micro_batches(lengths, 1, max_tokens=12)
    assert sorted(i for run in runs for i in run) == list(range(6))
    assert all(len(r) * max(lengths[i] for i in r) <= 12 or len(r) == 1 for r in runs)


def test_schedule_warmup_then_cosine(policy, make_config):
    hist = train_sft(
        policy,
        dataset(40),
        sft_config(make_config, sft_epochs=2, sft_batch_size=4, warmup_ratio=0.2),
    )
    lr = hist.lr
    assert len(lr) == 20
    peak = lr.index(max(lr))
    assert 0 < peak <= 5
    assert all(x <= y + 1e-12 for x, y in zip(lr[:peak], lr[1 : peak + 1], strict=True))
    assert all(x >= y - 1e-12 for x, y in zip(lr[peak:-1], lr[peak + 1 :], strict=True))
    assert lr[-1] < 0.1 * max(lr)


def test_warmup_cosine_values():
    assert warmup_cosine(0, 10, 4) == pytest.approx(0.2)
    assert warmup_cosine(3, 10, 4) == pytest.approx(0.8)
    assert warmup_cosine(4, 10, 4) == pytest.approx(1.0)
    assert warmup_cosine(7, 10, 4) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 4, min_ratio=0.1) == pytest.approx(0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = make_scheduler(opt, total_steps=10, warmup_ratio=0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        warmup_cosine(0, 0, 0)


def test_errors_are_clear(policy, make_config):
    with pytest.raises(ValueError, match="supervised"):
        train_sft(policy, [TokenRecord([1, 2], [0, 0], [0.0, 0.0])], sft_config(make_config))


CHAT = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "What is 6*7?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "calculate", "arguments": '{"expression": "6*7"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "calculate", "content": "42"},
        {"role": "assistant", "content": "42"},
    ],
    "tools": [
        {"type": "function", "function": {"name": "calculate", "parameters": {"type": "object"}}}
    ],
}


def char_encode(text):
    return [min(ord(c), 127) for c in text]


def test_load_chat_jsonl_and_train(tmp_path, toy_policy_cls, make_config):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(CHAT) + "\n\n" + json.dumps({**CHAT, "task_id": "x"}) + "\n")
    trajs = load_chat_jsonl(path)
    assert len(trajs) == 2 and trajs[1].task_id == "x"
    t = trajs[0]
    assert t.prompt == "What is 6*7?"
    assert [s.action.type for s in t.steps] == ["tool_call", "respond"]
    assert t.steps[0].action.tool_calls[0].arguments == {"expression": "6*7"}
    assert t.final_answer == "42"

    (rec,) = to_token_records([t], char_encode)
    supervised = "".join(chr(i) for i, m in zip(rec.ids, rec.mask, strict=True) if m)
    assert '"name": "calculate"' in supervised and supervised.endswith("42" + IM_END)
    assert "What is" not in supervised and "be brief" not in supervised

    class CharPolicy(toy_policy_cls):
        def encode(self, text):
            return char_encode(text)

    policy = CharPolicy(vocab=128, dim=16)
    hist = train_sft(policy, trajs, sft_config(make_config, sft_epochs=2))
    assert hist.num_train_tokens == 2 * 2 * sum(rec.mask[1:])

    with pytest.raises(ValueError, match="token record"):
        train_sft(toy_policy_cls(), trajs, sft_config(make_config))


def test_load_chat_jsonl_bad_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(CHAT) + "\n{not json\n")
    with pytest.raises(ValueError, match=":2: not valid JSON"):
        load_chat_jsonl(path)
    path.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match=":1: cannot convert"):
        load_chat_jsonl(path)
    path.write_text(json.dumps({"rows": []}) + "\n")
    with pytest.raises(ValueError, match="'messages' list"):
        load_chat_jsonl(path)


def test_augment_gives_each_epoch_fresh_records(policy, make_config):
    """`augment` runs on every training item once per epoch, and training sees its output."""
    calls = []

    def shift(record):  # a new mapping each call: p -> 4 + p becomes p -> 5 + p from epoch 2
        calls.append(1)
        ids = list(record.ids)
        if len(calls) > 32:
            ids[4] = min(ids[4] + 1, END - 1)
        return TokenRecord(ids=ids, mask=record.mask, logprobs=record.logprobs)

    train_sft(policy, dataset(32), sft_config(make_config, sft_epochs=12), augment=shift)
    assert len(calls) == 32 * 12
    ids = torch.tensor([[3, 8]])  # trained on the shifted mapping after the first epoch
    assert policy.token_logprobs(ids, torch.ones_like(ids)).exp().item() > 0.5


def test_data_seed_draws_the_batches_and_seed_does_when_it_is_unset(toy_policy_cls, make_config):
    """The same rows in another order: a run with another `data_seed` takes other steps."""

    def step_losses(**kw):
        config = sft_config(make_config, sft_epochs=1, sft_batch_size=4, **kw)
        return train_sft(toy_policy_cls(), dataset(32), config).step_loss

    default = step_losses()
    assert step_losses(data_seed=0) == default
    assert step_losses(data_seed=1) != default
    assert step_losses(seed=1) == step_losses(data_seed=1)


def test_turns_longer_than_the_generation_budget_are_reported(policy, make_config):
    """A turn the model learns but could never finish when it runs is said before training."""
    records = dataset(4)
    records[0] = TokenRecord(ids=[1, 9, 5, 6, 7, END], mask=[0, 0, 1, 1, 1, 1], logprobs=[0.0] * 6)
    logged = []
    config = sft_config(make_config, sft_epochs=1, max_new_tokens=3)
    history = train_sft(policy, records, config, log=logged.append)
    assert history.turns_over_budget == 1
    assert "1 of 4 training conversations" in logged[0] and "max_new_tokens" in logged[0]
    assert train_sft(policy, dataset(4), config).turns_over_budget == 0  # turns of 2 tokens


def test_a_resumed_run_takes_the_steps_an_unstopped_one_takes(toy_policy_cls, make_config):
    """Stopped mid-epoch after any checkpoint, SFT resumes with the same batches, renames and
    updates: the same step losses and the same weights as a run never stopped."""
    config = sft_config(make_config, sft_epochs=3, sft_batch_size=4)  # 8 steps an epoch

    def renamer():  # random renames, drawn afresh each epoch as `tasks.augment`'s are
        rng = random.Random(5)

        def rename(record):
            ids = list(record.ids)
            ids[4] += rng.choice([0, 1, 2])  # the answer: a scored token
            return TokenRecord(ids=ids, mask=record.mask, logprobs=record.logprobs)

        return rename

    saved = {}

    def checkpoint(progress):
        saved[progress.step] = copy.deepcopy((policy.model.state_dict(), progress.to_dict()))

    policy = toy_policy_cls(seed=2)
    straight = train_sft(policy, dataset(32), config, augment=renamer(), checkpoint=checkpoint,
                         checkpoint_minutes=0)  # fmt: skip
    assert sorted(saved) == list(range(1, 24))  # after every step but the last
    assert len(straight.step_loss) == 24
    for stop in (5, 8, 13):  # mid-epoch, at an epoch's end, in a later epoch
        weights, progress = saved[stop]
        resumed = toy_policy_cls(seed=0)
        resumed.model.load_state_dict(weights)
        history = train_sft(resumed, dataset(32), config, augment=renamer(),
                            resume=SFTProgress.from_dict(progress))  # fmt: skip
        assert history.step_loss == pytest.approx(straight.step_loss, abs=1e-6)
        assert history.train_loss == pytest.approx(straight.train_loss, abs=1e-6)
        assert torch.allclose(resumed.params(), policy.params(), atol=1e-6)


def test_checkpoints_wait_for_their_minutes(policy, make_config, monkeypatch):
    """A checkpoint once `checkpoint_minutes` have passed since the last one, never after the
    last step. The clock is a fake one that moves 100 s each time it is read (the start, each
    step's check, each checkpoint's reset)."""
    import tooltune.training.sft as sft

    reads = iter(range(0, 10**6, 100))
    monkeypatch.setattr(sft, "_clock", lambda: next(reads))  # SFT's reads only
    saved = []
    config = sft_config(make_config, sft_epochs=1, sft_batch_size=4)  # 8 steps
    train_sft(policy, dataset(32), config, checkpoint=saved.append, checkpoint_minutes=5)
    assert [p.step for p in saved] == [3, 6]  # 300 s after the start, then after its reset
