from types import SimpleNamespace

import pytest

from tooltune.config import AgentConfig, TaskTier
from tooltune.training.rewards import (
    Rubric,
    count_unnecessary_calls,
    efficiency_reward,
    format_reward,
    rubric_from_config,
    tool_success_reward,
    unnecessary_calls_reward,
    verified_success,
)
from tooltune.types import AgentAction, AgentStep, AgentTrajectory, ToolCall, ToolResponse


def call_step(*calls, ok=True):
    tool_calls = [
        ToolCall(id=f"c{i}_{name}", name=name, arguments=args)
        for i, (name, args) in enumerate(calls)
    ]
    responses = [
        ToolResponse(
            call_id=c.id,
            success=ok,
            result=1 if ok else None,
            error=None if ok else "bad",
            name=c.name,
        )
        for c in tool_calls
    ]
    return AgentStep(action=AgentAction("tool_call", "", tool_calls), tool_responses=responses)


def answer_step(text="42"):
    return AgentStep(action=AgentAction("respond", text))


def traj(*steps, answer="42"):
    t = AgentTrajectory(prompt="q", task_tier=TaskTier.SIMPLE, task_id="t")
    t.steps = list(steps)
    t.final_answer = answer
    return t


TASK = SimpleNamespace(
    minimal_calls=[{"name": "calculate", "arguments": {"expression": "6*7"}}], answer="42"
)


def check_answer(trajectory, task):
    return trajectory.final_answer == task.answer


def test_format_counts_clean_turns():
    bad_call = ToolCall(id="x", name="", arguments={}, parse_error="not JSON", raw="<tool_call>{")
    bad = AgentStep(action=AgentAction("tool_call", "", [bad_call]))
    think_only = AgentStep(action=AgentAction("think", "", [], thinking="hmm"))
    t = traj(call_step(("calculate", {"expression": "6*7"})), bad, think_only, answer_step())
    assert format_reward(t) == pytest.approx(2 / 4)
    assert format_reward(traj()) == 0.0


def test_tool_success_seed_shaping_and_no_farming():
    ok = call_step(("calculate", {"expression": "6*7"}))
    fail = call_step(("calculate", {"expression": "6*"}), ok=False)
    assert tool_success_reward(traj(ok, answer_step())) == pytest.approx(0.1)
    assert tool_success_reward(traj(ok, fail, answer_step())) == pytest.approx(0.0)
    # repeating the same successful call earns nothing more
    assert tool_success_reward(traj(ok, ok, ok, answer_step())) == pytest.approx(0.1)
    # distinct successful calls are capped at the minimal solution's size when it is known
    many = call_step(*[("calculate", {"expression": f"{i}+1"}) for i in range(5)])
    assert tool_success_reward(traj(many), TASK) == pytest.approx(0.1)
    assert tool_success_reward(traj(many), None) == pytest.approx(0.5)


def test_efficiency():
    eff = efficiency_reward(10)
    assert eff(traj(answer_step()), None) == pytest.approx(0.9)
    assert eff(traj(*[answer_step()] * 12), None) == 0.0
    with pytest.raises(ValueError):
        efficiency_reward(0)


def test_unnecessary_calls():
    ok = call_step(("calculate", {"expression": "6*7"}))
    other = call_step(("search", {"query": "x"}))
    assert count_unnecessary_calls(traj(ok, answer_step()), TASK) == 0
    assert count_unnecessary_calls(traj(ok, other, answer_step()), TASK) == 1
    # duplicates count even without a known minimal solution
    assert count_unnecessary_calls(traj(ok, ok, ok), None) == 2
    # a repeat is also an excess call: counted once, not twice
    assert count_unnecessary_calls(traj(ok, ok), TASK) == 1
    # argument order does not make a call different
    a = call_step(("f", {"a": 1, "b": 2}))
    b = call_step(("f", {"b": 2, "a": 1}))
    assert unnecessary_calls_reward(traj(a, b), None) == -1.0


def test_rubric_weights_components_and_success():
    cfg = AgentConfig()
    rubric = rubric_from_config(cfg, outcome=check_answer)
    good = traj(call_step(("calculate", {"expression": "6*7"})), answer_step("42"), answer="42")
    total = rubric.apply(good, TASK)
    comps = good.reward_components
    assert set(comps) == {"outcome", "format", "tool_success", "efficiency", "unnecessary_calls"}
    assert comps["outcome"] == 1.0 and good.success
    assert comps["efficiency"] == pytest.approx(0.8)
    expected = sum(cfg.reward_weights[k] * v for k, v in comps.items())
    assert total == pytest.approx(expected)
    assert good.total_reward == pytest.approx(total)


def test_success_is_the_verified_outcome_not_a_threshold():
    # lots of shaping reward, but the answer is wrong: not a success, no efficiency bonus
    rubric = Rubric(
        {"tool_success": tool_success_reward, "efficiency": efficiency_reward(10)},
        {"outcome": 0.1, "tool_success": 10.0, "efficiency": 1.0},
        outcome=check_answer,
    )
    wrong = traj(call_step(("calculate", {"expression": "6*7"})), answer_step("41"), answer="41")
    total = rubric.apply(wrong, TASK)
    assert total > 0.5
    assert wrong.success is False
    assert wrong.reward_components["efficiency"] == 0.0


def test_outcome_checker_called_once_and_extra_terms():
    calls = []

    def outcome(t, task):
        calls.append(1)
        return True

    cfg = AgentConfig(reward_weights={"outcome": 1.0, "rm": 0.5})
    rubric = rubric_from_config(cfg, outcome, extra={"rm": (lambda t, task: 0.8, 1.0)})
    total, comps = rubric.score(traj(answer_step()), TASK)
    assert calls == [1]
    assert comps["rm"] == 0.8
    assert total == pytest.approx(1.0 + 0.5 * 0.8)


def test_rubric_rejects_unknown_weights():
    with pytest.raises(ValueError, match="unknown"):
        Rubric({"format": format_reward}, {"formt": 1.0})
    with pytest.raises(ValueError, match="unknown reward term"):
        rubric_from_config(AgentConfig(reward_weights={"bogus": 1.0}), check_answer)


def test_verified_success_reads_the_collectors_verdict():
    rubric = rubric_from_config(AgentConfig(), outcome=verified_success)
    t = traj(answer_step("41"), answer="41")
    t.success = True
    assert rubric.score(t, TASK)[1]["outcome"] == 1.0
    t.success = False
    rubric.apply(t, TASK)
    assert t.reward_components["outcome"] == 0.0 and t.success is False


def test_rubric_is_a_reward_function_and_nests():
    inner = Rubric({"format": format_reward}, {"format": 2.0})
    outer = Rubric(
        {"inner": inner, "tool_success": tool_success_reward}, {"inner": 0.5, "tool_success": 1.0}
    )
    t = traj(call_step(("calculate", {"expression": "6*7"})), answer_step())
    assert inner(t, TASK) == pytest.approx(2.0)
    total, comps = outer.score(t, TASK)
    assert comps == {"inner": pytest.approx(2.0), "tool_success": pytest.approx(0.1)}
    assert total == pytest.approx(1.1)
    assert t.reward_components == {}  # scoring has no side effects; apply() writes
