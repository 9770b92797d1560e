"""AdamW with fp32 master weights: bf16 parameters keep the updates bf16 alone would round away."""

import copy

import torch

from tooltune.training.optim import AdamW


def _steps(optimizer, param, n):
    for _ in range(n):
        optimizer.zero_grad()
        (param.float() * torch.ones(4)).sum().backward()  # gradient 1 everywhere
        optimizer.step()


def test_bf16_parameter_accumulates_small_updates_in_its_master():
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = AdamW([param], lr=1e-4, weight_decay=0.0)
    _steps(optimizer, param, 100)
    master = optimizer.masters[0]
    assert master.dtype == torch.float32
    assert torch.allclose(master, torch.full((4,), 0.99), atol=1e-4)  # 100 steps of ~1e-4
    assert param.dtype == torch.bfloat16
    assert torch.equal(param, master.to(torch.bfloat16))  # the model holds the rounded master


def test_plain_adamw_on_bf16_loses_the_same_updates():
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    _steps(torch.optim.AdamW([param], lr=1e-4, weight_decay=0.0), param, 100)
    assert torch.equal(param, torch.ones(4, dtype=torch.bfloat16))  # why the masters exist


def test_fp32_parameters_step_as_torch_adamw_does():
    ours = torch.nn.Parameter(torch.linspace(-1, 1, 4))
    theirs = torch.nn.Parameter(ours.detach().clone())
    optimizer = AdamW([ours], lr=1e-2, weight_decay=0.01)
    assert optimizer.masters[0] is ours  # no copy
    assert optimizer.param_groups[0]["fused"]  # torch's fused kernel on a CPU
    _steps(optimizer, ours, 5)
    _steps(torch.optim.AdamW([theirs], lr=1e-2, weight_decay=0.01), theirs, 5)
    assert not torch.equal(ours, torch.linspace(-1, 1, 4))
    torch.testing.assert_close(ours, theirs)  # the fused kernel may round differently


def test_zero_grad_clears_the_model_parameters_gradients():
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = AdamW([param], lr=1e-3)
    (param.float().sum()).backward()
    optimizer.zero_grad()
    assert param.grad is None
    assert optimizer.masters[0].grad is None


def test_a_resumed_bf16_parameter_steps_from_its_saved_master_not_the_rounded_weight():
    straight = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = AdamW([straight], lr=1e-4, weight_decay=0.0)
    _steps(optimizer, straight, 30)
    saved, weights = copy.deepcopy(optimizer.state_dict()), straight.detach().clone()
    _steps(optimizer, straight, 30)

    resumed = torch.nn.Parameter(weights)  # what a checkpoint holds: the rounded weights
    again = AdamW([resumed], lr=1e-4, weight_decay=0.0)
    again.load_state_dict(saved)
    _steps(again, resumed, 30)
    assert torch.equal(again.masters[0], optimizer.masters[0])
    assert torch.equal(resumed, straight)

    rebuilt = AdamW([torch.nn.Parameter(weights.clone())], lr=1e-4, weight_decay=0.0)
    rebuilt.load_state_dict({k: v for k, v in saved.items() if k != "masters"})  # older states
    assert torch.equal(rebuilt.masters[0], weights.float())  # what resuming used to step from
    assert not torch.equal(rebuilt.masters[0], saved["masters"][0])
