"""Schema tasks: random function schemas, split apart, checked by BFCL's AST rules, playable by
the expert through the real loop, and absent unless asked for."""

import itertools
import json
import random
import re

import pytest

from tooltune.config import AgentConfig, ConfigError, TaskTier
from tooltune.environment import Environment
from tooltune.evaluation import run_evaluation
from tooltune.rollout import ScriptedPolicy
from tooltune.tasks import sample_tasks
from tooltune.tasks.bfcl import BFCLQuestion, check_question
from tooltune.tasks.expert import ExpertPolicy
from tooltune.tasks.schema_gen import FORMULAS, function_pool, pool_of
from tooltune.tasks.schema_tasks import SAME_BUT, make_schema_task
from tooltune.tasks.task import Task
from tooltune.tools.catalogue import TOOL_FAMILY
from tooltune.tools.schema_functions import call_id
from tooltune.types import ToolCall

TIERS = ["simple", "multi_tool_par", "no_tool"]


def _schema_sample(split, n, seed=0, world=None):
    return sample_tasks(split, n, seed=seed, world=world, tiers=TIERS, schema_share=1.0)


def _question(task):
    spec = task.check["checks"][0]
    return BFCLQuestion("q", [], spec["functions"], spec["ground_truth"], spec["category"])


def test_pools_are_deterministic_and_keep_the_splits_apart():
    assert [f.doc for f in function_pool(0)] == [f.doc for f in function_pool.__wrapped__(0)]
    assert [f.name for f in function_pool(0)] != [f.name for f in function_pool(1)]
    names = {s: {f.name for f in pool_of(s)} for s in ("train", "validation", "test")}
    pairs = {s: {f.pair for f in pool_of(s)} for s in ("train", "validation", "test")}
    assert all(len(names[s]) > 250 for s in names)
    assert not (names["train"] & names["test"]) and not (pairs["train"] & pairs["test"])
    assert not (pairs["train"] & pairs["validation"]) and not (pairs["validation"] & pairs["test"])
    assert not set(TOOL_FAMILY) & {f.name for f in function_pool(0)}
    assert pool_of("heldout_tools") == []


def test_schemas_vary_in_names_types_and_optional_arguments():
    docs = [f.doc for f in function_pool(0)]
    kinds, enums, nested, defaults, optional = set(), 0, 0, 0, 0
    for doc in docs:
        params = doc["parameters"]
        for name, prop in params["properties"].items():
            kinds.add(prop["type"])
            enums += "enum" in prop
            nested += "properties" in prop
            defaults += "default" in prop
            optional += name not in params["required"]
    assert kinds == {"string", "integer", "number", "boolean", "array", "object"}
    assert min(enums, nested, defaults, optional) > 50
    assert any("." in d["name"] for d in docs) and any(d["name"] != d["name"].lower() for d in docs)


def test_formulas_take_the_numbers_a_question_gives():
    """Formula functions (areas, velocities, interest) have their own numeric parameters."""
    formulas = [f for f in function_pool(0) if f.noun in FORMULAS]
    assert {f.noun for f in formulas} == set(FORMULAS)
    assert {f.split for f in formulas} == {"train", "validation", "test"}
    for function in formulas:
        params = function.doc["parameters"]
        assert len(params["required"]) == len(FORMULAS[function.noun]), function.doc
        kinds = {params["properties"][p]["type"] for p in params["required"]}
        assert kinds <= {"integer", "number", "array"}, function.doc


def test_default_sampling_is_unchanged(world):
    for split in ("train", "test"):
        plain = sample_tasks(split, 80, seed=4, world=world)
        zero = sample_tasks(split, 80, seed=4, world=world, schema_share=0.0)
        assert [t.to_json() for t in plain] == [t.to_json() for t in zero]
        assert not any(t.metadata["template"].startswith("schema_") for t in plain)


