"""Berkeley Function Calling Leaderboard (BFCL) questions and its AST checker.

A BFCL question file is JSON lines with `id`, `question` (a list of turns, each a list of chat
messages) and `function` (function docs whose JSON-Schema-like `parameters` use `"type": "dict"`
for objects and `integer`/`float`/`string`/`boolean`/`array`/`tuple`/`dict`/`any`). A possible-
answer file gives, per id, `ground_truth`: a list of `{function name: {param: [allowed values]}}`.

The checker follows BFCL's AST rules: the function name must match, required parameters must be
present, no unknown parameters, types must fit (an int is accepted for a float), every value must
be one of the allowed values (strings compared case-, whitespace- and punctuation-insensitively),
an allowed value of "" marks a parameter that may be left out, lists and dicts are compared
element by element, parallel calls may come in any order (each ground-truth call used once), and
an irrelevance question is answered correctly by making no call at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune.config import TaskTier

_STRIP = re.compile(r"[\s,./\-_*^]")
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
        return self.category.startswith("irrelevance") or self.ground_truth == []


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
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
    if kind in _TYPE_NAMES:
        out["type"] = _TYPE_NAMES[kind]
    if "properties" in schema:
        out["properties"] = {k: _standard_schema(v) for k, v in schema["properties"].items()}
    if "items" in schema and isinstance(schema["items"], dict):
        out["items"] = _standard_schema(schema["items"])
    return out


def question_tier(question: BFCLQuestion) -> TaskTier:
    return TaskTier.MULTI_TOOL_PAR if "parallel" in question.category else TaskTier.SIMPLE


def load_tasks(path: str | Path, answers_path: str | Path | None = None) -> list:
    """BFCL questions as `Task`s: the check spec is the BFCL ground truth, the tools are the
    question's functions (kept as docs in metadata, since they have no implementation)."""
    from tooltune.tasks import Task

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
    out the optional ones ("" among the allowed values, and not `required` by the schema)."""
    out = {}
    for name, allowed in params.items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if "" in allowed and name not in (required or []):
            continue
        present, value = _first_allowed(allowed)
        if present:
            out[name] = value
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


def normalize_string(text: str) -> str:
    """BFCL's string comparison form: lower case, no whitespace or , . / - _ * ^, one quote kind."""
    return _STRIP.sub("", text).lower().replace("'", '"')


def _type_error(value: Any, schema: dict, where: str) -> str | None:
    kind = schema.get("type", "any")
    if kind == "any" or kind is None:
        return None
    ok = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list | tuple),
        "tuple": lambda v: isinstance(v, list | tuple),
        "dict": lambda v: isinstance(v, dict),
        "object": lambda v: isinstance(v, dict),
    }.get(kind)
    if ok is None:
        return None  # a type name BFCL does not use: nothing to check
    if not ok(value):
        return f"wrong type for {where}: expected {kind}, got {_json_type(value)}"
    if kind in ("array", "tuple") and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problem = _type_error(item, schema["items"], f"{where}[{i}]")
            if problem:
                return problem
    if kind in ("dict", "object") and isinstance(schema.get("properties"), dict):
        for key, item in value.items():
            sub = schema["properties"].get(key)
            if sub is not None:
                problem = _type_error(item, sub, f"{where}.{key}")
                if problem:
                    return problem
    return None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "dict"
    return "null" if value is None else type(value).__name__


def _same(value: Any, expected: Any) -> bool:
    """`value` equals one concrete possible answer (`expected`), BFCL-style."""
    if isinstance(expected, dict):  # a nested dict: each key maps to a list of allowed values
        if not isinstance(value, dict):
            return False
        for key in value:
            if key not in expected:
                return False
        for key, allowed in expected.items():
            allowed = allowed if isinstance(allowed, list) else [allowed]
            if key not in value:
                if "" not in allowed:
                    return False
            elif not _allowed(value[key], allowed):
                return False
        return True
    if isinstance(expected, list):
        if not isinstance(value, list | tuple) or len(value) != len(expected):
            return False
        return all(_same(v, e) for v, e in zip(value, expected, strict=True))
    if isinstance(expected, str):
        return isinstance(value, str) and normalize_string(value) == normalize_string(expected)
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(expected, int | float):
        return isinstance(value, int | float) and float(value) == float(expected)
    return value == expected


def _allowed(value: Any, allowed: list) -> bool:
    return any(
        _same(value, candidate) for candidate in allowed if not (candidate == "" and value != "")
    )


def _names_match(predicted: str, expected: str) -> bool:
    """Exact, or equal once dots become underscores (models that cannot emit dotted names)."""
    return predicted == expected or predicted.replace(".", "_") == expected.replace(".", "_")


