import copy
import json
from pathlib import Path

import pytest

from tooltune.config import TaskTier
from tooltune.tasks import bfcl

SHARED = Path(__file__).resolve().parents[3] / "shared" / "bfcl"
CATEGORIES = ["simple_python", "parallel", "multiple"]


def _paths(category):
    return (
        SHARED / f"BFCL_v4_{category}.json",
        SHARED / "possible_answer" / f"BFCL_v4_{category}.json",
    )


needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason="BFCL samples not available")


@needs_data
@pytest.mark.parametrize("category", CATEGORIES)
def test_samples_load_and_their_own_answers_score_100(category, tmp_path):
    questions_path, answers_path = _paths(category)
    questions = bfcl.load_questions(questions_path, answers_path)
    assert len(questions) >= 200 and all(q.ground_truth for q in questions)
    predictions = bfcl.reference_predictions(questions)
    result = bfcl.check_predictions(questions, None, predictions)
    assert result["accuracy"] == 1.0 and result["n"] == len(questions)
    # the file-level entry point agrees
    pred_path = tmp_path / "pred.jsonl"
    pred_path.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    assert bfcl.check_files(questions_path, answers_path, pred_path)["accuracy"] == 1.0
    tasks = bfcl.load_tasks(questions_path, answers_path)
    assert tasks[0].tier is (TaskTier.MULTI_TOOL_PAR if category == "parallel" else TaskTier.SIMPLE)
    assert tasks[0].tools == [f["name"] for f in questions[0].functions]


FUNCTIONS = [
    {
        "name": "weather.get",
        "parameters": {
            "type": "dict",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "scale": {"type": "float"},
                "units": {"type": "string", "enum": ["c", "f"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "opts": {"type": "dict", "properties": {"hourly": {"type": "boolean"}}},
            },
            "required": ["city", "days"],
        },
    }
]
TRUTH = {
    "city": ["New York", "NYC"],
    "days": [3],
    "scale": [1.0, ""],
    "units": ["", "c"],
    "tags": [["Rain", "Wind"]],
    "opts": [{"hourly": [True, ""]}],
}
GOOD = {
    "city": "new-york",
    "days": 3,
    "scale": 1,
    "tags": ["rain", "wind"],
    "opts": {"hourly": True},
}


def _question(truth=None, category="simple_python"):
    return bfcl.BFCLQuestion("q1", [], copy.deepcopy(FUNCTIONS), truth, category)


def _reasons(arguments, name="weather.get"):
    return bfcl.check_question(
        _question([{"weather.get": TRUTH}]), [{"name": name, "arguments": arguments}]
    )


def test_valid_call_with_normalised_strings_and_int_for_float():
    assert _reasons(GOOD) == []
    assert _reasons({**GOOD, "city": "NYC", "units": "C"}) == []
    assert _reasons({k: v for k, v in GOOD.items() if k != "scale"}) == []  # "" marks it optional
    assert _reasons({**GOOD, "opts": {}}) == []  # nested optional key left out
    assert _reasons(GOOD, name="weather_get") == []  # dots may come back as underscores


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"__name": "weather.set"}, "wrong function name"),
        ({"__drop": "days"}, "missing required parameter 'days'"),
        ({"wind": 3}, "unexpected parameter 'wind'"),
        ({"days": "3"}, "wrong type for 'days': expected integer, got string"),
        ({"days": 3.0}, "wrong type for 'days'"),
        ({"scale": True}, "wrong type for 'scale'"),
        ({"days": 4}, "wrong value for 'days'"),
        ({"city": "Boston"}, "wrong value for 'city'"),
        ({"tags": ["wind", "rain"]}, "wrong value for 'tags'"),
        ({"tags": ["rain", 5]}, "wrong type for 'tags'[1]"),
        ({"opts": {"hourly": False}}, "wrong value for 'opts'"),
        ({"opts": {"hourly": True, "extra": 1}}, "wrong value for 'opts'"),
        ({"__drop": "tags"}, "missing parameter 'tags' (it is not optional)"),
    ],
)
def test_perturbed_calls_fail_with_a_reason(change, reason):
    arguments = dict(GOOD)
    name = change.pop("__name", "weather.get")
    if "__drop" in change:
        arguments.pop(change.pop("__drop"))
    arguments.update(change)
    reasons = _reasons(arguments, name)
    assert reasons and any(reason in r for r in reasons), reasons


def test_parallel_calls_match_in_any_order_each_used_once():
    truth = [
        {"weather.get": {"city": ["Paris"], "days": [1]}},
        {"weather.get": {"city": ["Rome"], "days": [2]}},
    ]
    q = _question(truth, "parallel")
    paris = {"name": "weather.get", "arguments": {"city": "Paris", "days": 1}}
    rome = {"name": "weather.get", "arguments": {"city": "Rome", "days": 2}}
    assert bfcl.check_question(q, [paris, rome]) == []
    assert bfcl.check_question(q, [rome, paris]) == []
    assert "wrong number of calls" in bfcl.check_question(q, [paris])[0]
    reasons = bfcl.check_question(q, [paris, paris])  # one ground-truth call used twice
    assert len(reasons) == 1 and "ground-truth call 2" in reasons[0] and "'Paris'" in reasons[0]


