"""`tooltune.ToolEnv`: tasks from every source, per-episode tools, rewards, SFT data, bad input."""

import json
import textwrap

import pytest

from tooltune import ToolEnv, bind, load_env, reward, tool
from tooltune.env_data import collect_successes
from tooltune.evaluation import evaluate, format_metrics
from tooltune.registry import ToolRegistryError
from tooltune.rollout import ScriptedPolicy


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


def _rows(n=10):
    return [{"id": f"t{i}", "prompt": f"What is {i} + 1?", "answer": i + 1,
             "group": "even" if i % 2 == 0 else "odd"} for i in range(n)]  # fmt: skip


def _expert(task, results):
    if not results:
        return {"name": "add", "arguments": {"a": int(task.prompt.split()[2]), "b": 1}}
    return f"It is {results[-1][0].value:g}."


def test_tasks_from_a_list_a_jsonl_file_and_a_dataset_are_the_same(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))

    class FakeDataset:  # a `datasets.Dataset` iterates its rows as dicts
        column_names = ["id", "prompt", "answer", "group"]

        def __iter__(self):
            return iter(_rows())

    envs = [ToolEnv(source, [add]) for source in (_rows(), path, str(path), FakeDataset())]
    dumps = [[t.to_dict() for t in env.all_tasks] for env in envs]
    assert all(d == dumps[0] for d in dumps)
    env = envs[0]
    assert env.groups == ["even", "odd"]
    assert {t.split for t in env.all_tasks} == {"train", "test"}  # one test task per group at least
    assert all(t.tools == ["add"] for t in env.all_tasks)  # no tools column: every tool
    assert env.all_tasks[0].check == {"type": "number", "value": 1}


def test_a_bad_task_line_names_file_and_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(_rows(1)[0]) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"tasks\.jsonl:3: not valid JSON"):
        ToolEnv(path, [add])
    path.write_text(json.dumps({"prompt": "x", "check": {"type": "nope"}}) + "\n")
    with pytest.raises(ValueError, match=r"tasks\.jsonl:1: .*unknown check type 'nope'"):
        ToolEnv(path, [add])
    path.write_text(json.dumps({"prompt": "x", "check": {"type": "number"}}) + "\n")
    with pytest.raises(ValueError, match=r":1: .*lacks value"):
        ToolEnv(path, [add])


def test_a_task_naming_a_missing_tool_is_refused():
    rows = [*_rows(3), {"id": "bad", "prompt": "x", "answer": 1, "tools": ["add", "divide"]}]
    with pytest.raises(ValueError, match="task bad names tools the environment lacks: divide"):
        ToolEnv(rows, [add])


def test_split_groups_and_sampling_are_deterministic():
    rows = _rows(20)
    rows[0]["split"] = "test"
    env = ToolEnv(rows, [add], test_fraction=0.25)
    test = env.sample_tasks("test", 100, per_group=True)
    assert "t0" in {t.id for t in test}
    assert [t.id for t in test] == [t.id for t in ToolEnv(rows, [add], test_fraction=0.25)
                                    .sample_tasks("test", 100, per_group=True)]  # fmt: skip
    assert [t.group for t in env.sample_tasks("test", 1, per_group=True)] == ["even", "odd"]
    train = env.sample_tasks("train", 30, seed=3)
    assert len(train) == 30 and all(t.split == "train" for t in train)
    assert [t.id for t in train] == [t.id for t in env.sample_tasks("train", 30, seed=3)]


def test_episode_tools_get_fresh_state_and_are_closed():
    closed = []

    class Counter:
        def __init__(self, episode):
            self.n = 0

            @tool
            def bump() -> int:
                """Count up."""
                self.n += 1
                return self.n

            self.tools = [bump]

        def close(self):
            closed.append(self.n)

    env = ToolEnv(_rows(), [add], episode_tools=Counter)
    assert env.tool_names() == ["add", "bump"]
    from tooltune.types import ToolCall

    with env.registry("a") as first, env.registry("b") as second:
        first.execute(ToolCall("1", "bump", {}))
        first.execute(ToolCall("2", "bump", {}))
        assert second.execute(ToolCall("3", "bump", {})).result == 1  # its own state
    assert sorted(closed[-2:]) == [1, 2]  # each closed with its own count


def test_bind_hides_fixed_arguments():
    @tool
    def note(text: str, session: str) -> str:
        """Store a note."""
        return f"{session}:{text}"

    (bound,) = bind([note], session="ep1")
    assert list(bound.parameters["properties"]) == ["text"]
    assert bound.parameters["required"] == ["text"]
    assert bound.function(text="hi") == "ep1:hi"


