"""Berkeley Function Calling Leaderboard (BFCL) questions and its AST checker.

A BFCL question file is JSON lines with `id`, `question` (a list of turns, each a list of chat
messages) and `function` (function docs whose JSON-Schema-like `parameters` use `"type": "dict"`
for objects and `integer`/`float`/`string`/`boolean`/`array`/`tuple`/`dict`/`any`). A possible-
answer file gives, per id, `ground_truth`: a list of `{function name: {param: [allowed values]}}`.

The checker follows BFCL's AST rules (Python categories; see "The AST checker" below): the
function name must match, required parameters must be present, no unknown parameters, types must
fit (an int is accepted for a float; a possible answer of another type than the declared one is
a variable reference, checked against its own type), every value must be one of the allowed
values (strings compared case-, space- and punctuation-insensitively), an allowed value of ""
marks a parameter that may be left out, lists and dicts are compared element by element,
parallel calls may come in any order (matched greedily, as BFCL does), an irrelevance question
is answered correctly by making no call at all and a relevance question by making one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune.config import TaskTier
from tooltune.jsonl import read_jsonl
from tooltune.tasks.task import Task

_STRIP = re.compile(r"[ ,./\-_*^]")
_TYPE_NAMES = {
    "string": "string",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "boolean": "boolean",
    "array": "array",
    "tuple": "array",
    "dict": "object",
    "object": "object",
}


@dataclass
class BFCLQuestion:
    id: str
    messages: list[dict]  # the first turn's messages
    functions: list[dict]
    ground_truth: list[dict] | None = None  # None when no possible answer is known
    category: str = ""
    turns: list[list[dict]] = field(default_factory=list)

    @property
    def irrelevant(self) -> bool:
        """An irrelevance question: the correct answer is to call nothing."""
        return "irrelevance" in self.category or self.ground_truth == []


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    for number, row in read_jsonl(path):
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{path}:{number}: expected a JSON object with an 'id'")
        rows.append(row)
    return rows


def category_of(question_id: str) -> str:
    """`parallel_multiple_12` -> `parallel_multiple`; `simple_python_3` -> `simple_python`."""
    return re.sub(r"_\d+$", "", question_id)


def load_questions(path: str | Path, answers_path: str | Path | None = None) -> list[BFCLQuestion]:
    """Questions of one BFCL file, joined with their possible answers when a path is given."""
    answers = {}
    if answers_path is not None:
        answers = {row["id"]: row.get("ground_truth") for row in _read_jsonl(answers_path)}
    questions = []
    for row in _read_jsonl(path):
        turns = row.get("question")
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{path}: question {row['id']} has no turns")
        if isinstance(turns[0], dict):  # older files: a flat list of messages
            turns = [turns]
        functions = row.get("function") or []
        if isinstance(functions, dict):
            functions = [functions]
        qid = str(row["id"])
        questions.append(
            BFCLQuestion(
                id=qid,
                messages=list(turns[0]),
                functions=list(functions),
                ground_truth=answers.get(qid),
                category=category_of(qid),
                turns=turns,
            )
        )
    return questions


def load_predictions(path: str | Path) -> dict[str, list[dict]]:
    """`{"id", "calls": [{"name", "arguments"}]}` lines -> {id: calls}."""
    out = {}
    for row in _read_jsonl(path):
        calls = row.get("calls", [])
        out[str(row["id"])] = calls if isinstance(calls, list) else []
    return out


def to_openai_tool(function: dict) -> dict:
    """A BFCL function doc as an OpenAI `tools` entry with standard JSON Schema types."""
    return {
        "type": "function",
        "function": {
            "name": function["name"],
            "description": function.get("description", ""),
            "parameters": _standard_schema(function.get("parameters") or {"type": "dict"}),
        },
    }


def _standard_schema(schema: dict) -> dict:
    out = {k: v for k, v in schema.items() if k not in ("type", "properties", "items")}
    kind = schema.get("type")
    if isinstance(kind, list):  # JSON Schema's union of types
        out["type"] = [_TYPE_NAMES.get(k, k) for k in kind]
    elif kind in _TYPE_NAMES:
        out["type"] = _TYPE_NAMES[kind]
    if "properties" in schema:
        out["properties"] = {k: _standard_schema(v) for k, v in schema["properties"].items()}
    if "items" in schema and isinstance(schema["items"], dict):
        out["items"] = _standard_schema(schema["items"])
    return out


def question_tier(question: BFCLQuestion) -> TaskTier:
    if question.irrelevant:  # the right answer calls nothing, as in the built-in no-tool tier
        return TaskTier.NO_TOOL
    return TaskTier.MULTI_TOOL_PAR if "parallel" in question.category else TaskTier.SIMPLE


def load_tasks(path: str | Path, answers_path: str | Path | None = None) -> list:
    """BFCL questions as `Task`s: the check spec is the BFCL ground truth, the tools are the
    question's functions (kept as docs in metadata, since they have no implementation)."""
    tasks = []
    for q in load_questions(path, answers_path):
        user = "\n".join(m.get("content", "") for m in q.messages if m.get("role") == "user")
        minimal = [
            {"name": name, "arguments": reference_arguments(params, _required(q.functions, name))}
            for call in q.ground_truth or []
            for name, params in call.items()
        ]
        tasks.append(
            Task(
                id=f"bfcl-{q.id}",
                prompt=user,
                tier=question_tier(q),
                tools=[f["name"] for f in q.functions],
                answer=q.ground_truth,
                check={
                    "type": "bfcl",
                    "functions": q.functions,
                    "ground_truth": q.ground_truth,
                    "category": q.category,
                },  # fmt: skip
                minimal_calls=minimal,
                split="bfcl",
                metadata={
                    "bfcl_id": q.id,
                    "messages": q.messages,
                    "openai_tools": [to_openai_tool(f) for f in q.functions],
                },  # fmt: skip
            )
        )
    return tasks