def test_irrelevance_means_no_call():
    q = _question([], "irrelevance")
    assert bfcl.check_question(q, []) == []
    assert bfcl.question_tier(q) is TaskTier.NO_TOOL  # reported beside the built-in no-tool tier
    assert (
        "expected no function call"
        in bfcl.check_question(q, [{"name": "weather.get", "arguments": {}}])[0]
    )


def test_missing_prediction_and_accuracy():
    q1 = _question([{"weather.get": TRUTH}])
    q2 = bfcl.BFCLQuestion(
        "q2", [], copy.deepcopy(FUNCTIONS), [{"weather.get": TRUTH}], "simple_python"
    )
    result = bfcl.check_predictions(
        [q1, q2], None, [{"id": "q1", "calls": [{"name": "weather.get", "arguments": GOOD}]}]
    )
    assert result["accuracy"] == 0.5 and result["correct"] == 1
    assert result["entries"][1] == {
        "id": "q2",
        "valid": False,
        "reasons": ["no prediction for this id"],
    }


def test_openai_schema_conversion():
    entry = bfcl.to_openai_tool(FUNCTIONS[0])
    params = entry["function"]["parameters"]
    assert params["type"] == "object"
    assert params["properties"]["scale"]["type"] == "number"
    assert params["properties"]["opts"]["type"] == "object"
    assert params["properties"]["tags"]["items"]["type"] == "string"


def test_bad_files_name_the_line(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(
        '{"id": "a", "question": [[{"role": "user", "content": "hi"}]], "function": []}\nnot json\n'
    )
    with pytest.raises(ValueError, match=":2:"):
        bfcl.load_questions(path)


@needs_data
def test_bfcl_tasks_verify_from_the_first_calls():
    from tooltune.tasks import verify
    from tooltune.types import AgentAction, AgentStep, AgentTrajectory, ToolCall

    questions_path, answers_path = _paths("parallel")
    task = bfcl.load_tasks(questions_path, answers_path)[0]
    calls = [
        ToolCall(f"c{i}", c["name"], c["arguments"])
        for i, c in enumerate(reversed(task.minimal_calls))
    ]
    good = AgentTrajectory(task.prompt, task.tier, [AgentStep(AgentAction("tool_call", "", calls))])
    assert verify(task, good)
    bad = AgentTrajectory(
        task.prompt, task.tier, [AgentStep(AgentAction("tool_call", "", calls[:1]))]
    )
    assert not verify(task, bad)


def _one(schema: dict, allowed: list, value, category="simple_python") -> list[str]:
    functions = [{"name": "f", "parameters": {"type": "dict", "properties": {"x": schema}}}]
    q = bfcl.BFCLQuestion("q", [], functions, [{"f": {"x": allowed}}], category)
    return bfcl.check_question(q, [{"name": "f", "arguments": {"x": value}}])


def test_variable_references_follow_bfcl():
    array = {"type": "array", "items": {"type": "string"}}
    # a string for an array parameter whose possible answer is that string (a variable name)
    assert _one(array, ["my_list"], "my_list") == []
    assert _one(array, ["my_list"], "My List")  # a variable is compared exactly
    assert _one(array, ["my_list"], ["my_list"])  # the right type, but not the answer
    # items of another type than declared, where the possible answer lists exactly those items
    assert _one(array, [[1, 2]], [1, 2]) == []
    assert "wrong type for 'x'[0]" in _one(array, [["a"]], [1])[0]
    # an integer possible answer for a float parameter: plain equality
    assert _one({"type": "float"}, [3], 3) == [] and _one({"type": "float"}, [3], 3.0) == []
    # strings lose only spaces and , . / - _ * ^ (not tabs) and case
    assert _one({"type": "string"}, ["New York"], "new_york") == []
    assert _one({"type": "string"}, ["New York"], "new\tyork")


def test_parallel_matching_is_greedy_like_bfcl():
    functions = [
        {"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}}}}
    ]
    truth = [{"f": {"x": [1, 2]}}, {"f": {"x": [1]}}]
    q = bfcl.BFCLQuestion("q", [], functions, truth, "parallel")
    one, two = ({"name": "f", "arguments": {"x": v}} for v in (1, 2))
    assert bfcl.check_question(q, [two, one]) == []
    # the first ground-truth call takes the first call that fits it, leaving 2 for x=[1]
    assert bfcl.check_question(q, [one, two])


def test_relevance_categories():
    call = {"name": "weather.get", "arguments": {}}
    assert bfcl.check_question(_question(None, "live_irrelevance"), []) == []
    assert bfcl.check_question(_question(None, "live_irrelevance"), [call])
    assert bfcl.check_question(_question(None, "live_relevance"), [call]) == []
    assert bfcl.check_question(_question(None, "live_relevance"), [])
    malformed = {"name": "", "arguments": {}, "parse_error": "not valid JSON"}
    assert bfcl.check_question(_question(None, "live_relevance"), [malformed])
    assert bfcl.check_question(_question(None, "irrelevance"), [malformed])  # a call attempted