def test_rewards_compose_and_a_raising_reward_is_counted(capsys):
    @reward(weight=0.5)
    def short(task, trajectory):
        return 1.0

    @reward
    def broken(task, trajectory):
        raise RuntimeError("boom")

    env = ToolEnv(_rows(), [add], rewards=[short, broken], expert=_expert)
    tasks = env.sample_tasks("test", 5, per_group=True)
    result = evaluate(env.expert(), tasks, env, groups=env.groups)
    assert result["accuracy"]["overall"] == 1.0
    rubric = env.rubric(env.config)
    trajectory = result["trajectories"][0]
    total = rubric.apply(trajectory, tasks[0])
    parts = trajectory.reward_components
    assert parts["outcome"] == 1.0 and parts["short"] == 1.0 and parts["broken"] == 0.0
    assert total == pytest.approx(sum(env.config.reward_weights.get(k, w) * parts[k]
                                      for k, w in [("short", 0.5), ("broken", 1.0)])
                                  + sum(env.config.reward_weights[k] * parts[k]
                                        for k in parts if k not in ("short", "broken")))  # fmt: skip
    assert env.reward_errors["broken"] == 1
    assert f"reward 'broken' raised on task {tasks[0].id}" in capsys.readouterr().err


def test_reward_names_must_be_new():
    @reward
    def format(task, trajectory):  # noqa: A001 - the clash is the point
        return 0.0

    with pytest.raises(ValueError, match="reward names must be unique and new: format"):
        ToolEnv(_rows(), [add], rewards=[format])


def test_evaluation_reports_user_groups():
    env = ToolEnv(_rows(), [add], expert=_expert)
    tasks = env.sample_tasks("test", 5, per_group=True)
    metrics = evaluate(env.expert(), tasks, env, groups=env.groups)
    assert set(metrics["accuracy"]) == {"even", "odd", "overall"}
    assert metrics["unnecessary_call_rate"] is None  # no task says its shortest solution
    assert "| even |" in format_metrics(metrics)


def test_demonstrations_fill_tool_results_and_drop_unverified(tmp_path, capsys):
    rows = _rows(6)
    for r in rows:
        r["split"] = "train"
    rows[5]["split"] = "test"

    def chat(i, answer):
        call = {"id": "c1", "type": "function",
                "function": {"name": "add", "arguments": json.dumps({"a": i, "b": 1})}}  # fmt: skip
        return {"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                             {"role": "assistant", "content": "", "tool_calls": [call]},
                             {"role": "assistant", "content": f"It is {answer}."}]}  # fmt: skip

    path = tmp_path / "demos.jsonl"
    lines = [chat(1, 2), chat(2, 99), chat(5, 6)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    env = ToolEnv(rows, [add], demonstrations=path)
    demos = env.demonstrations()
    assert len(demos) == 1 and demos[0].task_id == "t1"
    assert demos[0].steps[0].tool_responses[0].result == 2.0  # run through the real tool
    assert demos[0].tools and demos[0].tools[0]["function"]["name"] == "add"
    err = capsys.readouterr().err
    assert "left out 1 demonstrations whose answer does not verify" in err
    assert "left out 1 demonstrations of test tasks" in err
    bad = dict(lines[0])
    bad["messages"][1]["tool_calls"][0]["function"]["name"] = "divide"
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"demos\.jsonl:1: calls 'divide'"):
        ToolEnv(rows, [add], demonstrations=path).demonstrations()


def test_rejection_sampling_keeps_only_verified_successes():
    env = ToolEnv(_rows(), [add])
    tasks = env.sample_tasks("train", 4, seed=0)
    tasks = list({t.id: t for t in tasks}.values())
    right = tasks[0]
    n = int(right.prompt.split()[2])
    call = json.dumps({"name": "add", "arguments": {"a": n, "b": 1}})
    script = {right.prompt: [f"<tool_call>{call}</tool_call>", f"It is {n + 1}."]}
    kept, total = collect_successes(ScriptedPolicy(script), env, tasks, env.config, "json",
                                    num_samples=2)  # fmt: skip
    assert total == 2 * len(tasks)
    assert [t.task_id for t in kept] == [right.id, right.id]


def test_load_env_finds_env_or_make_env_and_says_what_it_looked_for(tmp_path):
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    source = textwrap.dedent('''
        from pathlib import Path
        from tooltune import ToolEnv, tool

        @tool
        def add(a: float, b: float) -> float:
            """Add."""
            return a + b

        def make_env():
            return ToolEnv(Path(__file__).with_name("tasks.jsonl"), [add])
    ''')
    (tmp_path / "env.py").write_text(source)
    assert load_env(str(tmp_path / "env.py")).tool_names() == ["add"]
    assert load_env(f"{tmp_path / 'env.py'}:make_env").groups == ["even", "odd"]
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no environment: looked for `env`, "):
        load_env(str(tmp_path / "empty.py"))
    with pytest.raises(ValueError, match="x is a int, not an environment"):
        load_env(f"{tmp_path / 'empty.py'}:x")


