"""`datasets` reads what tooltune writes, as it is written, and SFT takes a `datasets.Dataset`
of chats (issue 23, part 4). Skipped where `datasets` is not installed (it is in the hf extra)."""

import json
import math

import pytest

datasets = pytest.importorskip("datasets")

from tooltune import ToolEnv, tool  # noqa: E402
from tooltune.messages import write_trajectories  # noqa: E402
from tooltune.tasks.sources import load_task_source  # noqa: E402
from tooltune.tasks.task import Task, save_tasks  # noqa: E402
from tooltune.training.pipeline import PipelineSettings, check_environment  # noqa: E402
from tooltune.training.sft import load_chat_rows  # noqa: E402
from tooltune.types import (  # noqa: E402
    AgentAction,
    AgentStep,
    AgentTrajectory,
    TokenRecord,
    ToolCall,
    ToolResponse,
)


def _load(path, tmp_path):
    return datasets.load_dataset("json", data_files=str(path), split="train",
                                 cache_dir=str(tmp_path / "cache"))  # fmt: skip


def _same(written, loaded, path="row"):
    """`loaded` holds `written`: floats to 10 significant digits (datasets re-encodes rows with
    a mixed-type field through pandas' ujson, which keeps 10), keys `datasets` added are None."""
    if isinstance(written, dict):
        assert isinstance(loaded, dict), path
        for key, value in written.items():
            _same(value, loaded.get(key), f"{path}.{key}")
        assert all(loaded[k] is None for k in set(loaded) - set(written)), path
    elif isinstance(written, list):
        assert isinstance(loaded, list) and len(loaded) == len(written), path
        for i, (a, b) in enumerate(zip(written, loaded, strict=True)):
            _same(a, b, f"{path}[{i}]")
    elif isinstance(written, float):
        assert math.isclose(written, loaded, rel_tol=1e-9, abs_tol=1e-12), path
    else:
        assert written == loaded, path


def _episode(i, result):
    """Tool results that vary in type between rows, as real tools' do."""
    call = ToolCall(f"c{i}", "lookup", {"key": f"k{i}"} if i % 2 else {"n": i, "deep": [1.5]})
    ok = result is not None
    response = ToolResponse(f"c{i}", ok, result, None if ok else "no such key", 0.0123456789012,
                            "lookup")  # fmt: skip
    steps = [AgentStep(AgentAction("tool_call", "", [call]), "obs", [response]),
             AgentStep(AgentAction("respond", f"answer {i}"))]  # fmt: skip
    tokens = TokenRecord()
    tokens.extend([1, 2, 3], False)
    tokens.extend([4, 5], True, [-0.123456789012345, -2.5])
    return AgentTrajectory(f"question {i}", "simple" if i % 2 else "complex", steps, f"answer {i}",
                           0.8 * i, i % 2 == 0, f"t{i}", metadata={"stage": "after_sft"} if i
                           else {"episode_id": "e0", "text": "raw"}, tokens=tokens,
                           reward_components={"outcome": 1.0, "format": 0.5})  # fmt: skip


RESULTS = ["plain text", {"rows": [[1, "a"]], "n": 1}, [{"id": "d1", "score": 10.2679}], 42, None,
           {"other": {"x": -0.6666666666666666}}]  # fmt: skip


def test_trajectories_load_as_written(tmp_path):
    episodes = [_episode(i, r) for i, r in enumerate(RESULTS)]
    for messages in (False, True):  # tooltune's lossless form and OpenAI-style messages
        path = tmp_path / f"trajectories{int(messages)}.jsonl"
        write_trajectories(path, episodes, messages=messages)
        written = [json.loads(line) for line in path.read_text().splitlines()]
        loaded = _load(path, tmp_path)
        assert len(loaded) == len(episodes)
        for row, got in zip(written, loaded, strict=True):
            _same(row, got)
        if not messages:  # and a loaded row is a trajectory again
            back = AgentTrajectory.from_dict(loaded[2])
            assert back.steps[0].tool_responses[0].result == [
                {"id": "d1", "score": pytest.approx(10.2679)}
            ]
            assert back.tokens.logprobs[3] == pytest.approx(-0.123456789012345)


