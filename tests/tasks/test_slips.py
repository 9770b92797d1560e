import random
from dataclasses import replace
from types import SimpleNamespace

import pytest

from tooltune.config import AgentConfig, ConfigError
from tooltune.evaluation import run_evaluation
from tooltune.messages import trajectory_from_messages, trajectory_to_messages
from tooltune.rollout import tokenize_trajectory
from tooltune.tasks import sample_tasks
from tooltune.tasks.expert import ExpertPolicy
from tooltune.tasks.slips import WRONG_COLUMNS, _sql_slip, with_slip


def _chars(text):
    return [ord(c) for c in text]


def _taught(trajectory):
    record = tokenize_trajectory(trajectory, _chars, "compact")
    return "".join(chr(i) for i, m in zip(record.ids, record.mask, strict=True) if m)


@pytest.fixture(scope="module")
def slipped(env):
    """Training tasks demonstrated with a slip, and the expert's episodes of them."""
    tasks = sample_tasks("train", 300, seed=3, world=env.world, recovery_share=1.0)
    tasks = [t for t in tasks if "slip" in t.metadata]
    _, trajectories = run_evaluation(ExpertPolicy(tasks), tasks, env, batch_size=100)
    return tasks, trajectories


def test_the_expert_slips_then_looks_and_repairs(slipped):
    tasks, trajectories = slipped
    assert {t.metadata["slip"]["kind"] for t in tasks} == {"column", "file"}
    for task, traj in zip(tasks, trajectories, strict=True):
        assert traj.success, (task.prompt, traj.final_answer)
        fix = task.metadata["slip"]
        failed = [
            i for i, s in enumerate(traj.steps) if any(not r.success for r in s.tool_responses)
        ]
        assert len(failed) == 1, task.prompt  # the slip, and nothing else fails
        i = failed[0]
        slip, look, repair = traj.steps[i : i + 3]
        assert [s.weight for s in traj.steps] == [0.0 if s is slip else 1.0 for s in traj.steps]
        error = slip.tool_responses[0].error
        if fix["kind"] == "column":
            assert f"no such column: {fix['wrong']}" in error
            assert look.action.tool_calls[0].name == "describe_table"
            assert fix["right"] in repair.action.tool_calls[0].arguments["query"]
        else:
            assert f"no such file: '{fix['wrong']}'" in error
            assert look.action.tool_calls[0].name == "list_files"
            assert repair.action.tool_calls[0].arguments["path"] == fix["right"]


def test_the_slip_is_shown_but_not_taught(slipped):
    """SFT learns the look and the repair, never the slipped call (it stays in the context)."""
    tasks, trajectories = slipped
    task, traj = next(
        (t, e) for t, e in zip(*slipped, strict=True) if t.metadata["slip"]["kind"] == "column"
    )
    taught = _taught(traj)
    slipped_query = (
        next(s for s in traj.steps if s.weight == 0).action.tool_calls[0].arguments["query"]
    )
    assert f"Column {task.metadata['slip']['wrong']} does not exist" in taught
    assert slipped_query not in taught
    every_turn = replace(traj, steps=[replace(s, weight=1.0) for s in traj.steps])
    assert slipped_query in _taught(every_turn)


def test_weights_survive_chat_messages(slipped):
    traj = slipped[1][0]
    messages = trajectory_to_messages(traj)
    assert [m.get("weight") for m in messages if m["role"] == "assistant"].count(0.0) == 1
    back = trajectory_from_messages(messages)
    assert [s.weight for s in back.steps] == [s.weight for s in traj.steps]
    messages[1]["weight"] = 0.5  # SFT has no half-taught turns: refused, not rounded
    with pytest.raises(ValueError, match="weight must be 0 or 1"):
        trajectory_from_messages(messages)


def test_slips_change_only_the_demonstration(env):
    """The same tasks with and without slips; the test split never slips."""
    plain = sample_tasks("train", 120, seed=4, world=env.world)
    slips = sample_tasks("train", 120, seed=4, world=env.world, recovery_share=0.5)
    assert [(t.prompt, t.tools, t.check) for t in plain] == [
        (t.prompt, t.tools, t.check) for t in slips
    ]
    assert 0 < sum("slip" in t.metadata for t in slips) < len(slips)
    configured = SimpleNamespace(world=env.world, config=AgentConfig(recovery_share=1.0))
    assert not any("slip" in t.metadata for t in sample_tasks("test", 60, seed=4, world=configured))
    assert any("slip" in t.metadata for t in sample_tasks("train", 60, seed=4, world=configured))


def test_a_slip_is_a_column_the_query_selects_under_a_wrong_name():
    rng = random.Random(0)
    for _ in range(20):
        query, wrong, right, table = _sql_slip(
            "SELECT SUM(net_worth_musd) FROM people WHERE age > 40", rng
        )
        assert (right, table) == ("net_worth_musd", "people") and wrong in WRONG_COLUMNS[right]
        assert query == f"SELECT SUM({wrong}) FROM people WHERE age > 40"
    assert _sql_slip("SELECT name FROM people", rng) is None  # no known column to guess at


def test_no_slip_where_the_episode_would_not_fit(env):
    tasks = [
        t
        for t in sample_tasks("train", 200, seed=5, world=env.world)
        if t.metadata["plan"]["steps"]
    ]
    assert any("slip" in with_slip(t, 1.0, max_turns=10).metadata for t in tasks)
    assert not any("slip" in with_slip(t, 1.0, max_turns=3).metadata for t in tasks)
    assert all(with_slip(t, 0.0) is t for t in tasks)


def test_recovery_share_is_checked():
    with pytest.raises(ConfigError, match="recovery_share"):
        AgentConfig(recovery_share=1.5)