# --------------------------------------------------------------------------------------------
# Reference answers
# --------------------------------------------------------------------------------------------


def _first_allowed(allowed: list) -> tuple[bool, Any]:
    """(present, value): the first allowed value other than "" (the marker of an optional
    parameter); absent when "" is the only one."""
    for value in allowed:
        if value != "":
            return True, _materialize(value)
    return False, None


def _materialize(value: Any) -> Any:
    """A possible-answer value with nested dicts of allowed lists turned into concrete values."""
    if isinstance(value, dict):
        out = {}
        for key, allowed in value.items():
            if isinstance(allowed, list):
                present, v = _first_allowed(allowed)
                if present:
                    out[key] = v
            else:
                out[key] = _materialize(allowed)
        return out
    if isinstance(value, list):
        return [_materialize(v) for v in value]
    return value


def reference_arguments(
    params: dict[str, list], required: list[str] | None = None
) -> dict[str, Any]:
    """The arguments of a ground-truth call: the first allowed value of each parameter, leaving
    out the optional ones ("" among the allowed values, and not `required` by the schema). A
    required parameter whose only allowed value is "" gets "" (the empty string BFCL accepts)."""
    out = {}
    for name, allowed in params.items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if "" in allowed and name not in (required or []):
            continue
        present, value = _first_allowed(allowed)
        if present:
            out[name] = value
        elif "" in allowed:
            out[name] = ""
    return out


def _required(functions: list[dict], name: str) -> list[str]:
    doc = next((f for f in functions if _names_match(f.get("name", ""), name)), None)
    return list(((doc or {}).get("parameters") or {}).get("required", []))


def reference_predictions(questions: list[BFCLQuestion]) -> list[dict]:
    """Predictions made from the possible answers themselves (must score 100%)."""
    out = []
    for q in questions:
        calls = [
            {"name": name, "arguments": reference_arguments(params, _required(q.functions, name))}
            for call in q.ground_truth or []
            for name, params in call.items()
        ]
        out.append({"id": q.id, "calls": calls})
    return out


