import pytest

from tooltune.config import TaskTier
from tooltune.environment import Environment
from tooltune.evaluation import (
    compute_metrics,
    default_batch_size,
    evaluate,
    format_metrics,
    summary_line,
    why_failed,
)
from tooltune.rollout import ScriptedPolicy
from tooltune.tasks import Task, sample_tasks
from tooltune.tasks.expert import ExpertPolicy
from tooltune.tasks.world import build_world
from tooltune.types import AgentAction, AgentStep, AgentTrajectory, ToolCall, ToolResponse


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    path = tmp_path_factory.mktemp("evalworld")
    build_world(path, seed=0, size="small")
    with Environment(path) as environment:
        yield environment


def _step(names, ok=None):
    calls = [ToolCall(f"c{i}", n, {}) for i, n in enumerate(names)]
    ok = ok or [True] * len(calls)
    responses = [
        ToolResponse(c.id, s, None, None if s else "err", name=c.name)
        for c, s in zip(calls, ok, strict=True)
    ]
    return AgentStep(AgentAction("tool_call", "", calls), "obs", responses)


def _task(tier, n_minimal, parallel=0):
    calls = [{"name": "x", "arguments": {}}] * n_minimal
    return Task(
        "t",
        "q",
        tier,
        ["x"],
        1,
        {"type": "number", "value": 1},
        calls,
        metadata={"parallel": parallel},
    )


def test_metrics_by_hand():
    tasks = [
        _task(TaskTier.SIMPLE, 1),
        _task(TaskTier.MULTI_TOOL_PAR, 2, parallel=2),
        _task(TaskTier.MULTI_TOOL_PAR, 2, parallel=2),
    ]
    answer = AgentStep(AgentAction("respond", "1"))
    t1 = AgentTrajectory(
        "q", TaskTier.SIMPLE, [_step(["x"], [False]), _step(["x"]), answer], "1", success=True
    )
    t2 = AgentTrajectory(
        "q", TaskTier.MULTI_TOOL_PAR, [_step(["x", "x"]), answer], "1", success=True
    )
    t3 = AgentTrajectory(
        "q", TaskTier.MULTI_TOOL_PAR, [_step(["x"]), _step(["x"]), _step(["x"]), answer], "2"
    )
    m = compute_metrics(tasks, [t1, t2, t3])
    assert m["accuracy"] == {
        "simple": 1.0,
        "multi_tool_seq": None,
        "multi_tool_par": 0.5,
        "complex": None,
        "no_tool": None,
        "overall": 2 / 3,
    }
    assert m["avg_steps"] == pytest.approx((3 + 2 + 4) / 3)
    assert m["tool_calls"] == 7
    assert m["tool_call_failure_rate"] == pytest.approx(1 / 7)
    assert m["unplanned_failure_rate"] == pytest.approx(1 / 7)  # these tasks plant nothing
    assert m["unnecessary_call_rate"] == pytest.approx((1 + 0 + 1) / 7)
    assert m["parallel_call_rate"] == 0.5
    assert m["counts"]["multi_tool_par"] == 2
    table = format_metrics(m)
    assert "| Multi-Tool Par | 50.0% | 2 |" in table and "| Tool Call Failures | 14.3% |" in table
    with pytest.raises(ValueError):
        compute_metrics(tasks, [t1])


def test_every_call_on_a_no_tool_task_is_unnecessary():
    no_tool = _task(TaskTier.NO_TOOL, 0)  # nothing to call: the minimal solution is empty
    simple = _task(TaskTier.SIMPLE, 1)
    answer = AgentStep(AgentAction("respond", "1"))
    called = AgentTrajectory("q", TaskTier.NO_TOOL, [_step(["x", "x"]), answer], "1")
    abstained = AgentTrajectory("q", TaskTier.NO_TOOL, [answer], "1", success=True)
    direct = AgentTrajectory("q", TaskTier.SIMPLE, [_step(["x"]), answer], "1", success=True)
    m = compute_metrics([no_tool, no_tool, simple], [called, abstained, direct])
    assert (m["tool_calls"], m["unnecessary_call_rate"]) == (3, pytest.approx(2 / 3))
    assert m["accuracy"]["no_tool"] == 0.5 and m["counts"]["no_tool"] == 2
    assert compute_metrics([no_tool], [called])["unnecessary_call_rate"] == 1.0
    assert "| No tool needed | 50.0% | 2 |" in format_metrics(m)