def test_share_mixes_schema_tasks_into_simple_parallel_and_no_tool(world):
    tasks = sample_tasks("train", 200, seed=0, world=world, schema_share=0.5)
    schema = [t for t in tasks if t.metadata["template"].startswith("schema_")]
    assert 20 < len(schema) < 100
    assert {t.tier for t in schema} == {TaskTier.SIMPLE, TaskTier.MULTI_TOOL_PAR, TaskTier.NO_TOOL}
    assert sample_tasks("heldout_tools", 30, world=world, schema_share=1.0)  # none there, no error
    with pytest.raises(ValueError, match="schema_share"):
        sample_tasks("train", 1, world=world, schema_share=1.5)


def test_tasks_are_deterministic_and_test_functions_never_train(world):
    a, b = _schema_sample("test", 60, world=world), _schema_sample("test", 60, world=world)
    assert [t.to_json() for t in a] == [t.to_json() for t in b]
    assert Task.from_json(a[0].to_json()) == a[0]
    train_names = {f.name for f in pool_of("train")}
    offered = {name for t in a for name in t.tools}
    assert offered and not offered & train_names
    assert len({t.prompt for t in a}) == len(a)
    categories = {t.metadata["bfcl_category"] for t in _schema_sample("train", 200, world=world)}
    assert categories == {"simple", "multiple", "parallel", "parallel_multiple", "irrelevance"}


def test_ground_truth_passes_the_ast_checker_and_perturbations_fail():
    rng = random.Random(0)
    for i in range(200):
        tier = TaskTier.SIMPLE if i % 2 else TaskTier.MULTI_TOOL_PAR
        task = make_schema_task(tier, "train", rng, f"t{i}")
        question, calls = _question(task), [dict(c) for c in task.minimal_calls]
        assert check_question(question, calls) == [], task.prompt
        first = calls[0]
        wrong_name = [{**first, "name": next(n for n in task.tools + ["nope"]
                                              if n != first["name"])}, *calls[1:]]  # fmt: skip
        assert check_question(question, wrong_name)
        assert check_question(question, calls[:-1] + calls[-1:] * 2)  # one call too many
        name, value = next(iter(first["arguments"].items()))
        changed = {**first["arguments"], name: _perturb(value)}
        assert check_question(question, [{**first, "arguments": changed}, *calls[1:]]), name


def test_parallel_requests_can_list_the_values_of_one_argument():
    """BFCL's parallel questions state shared values once and list the one that varies; its
    parallel_multiple ones do that for one function and also ask for another."""
    rng = random.Random(1)
    tasks = [make_schema_task(TaskTier.MULTI_TOOL_PAR, "train", rng, f"t{i}") for i in range(300)]
    listed = [t for t in tasks if "for each" in t.prompt or "one call per" in t.prompt]
    mixed = [t for t in listed if len({c["name"] for c in t.minimal_calls}) == 2]
    assert len(listed) > 20 and {len(t.minimal_calls) for t in listed} >= {2, 3, 4}
    assert len(mixed) > 20 and {len(t.minimal_calls) for t in mixed} >= {3, 4}
    for task in listed:
        names = {c["name"] for c in task.minimal_calls}
        assert len(names) in (1, 2), task.prompt
        for name in names:
            args = [c["arguments"] for c in task.minimal_calls if c["name"] == name]
            varied = {k for a in args for k in a if any(b.get(k) != a[k] for b in args)}
            assert len(varied) == (len(args) > 1), task.prompt
            assert all(_written(a[key]) in task.prompt for a in args for key in varied)


def test_parallel_requests_can_ask_for_the_same_with_changes():
    """ "... Then do the same with X instead": each later call is the one before with one or two
    stated values changed, and the question writes the new ones."""
    rng = random.Random(2)
    tasks = [make_schema_task(TaskTier.MULTI_TOOL_PAR, "train", rng, f"t{i}") for i in range(300)]
    changed = [t for t in tasks if any(s.split("{")[0] in t.prompt for s in SAME_BUT)]
    assert len(changed) > 20 and {len(t.minimal_calls) for t in changed} >= {2, 3}
    for task in changed:
        args = [c["arguments"] for c in task.minimal_calls]
        assert len({c["name"] for c in task.minimal_calls}) == 1, task.prompt
        for before, after in itertools.pairwise(args):
            new = {k for k in after if after[k] != before.get(k)}
            assert 1 <= len(new) <= 2 and after.keys() == before.keys(), task.prompt
            assert all(_written(after[k]) in task.prompt for k in new), task.prompt