# --------------------------------------------------------------------------------------------
# The AST checker
# --------------------------------------------------------------------------------------------
#
# The rules are BFCL's (its `ast_checker`, Python categories), including its quirks, so that
# a score here means what it means on the leaderboard; tests/tasks/test_bfcl_agreement.py
# compares the two entry by entry. In short, for each argument:
#   * its type must be the declared one (an int stands for a float), or else the type of the
#     possible answers: BFCL writes a variable name as a string where the schema says e.g.
#     `array`, and the argument is then that variable ("variable reference");
#   * an array's items must have the declared item type, or the type of the items the
#     possible answer lists; a possible answer that is not a list (the optional marker "")
#     lets any items through;
#   * its value must be one of the possible answers: strings (also inside arrays and one level
#     of dicts) compared in `normalize_string` form; a variable reference, numbers and booleans
#     with Python's `==` (so 1 == 1.0 == True); arrays element by element in order; dicts key
#     by key one level deep, nested values with `==`.
# Deliberate differences: a function name may come back with its dots written as underscores
# (BFCL accepts that only for models it flags so); schema types BFCL does not use ("number",
# "object") are read as JSON Schema's, an unknown one is not type-checked (BFCL would fail).

_PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "number": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "object": dict,
    "any": str,
}
_TYPE_WORDS = {str: "string", int: "integer", float: "float", bool: "boolean", list: "array",
               dict: "dict", type(None): "null"}  # fmt: skip


def normalize_string(text: str) -> str:
    """BFCL's string comparison form: lower case, no spaces or , . / - _ * ^, one quote kind."""
    return _STRIP.sub("", text).lower().replace("'", '"')


def _json_type(value: Any) -> str:
    return _TYPE_WORDS.get(type(value), type(value).__name__)


def _answer_type(allowed: Any) -> type | None:
    """The type of the first possible answer other than the optional marker ""."""
    return next((type(a) for a in _items(allowed) if a != ""), None)


def _items(container: Any) -> list:
    """The elements BFCL iterates over: a list's items, a string's characters, else none."""
    return list(container) if isinstance(container, list | str) else []


def _norm(value: Any) -> Any:
    return normalize_string(value) if type(value) is str else value


def _type_problem(value: Any, allowed: list, declared: type, item_type: type | None,
                  where: str) -> tuple[str | None, bool]:  # fmt: skip
    """(problem, variable): whether `value` has an acceptable type, and whether the possible
    answers are a variable reference (their type is not the declared one)."""
    answer_type = _answer_type(allowed)
    variable = answer_type is not None and answer_type is not declared
    if type(value) is declared:
        if item_type is None or _items_fit(value, allowed, item_type):
            return None, variable
        bad = next((i for i, item in enumerate(value) if type(item) is not item_type), None)
        if bad is None:  # no possible answer at all
            return f"no possible answer for the items of {where}", variable
        expected = _TYPE_WORDS.get(item_type)
        got = _json_type(value[bad])
        return f"wrong type for {where}[{bad}]: expected {expected}, got {got}", variable
    if answer_type is not None and type(value) is answer_type:
        return None, True
    return (
        f"wrong type for {where}: expected {_TYPE_WORDS.get(declared)}, got {_json_type(value)}",
        variable,
    )


def _items_fit(value: list, allowed: list, item_type: type) -> bool:
    """Every item has the declared item type or that of some possible answer's items."""
    for candidate in allowed:
        if not isinstance(candidate, list):
            return True
        listed = _answer_type(candidate)
        if all(type(item) is item_type or type(item) is listed for item in value):
            return True
    return False


def _dict_fits(value: dict, candidate: Any) -> bool:
    """One level of a dict argument against one possible dict (keys map to allowed lists)."""
    if not isinstance(candidate, dict):
        return False
    for key, item in value.items():
        if key not in candidate or _norm(item) not in [_norm(a) for a in _items(candidate[key])]:
            return False
    return all(
        key in value or (isinstance(allowed, list | str) and "" in allowed)
        for key, allowed in candidate.items()
    )


