import math

import pytest
import torch

from tooltune.training.grpo import GRPOTrainer, group_advantages, grpo_loss

PROMPT = [1, 2, 3]
GOOD, BAD, END = 5, 6, 7


def completion_logprob(policy, token: int) -> float:
    ids = torch.tensor([PROMPT + [token]])
    with torch.no_grad():
        return policy.token_logprobs(ids, torch.ones_like(ids))[0, -1].item()


def toy_groups(policy, make_traj, n_groups=1):
    """Groups of 4: two samples answer GOOD (reward 1), two answer BAD (reward 0)."""
    groups = []
    for g in range(n_groups):
        group = []
        for token, reward in [(GOOD, 1.0), (BAD, 0.0), (GOOD, 1.0), (BAD, 0.0)]:
            ids = PROMPT + [token, END]
            group.append(make_traj(policy, ids, [0, 0, 0, 1, 1], reward, task_id=f"t{g}"))
        groups.append(group)
    return groups


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5])
    std = r.std().item()
    assert torch.allclose(group_advantages(r, "mean", scale=False), torch.tensor([0.5, -0.5, 0, 0]))
    assert torch.allclose(
        group_advantages(r, "mean", scale=True), torch.tensor([0.5, -0.5, 0, 0]) / (std + 1e-6)
    )
    # "min" is not re-centred: every advantage is >= 0
    assert torch.allclose(group_advantages(r, "min", scale=False), torch.tensor([1.0, 0, 0.5, 0.5]))
    learned = [0.2, 0.2, 0.9, 0.1]
    assert torch.allclose(
        group_advantages(r, "learned", scale=False, learned=learned),
        torch.tensor([0.8, -0.2, -0.4, 0.4]),
    )
    with pytest.raises(ValueError):
        group_advantages(r, "learned", learned=[0.0])
    with pytest.raises(ValueError):
        group_advantages(r, "median")


def test_update_raises_rewarded_and_lowers_unrewarded(policy, make_traj, make_config):
    before_good = completion_logprob(policy, GOOD)
    before_bad = completion_logprob(policy, BAD)
    opt = torch.optim.Adam(policy.model.parameters(), lr=0.05)
    trainer = GRPOTrainer(policy, None, opt, make_config())
    metrics = trainer.train_step(toy_groups(policy, make_traj))
    assert completion_logprob(policy, GOOD) > before_good + 0.01
    assert completion_logprob(policy, BAD) < before_bad - 0.01
    assert metrics["skipped_groups"] == 0
    assert metrics["mean_reward"] == pytest.approx(0.5)
    assert metrics["grad_norm"] > 0
    for key in ["loss", "policy_loss", "kl_div", "mean_advantage", "clip_fraction"]:
        assert math.isfinite(metrics[key])


def test_repeated_updates_move_probability_mass(policy, make_traj, make_config):
    opt = torch.optim.Adam(policy.model.parameters(), lr=0.05)
    trainer = GRPOTrainer(policy, policy.clone(), opt, make_config(beta=0.01))
    for _ in range(15):
        trainer.train_step(toy_groups(policy, make_traj))
    assert math.exp(completion_logprob(policy, GOOD)) > 0.5


class SpyPolicy:
    """Wraps a policy and keeps the gradient reaching its token log-probs."""

    def __init__(self, inner):
        self.inner = inner
        self.model = inner.model
        self.pad_token_id = inner.pad_token_id
        self.seen = []

    def token_logprobs(self, input_ids, attention_mask):
        out = self.inner.token_logprobs(input_ids, attention_mask)
        out.retain_grad()
        self.seen.append(out)
        return out


def test_masked_tokens_get_no_gradient(policy, make_traj, make_config):
    spy = SpyPolicy(policy)
    # generated token, then a tool output (mask 0), then generated tokens again
    ids = PROMPT + [GOOD, 9, 10, 11, BAD, END]
    mask = [0, 0, 0, 1, 0, 0, 0, 1, 1]
    group = [
        make_traj(policy, ids, mask, 1.0),
        make_traj(policy, PROMPT + [BAD, 9, 10, 11, GOOD, END], mask, 0.0),
    ]
    trainer = GRPOTrainer(spy, policy.clone(), torch.optim.SGD(policy.model.parameters(), lr=0.0),
                          make_config(beta=0.1))  # fmt: skip
    trainer.train_step([group])
    grad = spy.seen[0].grad
    target_mask = torch.tensor(mask[1:]).bool()
    assert torch.all(grad[:, ~target_mask] == 0)
    assert torch.all(grad[:, target_mask] != 0)