def _written(value):
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 7
    if isinstance(value, list):
        return value[::-1] if len(set(map(json.dumps, value))) > 1 else value + value
    if isinstance(value, dict):
        return {k: _perturb(v) for k, v in value.items()}
    return value + "x"


def test_expert_solves_every_schema_task_through_the_real_loop(env):
    for split in ("train", "test"):
        tasks = _schema_sample(split, 150, seed=2, world=env.world)
        metrics, trajectories = run_evaluation(ExpertPolicy(tasks), tasks, env, batch_size=50)
        assert metrics["accuracy"]["overall"] == 1.0
        assert metrics["unnecessary_call_rate"] == 0.0
        for task, traj in zip(tasks, trajectories, strict=True):
            assert traj.success, (task.prompt, traj.final_answer)
            assert all(r.success for r in traj.tool_responses)
            if task.tier is TaskTier.MULTI_TOOL_PAR:
                assert len(traj.steps[0].action.tool_calls) == task.metadata["parallel"] > 1


def test_functions_validate_arguments_and_answer_deterministically(env):
    task = next(t for t in _schema_sample("train", 40, world=env.world) if t.tier == "simple")
    call = task.minimal_calls[0]
    registry = env.registry("schema-ep", task.tools)
    assert registry.names == task.tools
    ok = registry.execute(ToolCall("c", call["name"], call["arguments"]))
    assert ok.success and ok.result["id"] == task.answer[0]
    bad = registry.execute(ToolCall("c", call["name"], {**call["arguments"], "zzz": 1}))
    assert not bad.success
    doc = next(f.doc for f in function_pool(0) if f.name == call["name"])
    first = doc["parameters"]["required"][0]
    wrong_type = {**call["arguments"], first: {"not": "right"}}
    assert not registry.execute(ToolCall("c", call["name"], wrong_type)).success
    registry.close()


def test_call_ids_agree_with_what_the_checker_accepts():
    doc = {"name": "get_thing", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "n": {"type": "number"},
        "unit": {"type": "string", "enum": ["a", "b"], "default": "a"}}}}  # fmt: skip
    base = call_id(doc, {"city": "New York", "n": 2.0})
    assert base.startswith("GT-")
    assert call_id(doc, {"city": "new york", "n": 2, "unit": "a"}) == base
    assert call_id(doc, {"city": "Boston", "n": 2}) != base
    assert call_id(doc, {"city": "New York", "n": 2, "unit": "b"}) != base


def test_success_needs_the_right_calls_and_the_reported_id(env):
    task = next(t for t in _schema_sample("train", 40, world=env.world) if t.tier == "simple")
    call = json.dumps({"name": task.minimal_calls[0]["name"],
                       "arguments": task.minimal_calls[0]["arguments"]})  # fmt: skip
    scripts = {
        "right": [f"<tool_call>{call}</tool_call>", f"Done: id {task.answer[0]}."],
        "no id": [f"<tool_call>{call}</tool_call>", "Done."],
        "no call": [f"Done: id {task.answer[0]}."],
    }
    outcome = {}
    for name, turns in scripts.items():
        _, (traj,) = run_evaluation(ScriptedPolicy({task.prompt: turns}), [task], env)
        outcome[name] = traj.success
    assert outcome == {"right": True, "no id": False, "no call": False}


def test_irrelevant_tasks_offer_nothing_that_helps_and_want_no_call(env):
    tasks = [t for t in _schema_sample("train", 120, world=env.world) if t.tier == "no_tool"]
    assert len(tasks) > 10
    by_name = {f.name: f for f in pool_of("train")}
    for task in tasks:
        said = task.prompt.lower()
        wanted = next(f for f in pool_of("train") if f"{f.verb} " in said and f.noun in said)
        assert task.tools and all(by_name[n].noun != wanted.noun for n in task.tools), task.prompt
        assert task.minimal_calls == [] and task.metadata["bfcl_category"] == "irrelevance"
    task = tasks[0]
    offered = by_name[task.tools[0]]
    call = json.dumps({"name": offered.name, "arguments": {}})
    scripts = {"refuses": ["I cannot do that with the tools I have."],
               "answers anyway": ["Done."],
               "calls": [f"<tool_call>{call}</tool_call>", "I cannot do that."]}  # fmt: skip
    outcome = {}
    for name, turns in scripts.items():
        _, (traj,) = run_evaluation(ScriptedPolicy({task.prompt: turns}), [task], env)
        outcome[name] = traj.success
    assert outcome == {"refuses": True, "answers anyway": False, "calls": False}


