"""tooltune's BFCL checker against BFCL's own, entry by entry, where `bfcl_eval` is installed.

Every Python AST category the package ships (its questions and possible answers) is checked with
the ground truth and with perturbed predictions of every entry; the two checkers must give the
same verdict on each. The Java and JavaScript categories are left out: their answers are source
text that BFCL converts with its own parsers, which tooltune does not implement.

bfcl-eval's model registry imports every provider's SDK; its checker reads the registry only for
function names with dots, so where those SDKs are absent a stub registry stands in (every model
keeps dotted names). To run this without touching the project's environment:

    .venv/bin/pip download bfcl-eval --no-deps -d /tmp/bfcl
    .venv/bin/pip install --no-deps --target /tmp/bfcl_site /tmp/bfcl/bfcl_eval-*.whl
    PYTHONPATH=/tmp/bfcl_site .venv/bin/python -m pytest -s tests/tasks/test_bfcl_agreement.py
"""

from __future__ import annotations

import copy
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tooltune.tasks import bfcl

bfcl_eval = pytest.importorskip("bfcl_eval")

AST_CATEGORIES = [
    "simple_python", "multiple", "parallel", "parallel_multiple",
    "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
]  # fmt: skip


class _KeepDots:
    underscore_to_dot = False


class _StubRegistry(dict):
    def __missing__(self, key: str) -> _KeepDots:
        return _KeepDots()


@pytest.fixture(scope="module")
def bfcl_checker() -> Iterator[tuple[Any, Any, str]]:
    """(ast_checker, Language, model name) from the installed bfcl_eval."""
    name = "bfcl_eval.eval_checker.ast_eval.ast_checker"
    with pytest.MonkeyPatch.context() as patch:
        try:
            from bfcl_eval.constants import model_config

            model = next(
                (key.replace("/", "_")
                 for key, value in model_config.MODEL_CONFIG_MAPPING.items()
                 if not value.underscore_to_dot and "_" not in key),
                None,
            )  # fmt: skip
        except ImportError:  # a provider SDK is missing
            model = None
        if model is None:  # the stub registry
            stub = types.ModuleType("bfcl_eval.constants.model_config")
            stub.MODEL_CONFIG_MAPPING = _StubRegistry()
            patch.setitem(sys.modules, stub.__name__, stub)
            model = "stub-model"
        patch.delitem(sys.modules, name, raising=False)
        from bfcl_eval.constants.enums import Language
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

        yield ast_checker, Language, model
        patch.delitem(sys.modules, name, raising=False)


def _data_dir() -> Path:
    return Path(bfcl_eval.__file__).parent / "data"


# --------------------------------------------------------------------------------------------
# Perturbed predictions
# --------------------------------------------------------------------------------------------


def _wrong_value(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + (1 if isinstance(value, int) else 0.5)
    if isinstance(value, str):
        return value + " zz"
    if isinstance(value, list):
        return value + [value[0]] if value else ["zz"]
    if isinstance(value, dict):
        return {**value, "zz": 1}
    return "zz"


def _wrong_type(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, dict):
        return [value]
    return str(value)


def _wrong_item_types(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        return None
    return [1 if isinstance(v, str) else str(v) for v in value]


def _swap_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if isinstance(value, int) else int(value)


def _shout(value: Any) -> Any:
    if isinstance(value, str):
        return value.upper() + " "
    if isinstance(value, list) and any(isinstance(v, str) for v in value):
        return [v.upper() if isinstance(v, str) else v for v in value]
    return None


def _with(calls: list[dict], index: int, arguments: dict, name: str | None = None) -> list[dict]:
    out = copy.deepcopy(calls)
    if name is not None:
        out[index]["name"] = name
    out[index]["arguments"] = arguments
    return out


def variants(question: bfcl.BFCLQuestion) -> Iterator[tuple[str, list[dict]]]:
    """(kind, calls): the ground truth, its other possible answers, and perturbations of it."""
    truth = bfcl.reference_predictions([question])[0]["calls"]
    yield "truth", truth
    if len(truth) > 1:
        yield "reversed order", truth[::-1]
        yield "call dropped", truth[:-1]
    yield "call repeated", truth + truth[:1]
    for i, call in enumerate(truth):
        args = call["arguments"]
        yield "wrong function name", _with(truth, i, args, call["name"] + "_zz")
        yield "extra argument", _with(truth, i, {**args, "zz_extra": 1})
        for param, value in args.items():
            rest = {k: v for k, v in args.items() if k != param}
            yield "argument dropped", _with(truth, i, rest)
            yield "wrong value", _with(truth, i, {**rest, param: _wrong_value(value)})
            yield "wrong type", _with(truth, i, {**rest, param: _wrong_type(value)})
            for kind, change in (("item types", _wrong_item_types), ("int/float", _swap_number),
                                 ("case and spaces", _shout)):  # fmt: skip
                changed = change(value)
                if changed is not None:
                    yield kind, _with(truth, i, {**rest, param: changed})
        # every other possible answer of each parameter (and the optional ones given)
        expected = next(iter(question.ground_truth[i].values()))
        for param, allowed in expected.items():
            for value in allowed[1:] if isinstance(allowed, list) else []:
                if value != "":
                    other = {**args, param: bfcl.reference_arguments({param: [value]})[param]}
                    yield "other possible answer", _with(truth, i, other)


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------


def compare(category: str, checker: Any, bfcl_checker: tuple[Any, Any, str]) -> dict[str, Any]:
    """Verdicts of `checker` (a module with `check_question`) and BFCL's on every variant."""
    ast_checker, language, model = bfcl_checker
    data = _data_dir()
    questions = bfcl.load_questions(
        data / f"BFCL_v4_{category}.json", data / "possible_answer" / f"BFCL_v4_{category}.json"
    )
    counts = {"entries": len(questions), "checks": 0, "accepted": 0, "bfcl_errors": 0}
    disagreements = []
    for q in questions:
        for kind, calls in variants(q):
            output = [{c["name"]: copy.deepcopy(c["arguments"])} for c in calls]
            try:
                theirs = ast_checker(q.functions, output, q.ground_truth, language.PYTHON,
                                     category, model)["valid"]  # fmt: skip
            except Exception:  # BFCL's checker fails on some malformed values
                counts["bfcl_errors"] += 1
                continue
            ours = not checker.check_question(q, copy.deepcopy(calls))
            counts["checks"] += 1
            counts["accepted"] += theirs
            if ours != theirs:
                disagreements.append({"id": q.id, "kind": kind, "bfcl": theirs, "calls": calls})
    counts["disagreements"] = len(disagreements)
    counts["examples"] = disagreements[:5]
    return counts


@pytest.mark.parametrize("category", AST_CATEGORIES)
def test_checker_agrees_with_bfcl_on_every_entry(category, bfcl_checker):
    result = compare(category, bfcl, bfcl_checker)
    print(
        f"\n{category}: {result['entries']} entries, {result['checks']} checks "
        f"({result['accepted']} accepted by BFCL), {result['disagreements']} disagreements, "
        f"{result['bfcl_errors']} variants BFCL's checker fails on"
    )
    assert result["entries"] > 0 and result["checks"] >= result["entries"]
    assert result["disagreements"] == 0, json.dumps(result["examples"], indent=1)[:4000]
