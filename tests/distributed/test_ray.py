"""Ray rollouts: each worker plays its share as one batch, with the same seeded trajectories as
in-process collection; tools run in the actors; weights pushed to every worker."""

from __future__ import annotations

import os
import sys

import pytest
import torch

ray = pytest.importorskip("ray")

from tooltune.chat_format import build_system_prompt  # noqa: E402
from tooltune.config import AgentConfig  # noqa: E402
from tooltune.distributed.ray_backend import (  # noqa: E402
    PolicySnapshot,
    RayRolloutBackend,
    collect_local,
    plan_batches,
    split_evenly,
)
from tooltune.policies import BuiltinPolicy  # noqa: E402
from tooltune.registry import ToolRegistry, tool  # noqa: E402
from tooltune.rollout import SamplingParams, ScriptedPolicy, TrajectoryCollector  # noqa: E402

TASKS = ["What is 2 + 3?", "Name the capital city.", "Count the files please."]


@tool
def whoami() -> int:
    """The process id of whoever runs this tool."""
    return os.getpid()


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First number.
        b: Second number.
    """
    return a + b


def make_tools() -> ToolRegistry:
    return ToolRegistry([whoami, add])


def scripted_policy() -> ScriptedPolicy:
    call = '<tool_call>{"name": "whoami", "arguments": {}}</tool_call>'
    return ScriptedPolicy({task: [call, f"done: {task}"] for task in TASKS})


def calls_reward(trajectory, task) -> float:
    return float(len(trajectory.tool_calls))


@pytest.fixture(scope="module")
def ray_session():
    # Functions defined in this test module travel by value: Ray workers cannot import it.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def policy() -> BuiltinPolicy:
    # The system prompt in the tokenizer's texts keeps prompts short (fast tests).
    system = build_system_prompt(make_tools().openai_tools())
    texts = TASKS + [system, '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'] * 4
    return BuiltinPolicy.create(
        texts, size="tiny", seed=0, vocab_size=600,
        d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=512,
    )  # fmt: skip


@pytest.fixture(scope="module")
def config() -> AgentConfig:
    return AgentConfig(max_turns=2, max_new_tokens=10)


def sampling(seed: int | None = 123) -> SamplingParams:
    return SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=10, seed=seed)


class BatchSizes:
    """A policy that records how many prompts each generate call gets."""

    def __init__(self, policy) -> None:
        self.policy, self.sizes = policy, []

    def generate(self, prompts, sampling, prompt_token_ids=None, **kwargs):
        self.sizes.append(len(prompts))
        return self.policy.generate(prompts, sampling, prompt_token_ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self.policy, name)


def summary(trajectories):
    return [(t.prompt, t.tokens.ids, t.final_answer) for t in trajectories]


def test_plan_and_split_are_deterministic():
    batches = plan_batches(TASKS, 2, seed=5, parts=2)
    assert [[(e.task_index, e.sample_index) for e in b.episodes] for b in batches] == [
        [(0, 0), (0, 1), (1, 0)], [(1, 1), (2, 0), (2, 1)],
    ]  # fmt: skip
    assert batches[0].seed == 5 and batches[1].seed not in (
        None,
        5,
    )  # the first share's is the seed
    assert plan_batches(TASKS, 2, seed=5, parts=2) == batches
    assert all(b.seed is None for b in plan_batches(TASKS, 2, seed=None, parts=2))
    chunks = split_evenly(list(range(7)), 3)
    assert [len(c) for c in chunks] == [2, 3, 2] and sum(chunks, []) == list(range(7))
    assert split_evenly([1], 4) == [[1]]
    with pytest.raises(ValueError):
        plan_batches(TASKS, 0, seed=1, parts=1)


def test_a_share_is_one_batch_and_seeded_collection_is_reproducible(policy, config):
    """One worker's share plays as one batch, as the in-process collector plays it, and gives
    what that collector gives with the same seed; two shares give the same results every time."""
    counted = BatchSizes(policy)
    one = collect_local(counted, make_tools(), config, TASKS, 2, sampling=sampling())
    assert counted.sizes[0] == 6  # all six episodes in the first generate call
    collector = TrajectoryCollector(policy, make_tools(), config, sampling=sampling())
    assert summary(one) == summary(collector.collect(TASKS, num_samples=2))

    two = collect_local(policy, make_tools(), config, TASKS, 2, num_workers=2, sampling=sampling())
    again = collect_local(
        policy, make_tools(), config, TASKS, 2, num_workers=2, sampling=sampling()
    )
    assert summary(two) == summary(again)
    assert [t.metadata["task_index"] for t in two] == [0, 0, 1, 1, 2, 2]
    assert any(two[i].tokens.ids != two[i + 1].tokens.ids for i in (0, 2, 4))  # fresh draws
    other = collect_local(
        policy, make_tools(), config, TASKS, 2, num_workers=2, sampling=sampling(7)
    )
    assert summary(other) != summary(two)


def test_ray_matches_local_collector_and_follows_weights(ray_session, policy, config):
    backend = RayRolloutBackend(
        PolicySnapshot.from_policy(policy), make_tools, config, num_workers=2, sampling=sampling()
    )
    try:
        remote = backend.collect(TASKS, num_samples=2)
        local = collect_local(
            policy, make_tools(), config, TASKS, 2, num_workers=2, sampling=sampling()
        )
        assert summary(remote) == summary(local)
        assert [t.metadata["task_index"] for t in remote] == [0, 0, 1, 1, 2, 2]
        assert all(t.tokens.mask.count(1) > 0 for t in remote)

        # New weights reach every worker: results follow the updated local policy.
        updated = policy.clone()
        with torch.no_grad():
            for p in updated.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        assert backend.set_weights(updated.model.state_dict()) == 1
        after = backend.collect(TASKS, num_samples=2)
        assert summary(after) == summary(
            collect_local(
                updated, make_tools(), config, TASKS, 2, num_workers=2, sampling=sampling()
            )
        )
        assert summary(after) != summary(remote)
    finally:
        backend.shutdown()
    assert backend.workers == []


def test_tools_run_inside_the_workers(ray_session, config):
    backend = RayRolloutBackend(
        scripted_policy, make_tools, config, num_workers=2, sampling=sampling(None),
        reward_fn=calls_reward,
    )  # fmt: skip
    try:
        trajectories = backend.collect(TASKS * 2, num_samples=1)
    finally:
        backend.shutdown()
    assert [t.prompt for t in trajectories] == TASKS * 2
    assert [t.final_answer for t in trajectories] == [f"done: {t}" for t in TASKS * 2]
    pids = {t.steps[0].tool_responses[0].result for t in trajectories}
    assert os.getpid() not in pids and len(pids) == 2  # both actors ran tools
    assert all(t.total_reward == 1.0 for t in trajectories)  # reward_fn ran in the actor


def test_bad_factory_fails_at_construction(ray_session, config):
    def broken_tools():
        raise RuntimeError("no tools here")

    with pytest.raises(ray.exceptions.RayActorError):
        RayRolloutBackend(scripted_policy, broken_tools, config, num_workers=1)