def test_changing_tool_output_tokens_does_not_change_loss(policy, make_traj, make_config):
    mask = [0, 0, 0, 1, 0, 0, 0, 1, 1]

    def loss_with(tool_tokens):
        p = policy.clone()
        group = [
            make_traj(p, PROMPT + [GOOD, *tool_tokens, 11, BAD, END], mask, 1.0),
            make_traj(p, PROMPT + [BAD, *tool_tokens, 11, GOOD, END], mask, 0.0),
        ]
        trainer = GRPOTrainer(p, p.clone(), torch.optim.SGD(p.model.parameters(), lr=0.0),
                              make_config(beta=0.1))  # fmt: skip
        return trainer.train_step([group])["loss"]

    # tokens 9, 10 are only ever predicted or used to predict masked tokens
    assert loss_with([9, 10]) == pytest.approx(loss_with([12, 13]), abs=1e-7)


def test_a_trailing_tool_result_leaves_the_update_and_changes_nothing(
    toy_policy_cls, make_traj, make_config
):
    """An episode that ended on a tool result (never a target, nor context for one) is scored
    without it: the batch is narrower, and loss and parameters are those of the episode cut
    before it."""

    def run(tail):
        p = toy_policy_cls(seed=3)
        spy = SpyPolicy(p)
        group = [
            make_traj(p, PROMPT + [tok, END, *tail], [0, 0, 0, 1, 1] + [0] * len(tail), r)
            for tok, r in [(GOOD, 1.0), (BAD, 0.0)]
        ]
        trainer = GRPOTrainer(spy, p.clone(), torch.optim.SGD(p.model.parameters(), lr=0.5),
                              make_config(beta=0.1))  # fmt: skip
        loss = trainer.train_step([group])["loss"]
        return p.params(), loss, spy.seen[0].shape[1]

    params_cut, loss_cut, width_cut = run([])
    params_tail, loss_tail, width_tail = run([9, 10, 11, 12])
    assert width_tail == width_cut == len(PROMPT) + 1  # [B, T - 1] log-probs of T = 5 tokens
    assert loss_tail == pytest.approx(loss_cut, abs=1e-7)
    assert torch.allclose(params_tail, params_cut)


def test_ratio_clipping_engages(policy, make_traj, make_config):
    groups = toy_groups(policy, make_traj)
    # pretend sampling was much less likely for positive samples and more likely for negative
    for traj in groups[0]:
        shift = -1.0 if traj.total_reward > 0 else 1.0
        traj.tokens.logprobs = [
            lp + shift if m else 0.0
            for lp, m in zip(traj.tokens.logprobs, traj.tokens.mask, strict=True)
        ]
    before = policy.params()
    trainer = GRPOTrainer(policy, None, torch.optim.SGD(policy.model.parameters(), lr=0.1),
                          make_config())  # fmt: skip
    metrics = trainer.train_step(groups)
    assert metrics["clip_fraction"] == pytest.approx(1.0)
    # every token is clipped: the objective is flat, so nothing moves
    assert metrics["grad_norm"] == pytest.approx(0.0, abs=1e-8)
    assert torch.equal(policy.params(), before)


def test_no_clipping_when_old_equals_current(policy, make_traj, make_config):
    trainer = GRPOTrainer(policy, None, torch.optim.SGD(policy.model.parameters(), lr=0.1),
                          make_config())  # fmt: skip
    metrics = trainer.train_step(toy_groups(policy, make_traj))
    assert metrics["clip_fraction"] == 0.0
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)


def test_zero_variance_groups_are_skipped(policy, make_traj, make_config):
    good = toy_groups(policy, make_traj)[0]
    flat = [make_traj(policy, PROMPT + [GOOD, END], [0, 0, 0, 1, 1], 1.0, "flat")] * 4
    trainer = GRPOTrainer(policy, None, torch.optim.SGD(policy.model.parameters(), lr=0.1),
                          make_config())  # fmt: skip
    metrics = trainer.train_step([good, flat])
    assert metrics["skipped_groups"] == 1
    assert metrics["num_trajectories"] == 4

    before = policy.params()
    metrics = trainer.train_step([flat, flat])
    assert metrics["skipped_groups"] == 2
    assert metrics["optimizer_steps"] == 0
    assert torch.equal(policy.params(), before)