def test_failed_tasks_are_counted_by_why_they_failed():
    answer = AgentStep(AgentAction("respond", "2"))
    two, none = _task(TaskTier.MULTI_TOOL_SEQ, 2), _task(TaskTier.NO_TOOL, 0)
    cases = [
        (two, [_step(["x"]), _step(["x"]), answer], True, None),
        (two, [answer], False, "no_call"),
        (two, [_step(["x"]), answer], False, "too_few_calls"),
        (two, [_step(["x", "x"], [True, False]), answer], False, "too_few_calls"),
        (two, [_step(["x", "x"]), answer], False, "wrong_answer"),
        (none, [_step(["x"]), answer], False, "needless_call"),
        (none, [answer], False, "wrong_answer"),
        (_task(TaskTier.SIMPLE, 1), [_step(["x"])], False, "no_answer"),
    ]
    trajectories = []
    for task, steps, success, why in cases:
        traj = AgentTrajectory("q", task.tier, steps, "2", success=success)
        if steps[-1] is not answer:
            traj.metadata["stop_reason"] = "max_turns"
        assert why_failed(task, traj) == why, (steps, why)
        trajectories.append(traj)
    unknown = _task(TaskTier.SIMPLE, 0)
    unknown.minimal_calls = None  # a user task without a known solution
    assert why_failed(unknown, AgentTrajectory("q", "simple", [answer], "2")) == "unknown"
    failures = compute_metrics([c[0] for c in cases], trajectories)["failures"]
    assert failures == {"no_answer": 1, "no_call": 1, "needless_call": 1, "too_few_calls": 2,
                        "wrong_answer": 2}  # fmt: skip
    metrics = compute_metrics([c[0] for c in cases], trajectories)
    assert "| Fewer successful calls than the task needs | 2 |" in format_metrics(metrics)
    assert summary_line(metrics).endswith(
        "; failed: no answer 1, no call 1, needless calls 1, too few calls 2, wrong answer 2"
    )
    assert summary_line(metrics).startswith(
        "accuracy simple 0%, multi_tool_seq 20%, multi_tool_par -,"
    )


def test_planted_failures_are_told_apart():
    """A failed call matching the task's planted call (same tool, same identifying arguments,
    whitespace aside) is planted, once; repeats and other failures are unplanned."""
    planted = [{"name": "sql_query", "arguments": {"query": "SELECT qty FROM orders"}}]
    task = Task("t", "q", TaskTier.COMPLEX, ["sql_query"], 1, {"type": "number", "value": 1},
                [{"name": "sql_query", "arguments": {}}] * 2,
                metadata={"planted_failures": planted})  # fmt: skip

    def step(*calls):  # (arguments, ok) per call
        tool_calls = [ToolCall(f"c{i}", "sql_query", a) for i, (a, _) in enumerate(calls)]
        responses = [ToolResponse(c.id, ok, None, None if ok else "no such column", name=c.name)
                     for c, (_, ok) in zip(tool_calls, calls, strict=True)]  # fmt: skip
        return AgentStep(AgentAction("tool_call", "", tool_calls), "obs", responses)

    answer = AgentStep(AgentAction("respond", "1"))
    broken = {"query": "SELECT  qty\nFROM orders"}
    expert = AgentTrajectory("q", TaskTier.COMPLEX, [step((broken, False)),
                             step(({"query": "SELECT quantity FROM orders"}, True)), answer], "1")  # fmt: skip
    clumsy = AgentTrajectory("q", TaskTier.COMPLEX, [step((broken, False), ({"query": "SELEC"}, False)),
                             step((broken, False)), answer], "1")  # fmt: skip
    m = compute_metrics([task, task], [expert, clumsy])
    assert (m["tool_calls"], m["failed_tool_calls"], m["planted_failures"]) == (5, 4, 2)
    assert m["tool_call_failure_rate"] == pytest.approx(4 / 5)
    assert m["unplanned_failure_rate"] == pytest.approx(2 / 5)
    assert "| Tool Call Failures (unplanned) | 40.0% |" in format_metrics(m)
    bare = Task("t", "q", TaskTier.COMPLEX, ["sql_query"], 1, {"type": "number", "value": 1}, [])
    assert compute_metrics([bare], [expert])["unplanned_failure_rate"] == pytest.approx(1 / 2)


