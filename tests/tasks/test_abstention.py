"""The no-tool tier: tasks whose offered tools cannot help, solved by making no call."""

from collections import Counter

import pytest

from tooltune.config import TaskTier
from tooltune.evaluation import run_evaluation
from tooltune.rollout import ScriptedPolicy
from tooltune.tasks import Task, sample_tasks, verify
from tooltune.tasks.abstention import NO_TOOL_TEMPLATES
from tooltune.tasks.checkers import check_answer
from tooltune.tasks.expert import ExpertPolicy
from tooltune.tasks.splits import templates_for
from tooltune.types import AgentAction, AgentStep, AgentTrajectory, ToolCall, ToolResponse

IDS = {t.id for t in NO_TOOL_TEMPLATES}
HELDOUT = {t.id for t in NO_TOOL_TEMPLATES if t.heldout}
TRAIN_ONLY = {t.id for t in NO_TOOL_TEMPLATES if t.train_only}


def _names(world, pool):
    return {
        e["name"] for kind in ("places", "companies", "people") for e in world.in_pool(kind, pool)
    }


def _no_tool(split, n, seed=0, world=None):
    return sample_tasks(split, n, seed=seed, world=world, tiers=[TaskTier.NO_TOOL])


def _refuses(task):
    return task.check["check"] == {"type": "refusal"}


def test_templates_are_varied_and_some_are_held_out():
    assert len(NO_TOOL_TEMPLATES) >= 6 and all(
        t.tier is TaskTier.NO_TOOL for t in NO_TOOL_TEMPLATES
    )
    assert HELDOUT and HELDOUT < IDS
    assert {t.id for t in templates_for("train", TaskTier.NO_TOOL)} == IDS - HELDOUT - TRAIN_ONLY
    assert {t.id for t in templates_for("train", TaskTier.NO_TOOL, True)} == IDS - HELDOUT
    assert {t.id for t in templates_for("test", TaskTier.NO_TOOL)} == IDS - TRAIN_ONLY
    assert templates_for("heldout_tools", TaskTier.NO_TOOL) == []


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_tasks_of_each_split_offer_tools_and_expect_no_call(world, split):
    tasks = _no_tool(split, 120, seed=1, world=world)
    other_pools = set().union(
        *(_names(world, p) for p in ("train", "validation", "test") if p != split)
    )
    for task in tasks:
        assert task.tier is TaskTier.NO_TOOL and task.split == split
        assert task.tools and task.minimal_calls == []  # tools are offered; none is needed
        assert task.check["type"] == "no_call"
        assert not any(name in task.prompt for name in other_pools), task.prompt
        assert Task.from_json(task.to_json()) == task
    templates = Counter(t.metadata["template"] for t in tasks)
    assert set(templates) == (IDS - TRAIN_ONLY if split == "test" else IDS - HELDOUT - TRAIN_ONLY)
    assert len({t.prompt for t in tasks}) == len(tasks)
    kinds = Counter(_refuses(t) for t in tasks)
    assert kinds[True] and kinds[False]  # questions to refuse and questions to answer


def test_the_default_mix_has_a_modest_share_of_no_tool_tasks(world):
    tiers = Counter(t.tier for t in sample_tasks("train", 400, seed=0, world=world))
    assert 0.05 < tiers[TaskTier.NO_TOOL] / 400 < 0.15
    heldout = sample_tasks("heldout_tools", 60, seed=0, world=world)  # that split has none
    assert TaskTier.NO_TOOL not in {t.tier for t in heldout}
    with pytest.raises(ValueError, match="no templates of tier no_tool"):
        _no_tool("heldout_tools", 2, world=world)


def test_the_expert_solves_them_without_a_call(env):
    tasks = _no_tool("test", 60, seed=2, world=env.world)
    metrics, trajectories = run_evaluation(ExpertPolicy(tasks), tasks, env)
    assert metrics["accuracy"]["no_tool"] == 1.0 and metrics["tool_calls"] == 0
    assert metrics["avg_steps"] == 1.0
    for task, traj in zip(tasks, trajectories, strict=True):
        assert traj.success and not traj.tool_calls
        if _refuses(task):
            assert traj.final_answer.startswith("I cannot")
        else:
            assert check_answer(task.check["check"], traj.final_answer)


def _episode(answer, calls=()):
    """An episode that makes `calls` (each answered) in one turn, then answers."""
    steps = []
    if calls:
        tool_calls = [ToolCall(f"c{i}", name, {}) for i, name in enumerate(calls)]
        responses = [ToolResponse(c.id, True, {"rows": []}, name=c.name) for c in tool_calls]
        steps.append(AgentStep(AgentAction("tool_call", "", tool_calls), "obs", responses))
    steps.append(AgentStep(AgentAction("respond", answer)))
    return AgentTrajectory("q", TaskTier.NO_TOOL, steps, final_answer=answer)


def test_the_check_wants_no_call_and_the_right_answer(world):
    tasks = _no_tool("train", 80, seed=3, world=world)
    refusal = next(t for t in tasks if _refuses(t))
    larger = next(t for t in tasks if t.metadata["template"] == "no_tool_larger")
    for task in (refusal, larger):
        right = task.metadata["plan"]["answer"]
        assert verify(task, _episode(right))
        assert not verify(task, _episode(right, calls=["sql_query"]))  # right words, a call made
    a, b = larger.check["check"]["options"]
    wrong = b if larger.check["check"]["value"] == a else a
    assert not verify(larger, _episode(wrong))
    assert not verify(larger, _episode(f"{a} or {b}"))  # naming both is no answer
    assert verify(refusal, _episode("Sorry, I can't help with that: no tool covers it."))
    assert not verify(refusal, _episode("It will be sunny, 21 degrees."))  # made up, no refusal
    malformed = _episode("I cannot answer this.")
    malformed.steps[0:0] = [
        AgentStep(AgentAction("tool_call", "", [ToolCall("c0", "", {}, parse_error="bad json")]))
    ]
    assert not verify(refusal, malformed)  # an attempted call counts, even one that did not parse


def test_a_policy_that_always_calls_fails_them(env):
    tasks = _no_tool("validation", 6, seed=4, world=env.world)
    call = '<tool_call>{"name": "calculate", "arguments": {"expression": "1+1"}}</tool_call>'
    metrics, _ = run_evaluation(ScriptedPolicy([call, "I cannot answer this."]), tasks, env)
    assert metrics["accuracy"]["no_tool"] == 0.0
    assert metrics["unnecessary_call_rate"] == 1.0  # every call on a no-tool task is unnecessary