def _think(task):
    plan = task.metadata["plan"]
    return plan["think"] if not plan.get("steps") else plan["steps"][0]["think"]


def test_thoughts_name_the_request_before_the_decision():
    """A call's thought opens with what is asked, then the call's name; a refusal opens with
    "No" (as the world's refusals do) and names what is asked after it; several calls of one
    function list the values that vary."""
    rng = random.Random(3)
    by_name = {f.name: f for f in pool_of("train")}
    for tier in (TaskTier.SIMPLE, TaskTier.NO_TOOL):
        for i in range(40):
            task = make_schema_task(tier, "train", rng, f"t{i}")
            if tier is TaskTier.NO_TOOL:
                refusal = re.fullmatch(
                    r"No offered function can (.+) the (.+), so I make no call\.", _think(task)
                )
                assert refusal, _think(task)
                verb, noun = refusal.groups()
                assert all(by_name[n].noun != noun for n in task.tools)
            else:
                asked, decision = _think(task).split(": ", 1)
                verb, noun = asked.lower().split(" the ", 1)
                called = by_name[task.minimal_calls[0]["name"]]
                assert (called.verb, called.noun) == (verb, noun)
                assert decision.startswith(called.name + " does this")
            assert f"{verb} " in task.prompt.lower() and noun in task.prompt, task.prompt
    checked = 0
    for i in range(200):
        task = make_schema_task(TaskTier.MULTI_TOOL_PAR, "train", rng, f"p{i}")
        calls = task.minimal_calls
        assert f": {len(calls)} independent calls in one turn: " in _think(task)
        names = {c["name"] for c in calls}
        if len(names) == 1 and all(
            set(c["arguments"]) == set(calls[0]["arguments"]) for c in calls
        ):
            varied = next(
                k
                for k in calls[0]["arguments"]
                if any(c["arguments"][k] != calls[0]["arguments"][k] for c in calls)
            )
            values = [c["arguments"][varied] for c in calls]
            if all(isinstance(v, int | float | str) and not isinstance(v, bool) for v in values):
                assert all(_written(v) in _think(task) for v in values), _think(task)
                checked += 1
    assert checked > 10


def test_config_turns_schema_tasks_on(world_dir):
    with pytest.raises(ConfigError, match="schema_task_share"):
        AgentConfig(schema_task_share=2.0)
    config = AgentConfig(schema_task_share=1.0)
    with Environment(world_dir, config=config) as env:
        tasks = env.sample_tasks("train", 30, seed=0)
        assert any(t.metadata["template"].startswith("schema_") for t in tasks)
        validation = env.sample_tasks("validation", 30, seed=0)
        assert any(t.metadata["template"].startswith("schema_") for t in validation)
        test = env.sample_tasks("test", 5, seed=0, per_group=True)
    with Environment(world_dir) as plain:  # the test split stays the same whatever a run trains on
        assert [t.prompt for t in test] == [
            t.prompt for t in plain.sample_tasks("test", 5, seed=0, per_group=True)
        ]


def test_parallel_calls_must_come_in_one_turn(env):
    tasks = _schema_sample("train", 40, world=env.world)
    task = next(t for t in tasks if t.tier == "multi_tool_par")
    calls = [f"<tool_call>{json.dumps(c)}</tool_call>" for c in task.minimal_calls]
    answer = "Done: " + ", ".join(task.answer)
    scripts = {"one turn": ["\n".join(calls), answer], "turn by turn": [*calls, answer]}
    outcome = {}
    for name, turns in scripts.items():
        _, (traj,) = run_evaluation(ScriptedPolicy({task.prompt: turns}), [task], env)
        outcome[name] = traj.success
    assert outcome == {"one turn": True, "turn by turn": False}