def _tasks():
    def task(i, answer, check):
        return Task(f"t{i}", f"prompt {i}", "simple" if i % 2 else "complex", ["lookup"], answer,
                    check, [{"name": "lookup", "arguments": {"key": f"k{i}"}}],
                    "test" if i == 3 else "train", {"template": f"tpl{i}"})  # fmt: skip

    return [task(0, 42, {"type": "number", "value": 42, "rel_tol": 0.01}),
            task(1, "Oslo", {"type": "text", "value": "Oslo", "aliases": ["OSL"]}),
            task(2, ["a", "b"], {"type": "set", "items": ["a", "b"]}),
            task(3, 1.5, {"type": "all", "checks": [{"type": "number", "value": 1.5},
                                                    {"type": "text", "value": "x"}]})]  # fmt: skip


def test_tasks_load_as_written_and_back_into_an_environment(tmp_path):
    tasks = _tasks()
    path = tmp_path / "tasks.jsonl"
    save_tasks(path, tasks)
    loaded = _load(path, tmp_path)
    for task, row in zip(tasks, loaded, strict=True):
        _same(task.to_dict(), row)
    again = load_task_source(loaded)  # a Dataset is a task source
    assert [(t.id, t.answer, t.split) for t in again] == [(t.id, t.answer, t.split) for t in tasks]


def test_a_users_example_tasks_file_loads(tmp_path):
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "inventory_api" / "tasks.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    loaded = _load(path, tmp_path)
    for row, got in zip(rows, loaded, strict=True):
        _same(row, got)


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


ENV_TASKS = [{"id": f"add-{i}", "prompt": f"Add {i} and {i + 1}.", "answer": 2 * i + 1,
              "group": "sum", "split": "test" if i == 4 else "train"} for i in range(5)]  # fmt: skip


def _chat(i, with_result):
    call = {"id": "c0", "type": "function",
            "function": {"name": "add", "arguments": json.dumps({"a": i, "b": i + 1})}}  # fmt: skip
    messages = [{"role": "user", "content": f"Add {i} and {i + 1}."},
                {"role": "assistant", "content": "", "tool_calls": [call]}]  # fmt: skip
    if with_result:
        messages.append({"role": "tool", "tool_call_id": "c0", "content": str(2 * i + 1.0)})
    return {"messages": [*messages, {"role": "assistant", "content": f"It is {2 * i + 1}."}]}


def _facts(demo):
    return (demo.prompt, [c.arguments for c in demo.tool_calls],
            [r.result for r in demo.tool_responses], demo.final_answer, demo.task_id)  # fmt: skip


def test_a_dataset_of_chats_is_sft_data(tmp_path):
    rows = [_chat(i, with_result=i % 2 == 0) for i in range(5)]  # some with the tool's result
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = _load(path, tmp_path)

    from_file = ToolEnv(ENV_TASKS, [add], demonstrations=path).demonstrations()
    for source in (dataset, datasets.Dataset.from_list(rows), rows):
        env = ToolEnv(ENV_TASKS, [add], demonstrations=source)
        check_environment(env, PipelineSettings(model="builtin"))  # demonstrations given
        demos = env.demonstrations()
        assert len(demos) == 4  # the test task's chat is left out
        assert [_facts(d) for d in demos] == [_facts(d) for d in from_file]
        assert all(d.success for d in demos)
        assert env.demonstrations()[0].steps[0].tool_responses  # the rows stay as they were


def test_bad_chat_rows_name_the_row(tmp_path):
    with pytest.raises(ValueError, match="row 1: expected an object with a 'messages' list"):
        load_chat_rows([_chat(0, True), {"text": "hi"}])
    with pytest.raises(ValueError, match=r"pass one split, e.g. dataset\['train'\]"):
        load_chat_rows(datasets.DatasetDict({"train": datasets.Dataset.from_list([_chat(0, 1)])}))
    folder = tmp_path / "saved"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a folder: give a JSONL file, or a datasets.Dataset"):
        ToolEnv(ENV_TASKS, [add], demonstrations=folder)