def test_evaluate_expert_and_a_policy_that_guesses(env):
    tasks = sample_tasks("test", 24, seed=3, world=env.world)
    good = evaluate(ExpertPolicy(tasks), tasks, env, batch_size=8)
    assert good["accuracy"]["overall"] == 1.0 and good["n_tasks"] == 24
    assert len(good["trajectories"]) == 24 and all(t.success for t in good["trajectories"])
    guess = evaluate(ScriptedPolicy(["I think the answer is 42."]), tasks, env)
    assert guess["accuracy"]["overall"] == 0.0
    assert (
        guess["avg_steps"] == 1.0
        and guess["tool_calls"] == 0
        and guess["tool_call_failure_rate"] == 0.0
    )


def test_bad_tool_calls_count_as_failures(env):
    task = sample_tasks("test", 1, seed=0, world=env.world, tiers=["simple"])[0]
    bad = '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>'
    result = evaluate(ScriptedPolicy([bad, "done"]), [task], env)
    assert result["tool_call_failure_rate"] == 1.0 and result["accuracy"]["overall"] == 0.0
    assert result["unplanned_failure_rate"] == 1.0


def test_accuracy_on_seen_and_new_task_shapes():
    """Tasks that say whether their template is test-only are counted apart; tasks that do not
    (a user's) give no such split."""
    tasks = [_task(TaskTier.SIMPLE, 1) for _ in range(3)]
    for task, new in zip(tasks, [False, True, True], strict=True):
        task.metadata["new_shape"] = new
    answer = AgentStep(AgentAction("respond", "1"))
    runs = [AgentTrajectory("q", TaskTier.SIMPLE, [answer], "1", success=ok)
            for ok in (True, True, False)]  # fmt: skip
    for task, template in zip(tasks, ["old", "new", "new"], strict=True):
        task.metadata["template"] = template
    metrics = compute_metrics(tasks, runs)
    assert metrics["by_shape"] == {
        "seen": {"correct": 1, "n": 1, "accuracy": 1.0},
        "new": {"correct": 1, "n": 2, "accuracy": 0.5},
    }
    assert metrics["by_template"] == {  # the report's table of the shapes that fail most
        "new": {"correct": 1, "n": 2, "tier": "simple", "new_shape": True},
        "old": {"correct": 1, "n": 1, "tier": "simple", "new_shape": False},
    }
    for task in tasks:
        del task.metadata["new_shape"]
    assert "by_shape" not in compute_metrics(tasks, runs)
    assert compute_metrics(tasks, runs)["by_template"]["old"] == {
        "correct": 1,
        "n": 1,
        "tier": "simple",
    }


def test_an_evaluation_runs_more_episodes_at_once_on_a_gpu():
    import torch

    on = lambda kind: type("P", (), {"device": torch.device(kind)})()  # noqa: E731
    assert default_batch_size(on("cpu")) == 32 and default_batch_size(on("cuda")) == 128
    assert default_batch_size(ScriptedPolicy([])) == 32  # a policy without a device