def check_call(
    call: dict, expected_name: str, expected: dict[str, list], functions: list[dict]
) -> list[str]:
    """Reasons why one predicted call does not match one ground-truth call ([] when it does)."""
    if not isinstance(call, dict):
        return ["a call must be an object with name and arguments"]
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
    doc = next((f for f in functions if _names_match(f.get("name", ""), expected_name)), None)
    schema = (doc or {}).get("parameters") or {}
    properties = schema.get("properties", {})
    reasons = []
    for required in schema.get("required", []):
        if required not in arguments:
            reasons.append(f"missing required parameter {required!r}")
    for param, value in arguments.items():
        if param not in properties or param not in expected:
            reasons.append(f"unexpected parameter {param!r}")
            continue
        problem = _type_error(value, properties[param], repr(param))
        if problem:
            reasons.append(problem)
            continue
        allowed = expected[param] if isinstance(expected[param], list) else [expected[param]]
        if not _allowed(value, allowed):
            shown = [a for a in allowed if a != ""]
            reasons.append(f"wrong value for {param!r}: {value!r} is not one of {shown!r}")
    for param, allowed in expected.items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if param not in arguments and "" not in allowed and param not in schema.get("required", []):
            reasons.append(f"missing parameter {param!r} (it is not optional)")
    return reasons


def check_question(question: BFCLQuestion, calls: list[dict]) -> list[str]:
    """Reasons why the predicted calls do not answer `question` ([] when they do)."""
    truth = question.ground_truth
    if question.irrelevant:
        return [] if not calls else [f"expected no function call, got {len(calls)}"]
    if truth is None:
        return ["no possible answer for this question"]
    if len(calls) != len(truth):
        return [f"wrong number of calls: expected {len(truth)}, got {len(calls)}"]
    expected = [next(iter(c.items())) for c in truth]
    if len(expected) == 1:
        name, params = expected[0]
        return check_call(calls[0], name, params, question.functions)
    return _match_parallel(calls, expected, question.functions)


def _match_parallel(
    calls: list[dict], expected: list[tuple[str, dict]], functions: list[dict]
) -> list[str]:
    """Match calls to ground-truth calls in any order, each used once (bipartite matching)."""
    fits = [
        [not check_call(call, name, params, functions) for name, params in expected]
        for call in calls
    ]
    owner: dict[int, int] = {}  # ground-truth index -> call index

    def assign(i: int, seen: set[int]) -> bool:
        for j, ok in enumerate(fits[i]):
            if ok and j not in seen:
                seen.add(j)
                if j not in owner or assign(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(calls)):
        assign(i, set())
    if len(owner) == len(expected):
        return []
    reasons = []
    for j, (name, params) in enumerate(expected):
        if j in owner:
            continue
        used = set(owner.values())
        # explain with the closest unmatched call of the same name
        candidates = [i for i in range(len(calls)) if i not in used] or list(range(len(calls)))
        best = min((check_call(calls[i], name, params, functions) for i in candidates), key=len)
        reasons.append(f"no call matches ground-truth call {j + 1} ({name}): " + "; ".join(best))
    return reasons


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


# --------------------------------------------------------------------------------------------
# Asking a policy
# --------------------------------------------------------------------------------------------


def question_prompt(question: BFCLQuestion, tool_style: str = "json") -> str:
    """The rendered prompt for one question (system prompt with its functions, then the turn)."""
    from tooltune.chat_format import build_system_prompt, render_prompt

    system = build_system_prompt([to_openai_tool(f) for f in question.functions], style=tool_style)
    messages = [{"role": "system", "content": system}]
    messages += [{"role": m["role"], "content": m.get("content", "")} for m in question.messages]
    return render_prompt(messages)


def predict(policy: Any, questions: list[BFCLQuestion], sampling: Any = None, batch_size: int = 16,
            tool_style: str = "json") -> list[dict]:  # fmt: skip
    """One assistant turn per question from `policy`; its parsed calls are the prediction."""
    from tooltune.chat_format import parse_action
    from tooltune.rollout import SamplingParams

    sampling = sampling or SamplingParams(temperature=0.0)
    out = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        completions = policy.generate([question_prompt(q, tool_style) for q in batch], sampling)
        for q, completion in zip(batch, completions, strict=True):
            action = parse_action(completion.text)
            calls = [
                {"name": c.name, "arguments": c.arguments}
                for c in action.tool_calls
                if not c.parse_error
            ]
            out.append({"id": q.id, "calls": calls})
    return out