def test_kl_zero_at_reference_then_positive(policy, make_traj, make_config):
    trainer = GRPOTrainer(policy, policy.clone(), torch.optim.Adam(policy.model.parameters(), lr=0.1),
                          make_config(beta=0.1))  # fmt: skip
    first = trainer.train_step(toy_groups(policy, make_traj))
    assert first["kl_div"] == pytest.approx(0.0, abs=1e-7)
    second = trainer.train_step(toy_groups(policy, make_traj))
    assert second["kl_div"] > 1e-4


def test_reference_is_frozen(policy, make_traj, make_config):
    ref = policy.clone()
    before = ref.params()
    trainer = GRPOTrainer(policy, ref, torch.optim.Adam(policy.model.parameters(), lr=0.1),
                          make_config(beta=0.5))  # fmt: skip
    trainer.train_step(toy_groups(policy, make_traj))
    trainer.train_step(toy_groups(policy, make_traj))
    assert torch.equal(ref.params(), before)
    assert not any(p.requires_grad for p in ref.model.parameters())


def test_loss_types_by_hand():
    # two sequences: 2 and 1 supervised tokens; ratio 1, reference == policy
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([2.0, 1.0])
    args = (logp, logp.clone(), logp.clone(), adv, mask, 0.2, 0.1)
    # per-token losses: seq0 = [-2, -2], seq1 = [-1]
    assert grpo_loss(*args, "grpo").loss.item() == pytest.approx((-2.0 + -1.0) / 2)
    assert grpo_loss(*args, "dapo").loss.item() == pytest.approx(-5.0 / 3)
    assert grpo_loss(*args, "dr_grpo", constant=4).loss.item() == pytest.approx(-5.0 / 8)
    with pytest.raises(ValueError):
        grpo_loss(*args, "sum")


def test_clipped_objective_by_hand():
    old = torch.zeros(2, 1)
    logp = torch.full((2, 1), math.log(1.5))
    mask = torch.ones(2, 1)
    adv = torch.tensor([1.0, -1.0])
    terms = grpo_loss(logp, old, None, adv, mask, 0.2, 0.0, "dapo")
    # A=+1: min(1.5, 1.2) = 1.2 -> loss -1.2 (clipped); A=-1: min(-1.5, -1.2) = -1.5 -> 1.5
    assert terms.loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert terms.clipped == 1.0


def test_k3_kl_by_hand():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    terms = grpo_loss(logp, logp, ref, torch.zeros(1), torch.ones(1, 1), 0.2, 2.0, "grpo")
    d = math.log(0.25) - math.log(0.5)
    k3 = math.exp(d) - d - 1
    assert terms.kl_sum == pytest.approx(k3)
    assert terms.loss.item() == pytest.approx(2.0 * k3)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batching_gives_the_same_update(toy_policy_cls, make_traj, make_config, loss_type):
    def run(accum, token_cap=0):
        p = toy_policy_cls(seed=3)
        groups = []
        for g, extra in enumerate([[], [8, 9]]):  # sequences of different lengths
            groups.append(
                [
                    make_traj(
                        p,
                        PROMPT + [tok, *extra, END],
                        [0, 0, 0] + [1] * (2 + len(extra)),
                        r,
                        f"t{g}",
                    )  # fmt: skip
                    for tok, r in [(GOOD, 1.0), (BAD, 0.0), (GOOD, 0.5)]
                ]
            )
        cfg = make_config(
            grad_accum_steps=accum, micro_batch_tokens=token_cap, loss_type=loss_type, beta=0.1
        )
        trainer = GRPOTrainer(p, p.clone(), torch.optim.SGD(p.model.parameters(), lr=0.5), cfg)
        m = trainer.train_step(groups)
        return p.params(), m["loss"]

    params1, loss1 = run(1)
    # 3 micro-batches; then a cap of 16 tokens: the three 5-token rows (trimmed from the
    # batch's width of 7), two 7-token rows, the last alone
    for params, loss in (run(3), run(1, token_cap=16)):
        assert loss1 == pytest.approx(loss, abs=1e-6)
        assert torch.allclose(params1, params, atol=1e-6)


def test_iterations_and_minibatches_take_more_steps(policy, make_traj, make_config):
    trainer = GRPOTrainer(policy, None, torch.optim.SGD(policy.model.parameters(), lr=0.1),
                          make_config(num_iterations=3), minibatch_size=4)  # fmt: skip
    metrics = trainer.train_step(toy_groups(policy, make_traj, n_groups=2))
    assert metrics["optimizer_steps"] == 6
    # after the first step the ratio moves away from 1 on later inner steps
    assert metrics["ratio_mean"] != pytest.approx(1.0, abs=1e-6)