def _list_fits(value: list, candidate: Any) -> bool:
    """An array against one possible array, in order (a string candidate is its characters)."""
    if not isinstance(candidate, list | str):
        return False
    return [_norm(v) for v in value] == [_norm(a) for a in _items(candidate)]


def _dicts_fit(value: list, candidate: Any) -> bool:
    """A list of dicts against one possible list of dicts, in order."""
    if not isinstance(candidate, list | str) or len(value) != len(candidate):
        return False
    if isinstance(candidate, str):
        return not value  # the optional marker "" stands for an empty list
    return all(
        isinstance(v, dict) and candidate[i] != "" and _dict_fits(v, candidate[i])
        for i, v in enumerate(value)
    )


def _value_problem(param: str, value: Any, schema: dict, allowed: list) -> str | None:
    """Why `value` is not an acceptable argument for `param` (None when it is)."""
    declared_name = schema.get("type")
    declared = _PYTHON_TYPES.get(declared_name) if isinstance(declared_name, str) else None
    if declared is None:  # not a type BFCL uses: only the value counts
        return None if value in allowed else _wrong_value(param, value, allowed)
    item_type = None
    if declared is list and isinstance(schema.get("items"), dict):
        item_type = _PYTHON_TYPES.get(schema["items"].get("type"))
    if declared is float and type(value) is int:
        value = float(value)
    problem, variable = _type_problem(value, allowed, declared, item_type, repr(param))
    if problem:
        return problem
    if variable:
        fits = value in allowed
    elif declared is dict:
        fits = any(a != "" and _dict_fits(value, a) for a in allowed)
    elif declared is list and item_type is dict:
        fits = any(_dicts_fit(value, a) for a in allowed)
    elif declared is str:
        fits = normalize_string(value) in [normalize_string(a) for a in allowed if type(a) is str]
    elif declared is list:
        fits = any(_list_fits(value, a) for a in allowed)
    else:
        fits = value in allowed
    return None if fits else _wrong_value(param, value, allowed)


def _wrong_value(param: str, value: Any, allowed: list) -> str:
    shown = [a for a in allowed if a != ""]
    return f"wrong value for {param!r}: {value!r} is not one of {shown!r}"


def _names_match(predicted: str, expected: str) -> bool:
    """Exact, or equal once dots become underscores (models that cannot emit dotted names)."""
    return predicted == expected or predicted.replace(".", "_") == expected.replace(".", "_")


def _find_doc(functions: list[dict], name: str) -> dict | None:
    exact = next((f for f in functions if f.get("name") == name), None)
    return exact or next((f for f in functions if _names_match(f.get("name", ""), name)), None)


def check_call(
    call: dict, expected_name: str, expected: dict[str, list], functions: list[dict]
) -> list[str]:
    """Reasons why one predicted call does not match one ground-truth call ([] when it does)."""
    if not isinstance(call, dict):
        return ["a call must be an object with name and arguments"]
    if call.get("parse_error"):
        return [f"malformed call: {call['parse_error']}"]
    name = call.get("name")
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return [f"arguments of {name} are not valid JSON"]
    if not isinstance(name, str) or not _names_match(name, expected_name):
        return [f"wrong function name: expected {expected_name}, got {name}"]
    if not isinstance(arguments, dict):
        return [f"arguments of {name} must be an object"]
    schema = (_find_doc(functions, expected_name) or {}).get("parameters") or {}
    properties = schema.get("properties", {})
    reasons = [
        f"missing required parameter {required!r}"
        for required in schema.get("required", [])
        if required not in arguments
    ]
    for param, value in arguments.items():
        if param not in properties or param not in expected:
            reasons.append(f"unexpected parameter {param!r}")
            continue
        allowed = expected[param] if isinstance(expected[param], list) else [expected[param]]
        problem = _value_problem(param, value, properties[param], allowed)
        if problem:
            reasons.append(problem)
    for param, allowed in expected.items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if param not in arguments and "" not in allowed and param not in schema.get("required", []):
            reasons.append(f"missing parameter {param!r} (it is not optional)")
    return reasons