def test_registry_refuses_unknown_tools():
    env = ToolEnv(_rows(), [add])
    with pytest.raises(ToolRegistryError, match="unknown tools: nope"):
        env.registry("e", ["nope"])


def test_pipeline_falls_back_to_rejection_sampling(tmp_path, tiny_qwen2, monkeypatch):
    """No demonstrations and no expert: the new model's own episodes are sampled; with none
    verified the run stops with what to do, with some they are the SFT data."""
    from tooltune import AgentConfig
    from tooltune.config import ConfigError
    from tooltune.training import pipeline as pipeline_module
    from tooltune.training.pipeline import AgentTrainingPipeline, PipelineSettings

    model_dir = tiny_qwen2(tmp_path / "qwen", [r["prompt"] for r in _rows()] * 3)
    config = AgentConfig(max_turns=2, max_new_tokens=8, num_generations=2, sft_epochs=1,
                         sft_batch_size=2, max_trajectory_len=1024)  # fmt: skip
    settings = PipelineSettings(model=str(model_dir), tool_style="compact", sft_tasks=4,
                                val_tasks=0, eval_tasks_per_tier=1, grpo_steps=0,
                                max_seq_len=1024, lora=False)  # fmt: skip
    env = ToolEnv(_rows(), [add])
    with pytest.raises(ConfigError, match="solved none of the training tasks"):
        AgentTrainingPipeline(env, config, settings, tmp_path / "a", progress=False).run_all()

    sampled = []

    def fake(policy, env, tasks, *args, **kwargs):  # the expert's episodes stand in for luck
        sampled.append(kwargs["num_samples"])
        expert = ToolEnv(_rows(), [add], expert=_expert)
        return collect_successes(expert.expert(), env, tasks[:2], config, "compact")

    monkeypatch.setattr("tooltune.env_data.collect_successes", fake)
    run = AgentTrainingPipeline(env, config, settings, tmp_path / "b", progress=False)
    metrics = run.run_all()
    assert sampled == [2] and "after_sft" in metrics
    assert run.sft_source == "2 verified successes of the model's own"
    assert pipeline_module.read_trajectories(tmp_path / "b" / "demonstrations.jsonl")


def test_a_run_can_evaluate_with_constrained_calls(tmp_path, tiny_qwen2, monkeypatch):
    """`pipeline.constrained_calls`: every evaluation decodes calls under the task's tools."""
    from tooltune import AgentConfig
    from tooltune.rollout import TrajectoryCollector
    from tooltune.training.pipeline import AgentTrainingPipeline, PipelineSettings

    seen = []
    init = TrajectoryCollector.__init__

    def recording(self, *args, constrained_calls=False, **kwargs):
        seen.append(constrained_calls)
        init(self, *args, constrained_calls=constrained_calls, **kwargs)

    monkeypatch.setattr(TrajectoryCollector, "__init__", recording)
    model_dir = tiny_qwen2(tmp_path / "qwen", [r["prompt"] for r in _rows()] * 3)
    config = AgentConfig(max_turns=2, max_new_tokens=8, sft_epochs=1, sft_batch_size=2,
                         max_trajectory_len=1024)  # fmt: skip
    settings = PipelineSettings(model=str(model_dir), tool_style="compact", sft_tasks=2,
                                val_tasks=0, eval_tasks_per_tier=1, grpo_steps=0,
                                max_seq_len=1024, lora=False, constrained_calls=True)  # fmt: skip
    env = ToolEnv(_rows(), [add], expert=_expert)
    AgentTrainingPipeline(env, config, settings, tmp_path / "run", progress=False).run_all()
    assert seen.count(True) == 2  # before and after SFT (the expert's demonstrations: free)


def test_a_run_does_not_resume_in_another_environment(tmp_path):
    from tooltune import AgentConfig
    from tooltune.config import ConfigError
    from tooltune.training.pipeline import AgentTrainingPipeline, PipelineSettings
    from tooltune.training.run_dir import RunDirectory

    env = ToolEnv(_rows(), [add], expert=_expert, name="sums")
    RunDirectory(tmp_path).save_state({"completed": [], "metrics": {}, "history": {},
                                       "grpo_step": 0, "config": AgentConfig().to_dict(),
                                       "settings": {**PipelineSettings().__dict__},
                                       "environment": "another: 3 tasks"})  # fmt: skip
    with pytest.raises(ConfigError, match="holds a run in another environment"):
        AgentTrainingPipeline(env, AgentConfig(), PipelineSettings(), tmp_path,
                              progress=False).run_all()  # fmt: skip