def test_learned_baseline_is_used(policy, make_traj, make_config):
    calls = []

    def baseline(group):
        calls.append(len(group))
        return [0.5] * len(group)

    trainer = GRPOTrainer(policy, None, torch.optim.SGD(policy.model.parameters(), lr=0.1),
                          make_config(reward_baseline="learned", scale_rewards=False),
                          baseline_fn=baseline)  # fmt: skip
    metrics = trainer.train_step(toy_groups(policy, make_traj))
    assert calls == [4]
    assert metrics["mean_advantage"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        GRPOTrainer(policy, None, torch.optim.SGD(policy.model.parameters(), lr=0.1),
                    make_config(reward_baseline="learned"))  # fmt: skip


def test_missing_token_record_is_a_clear_error(policy, make_traj, make_config):
    group = toy_groups(policy, make_traj)[0]
    group[0].tokens = None
    trainer = GRPOTrainer(policy, None, torch.optim.SGD(policy.model.parameters(), lr=0.1),
                          make_config())  # fmt: skip
    with pytest.raises(ValueError, match="token record"):
        trainer.train_step([group])


class TemperaturePolicy:
    """A toy policy whose token_logprobs applies a sampling temperature, like a sampler would."""

    def __init__(self, inner):
        self.inner = inner
        self.model = inner.model
        self.pad_token_id = inner.pad_token_id
        self.temperatures = []

    def token_logprobs(self, input_ids, attention_mask, temperature=1.0):
        self.temperatures.append(temperature)
        logits = self.model(input_ids[:, :-1]) / temperature
        logp = torch.log_softmax(logits, dim=-1)
        return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def tempered_groups(policy, make_traj, temperature):
    groups = toy_groups(policy, make_traj)
    for traj in groups[0]:  # record what a sampler at this temperature would report
        ids = torch.tensor([traj.tokens.ids])
        with torch.no_grad():
            logits = policy.model(ids[:, :-1]) / temperature
            lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[0, :, 0].tolist()
        traj.tokens.logprobs = [0.0] + [
            v if m else 0.0 for v, m in zip(lp, traj.tokens.mask[1:], strict=True)
        ]
    return groups


def test_temperature_aware_policy_uses_recorded_logprobs(policy, make_traj, make_config):
    tp = TemperaturePolicy(policy)
    trainer = GRPOTrainer(tp, None, torch.optim.SGD(policy.model.parameters(), lr=0.1),
                          make_config(temperature=0.5))  # fmt: skip
    assert trainer.old_logprobs == "recorded"
    metrics = trainer.train_step(tempered_groups(policy, make_traj, 0.5))
    assert set(tp.temperatures) == {0.5}
    assert metrics["logprob_drift"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["clip_fraction"] == 0.0


def test_temperature_mismatch_recomputes_old_logprobs(policy, make_traj, make_config):
    groups = tempered_groups(policy, make_traj, 0.5)
    recorded = GRPOTrainer(policy, None, torch.optim.SGD(policy.model.parameters(), lr=0.0),
                           make_config(temperature=0.5), old_logprobs="recorded")  # fmt: skip
    # the untempered policy disagrees with the tempered sampler's log-probs
    assert recorded.train_step(groups)["logprob_drift"] > 0.05

    auto = GRPOTrainer(policy, None, torch.optim.SGD(policy.model.parameters(), lr=0.0),
                       make_config(temperature=0.5))  # fmt: skip
    assert auto.old_logprobs == "recompute"
    metrics = auto.train_step(groups)
    assert metrics["logprob_drift"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["clip_fraction"] == 0.0


def test_reported_lr_is_the_rate_each_step_used(policy, make_traj, make_config):
    from tooltune.training.schedule import make_scheduler

    opt = torch.optim.SGD(policy.model.parameters(), lr=0.1)
    trainer = GRPOTrainer(policy, None, opt, make_config(),
                          scheduler=make_scheduler(opt, total_steps=2, warmup_ratio=0.0))  # fmt: skip
    rates = [trainer.train_step(toy_groups(policy, make_traj))["lr"] for _ in range(2)]
    # cosine over 2 steps: full rate, then half; the scheduler's next rate (0) is not a step's
    assert rates == pytest.approx([0.1, 0.05])