def _is_call(call: Any) -> bool:
    """A well-formed call: an object with a non-empty name and no parse error."""
    return isinstance(call, dict) and bool(call.get("name")) and not call.get("parse_error")


def check_question(question: BFCLQuestion, calls: list[dict]) -> list[str]:
    """Reasons why the predicted calls do not answer `question` ([] when it does).

    As in BFCL, the category decides the rule: `irrelevance` wants no call (a malformed one
    counts as a call), `relevance` at least one well-formed call, `parallel` the ground-truth
    calls in any order, `multiple` one call to the ground-truth function, and the rest exactly
    one call to the question's first function."""
    category = question.category
    if question.irrelevant:
        return [] if not calls else [f"expected no function call, got {len(calls)}"]
    if "relevance" in category:
        return [] if any(_is_call(c) for c in calls) else ["expected a function call, got none"]
    truth = question.ground_truth
    if truth is None:
        return ["no possible answer for this question"]
    if len(calls) != len(truth):
        return [f"wrong number of calls: expected {len(truth)}, got {len(calls)}"]
    expected = [next(iter(c.items())) for c in truth]
    if "parallel" in category:
        return _match_parallel(calls, expected, question.functions)
    if "multiple" in category or not question.functions:
        name, params = expected[0]
    else:  # a simple question: its one function, with the ground truth's arguments
        name, params = question.functions[0].get("name", ""), expected[0][1]
    return check_call(calls[0], name, params, question.functions)


def _match_parallel(
    calls: list[dict], expected: list[tuple[str, dict]], functions: list[dict]
) -> list[str]:
    """BFCL's parallel matching: each ground-truth call in turn takes the first call not yet
    taken that fits it. Greedy, like BFCL: a call that fits two ground-truth calls goes to the
    first, even where another assignment would match them all."""
    taken: set[int] = set()
    for j, (name, params) in enumerate(expected):
        left = [i for i in range(len(calls)) if i not in taken]
        problems = [check_call(calls[i], name, params, functions) for i in left]
        match = next((i for i, p in zip(left, problems, strict=True) if not p), None)
        if match is None:
            best = min(problems, key=len) if problems else ["no call left"]
            return [f"no call matches ground-truth call {j + 1} ({name}): " + "; ".join(best)]
        taken.add(match)
    return []


def check_predictions(
    questions: list[BFCLQuestion], answers: list[dict] | None, predictions: list[dict] | dict
) -> dict[str, Any]:
    """Score predictions: {"accuracy", "n", "correct", "entries": [{"id", "valid", "reasons"}]}.

    `answers` (possible-answer rows) override the questions' own ground truth when given;
    `predictions` are rows `{"id", "calls"}` or a mapping id -> calls."""
    if answers is not None:
        truth = {row["id"]: row.get("ground_truth") for row in answers}
        for q in questions:
            if q.id in truth:
                q.ground_truth = truth[q.id]
    if isinstance(predictions, list):
        predictions = {
            str(p.get("id")): p.get("calls", []) for p in predictions if isinstance(p, dict)
        }
    entries = []
    for q in questions:
        if q.id not in predictions:
            entries.append({"id": q.id, "valid": False, "reasons": ["no prediction for this id"]})
            continue
        calls = predictions[q.id]
        reasons = check_question(q, calls if isinstance(calls, list) else [])
        entries.append({"id": q.id, "valid": not reasons, "reasons": reasons})
    correct = sum(e["valid"] for e in entries)
    return {
        "accuracy": correct / len(entries) if entries else 0.0,
        "n": len(entries),
        "correct": correct,
        "entries": entries,
    }


def check_files(
    questions_path: str | Path, answers_path: str | Path | None, predictions_path: str | Path
) -> dict:
    """`tooltune bfcl check`: score a predictions file against a question and answer file."""
    questions = load_questions(questions_path, answers_path)
    return check_predictions(questions, None, load_predictions(predictions_path))
