"""`tooltune bfcl run`: ask a model the questions of one BFCL category and score its calls.

Each question is rendered in tooltune's chat format with its functions listed in the model's
tool style, answered in one greedy assistant turn (batched), and its `<tool_call>`s parsed with
the project's parser. A model of the ``native`` tool style is asked through its own chat
template instead (the functions as the template's ``tools``), and its calls are read in that
template's format (`tooltune.native_template`). The predictions are written in `tooltune bfcl
check`'s format and scored by the same checker, which follows BFCL's AST rules (see
`tooltune.tasks.bfcl`).

A malformed call (not JSON, no name, arguments not an object, cut off) is kept in the
prediction with its `parse_error`: it is a wrong answer in every category, including
`irrelevance`, where trying to call a tool is the mistake being measured. (BFCL's own harness
counts a reply it cannot decode as "no call" there; a model of ours marks a call explicitly.)
"""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tooltune.call_grammar import CallGrammar
from tooltune.native_template import NATIVE, NativeTemplate, template_of
from tooltune.rollout import accepts_keyword
from tooltune.tasks.bfcl import BFCLQuestion, check_predictions, load_questions, to_openai_tool

# `--category` name -> the name in BFCL's file names
CATEGORIES = {
    "simple": "simple_python",
    "multiple": "multiple",
    "parallel": "parallel",
    "parallel_multiple": "parallel_multiple",
    "irrelevance": "irrelevance",
    "live_simple": "live_simple",
    "live_multiple": "live_multiple",
    "live_parallel": "live_parallel",
    "live_parallel_multiple": "live_parallel_multiple",
    "live_irrelevance": "live_irrelevance",
    "live_relevance": "live_relevance",
}
HF_TOOL_STYLE = "compact"  # a Hugging Face model without a saved format: short signatures
BUILTIN_TOOL_STYLE = "names"  # the built-in model's default in the pipeline
# Questions generated together: on a 2-core CPU in fp32, 32 answered a category 1.35-1.5x as
# fast as 8 with the same predictions, for ~0.7 GB more memory (benchmarks/RESULTS.md, BFCL)
BATCH_SIZE = 32


@dataclass
class RunResult:
    """What one `bfcl run` measured; `entries` are the checker's verdicts, one per question."""

    category: str
    model: str
    tool_style: str
    accuracy: float
    n: int
    correct: int
    malformed: int  # entries with at least one malformed call
    cut_off: int  # entries whose reply ran out of tokens (or whose prompt did not fit)
    predictions: str | None  # where they were written
    entries: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        line = (
            f"bfcl {self.category}: accuracy {self.accuracy:.1%} ({self.correct}/{self.n} entries)"
            f", model {self.model}, tool style {self.tool_style}"
        )
        if self.malformed or self.cut_off:
            line += f"; {self.malformed} with a malformed call, {self.cut_off} cut off"
        return line


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def default_data_dir() -> Path | None:
    """The data folder of the installed `bfcl-eval` package (found without importing it)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data if data.is_dir() else None


def category_files(data: Path, category: str) -> tuple[Path, Path | None]:
    """(questions, possible answers) of a category in a folder in BFCL's layout. Relevance
    categories have no answers; the others must. Raises ValueError saying what is missing."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    name = CATEGORIES[category]
    # the name exactly: a glob `BFCL_v*_multiple.json` also matches `BFCL_v4_live_multiple.json`
    # and `BFCL_v4_parallel_multiple.json`
    exact = re.compile(rf"BFCL_v\d+_{re.escape(name)}\.json")
    found = sorted((p for p in data.glob("BFCL_v*.json") if exact.fullmatch(p.name)), key=_version)
    if not found:
        raise ValueError(f"no questions for category {category} in {data} (BFCL_v4_{name}.json)")
    questions = found[-1]
    answers = data / "possible_answer" / questions.name
    if "relevance" in name:
        return questions, None
    if not answers.is_file():
        raise ValueError(f"category {category} has no possible answers: {answers} is missing")
    return questions, answers


def _version(path: Path) -> int:
    match = re.match(r"BFCL_v(\d+)_", path.name)
    return int(match.group(1)) if match else 0


def load_category(data: Path, category: str, limit: int | None = None) -> list[BFCLQuestion]:
    questions_path, answers_path = category_files(data, category)
    questions = load_questions(questions_path, answers_path)
    if answers_path is not None:
        missing = [q.id for q in questions if q.ground_truth is None]
        if missing:
            raise ValueError(
                f"{answers_path} has no possible answer for {len(missing)} question(s), "
                f"e.g. {missing[0]}"
            )
    return questions[:limit] if limit else questions


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def load_model(spec: str, questions: list[BFCLQuestion], device: str = "", seed: int = 0):
    """(policy, default tool style) for `--model`: `builtin` (a fresh, untrained built-in
    model, the floor), `smollm2-135m`, a `tooltune demo` run directory (its latest checkpoint)
    or a saved model directory."""
    if spec == "builtin":
        from tooltune.policies import BuiltinPolicy

        texts = [question_prompt(q, BUILTIN_TOOL_STYLE) for q in questions]
        longest = max((len(t) for t in texts), default=0)
        policy = BuiltinPolicy.create(texts, size="tiny", seed=seed, vocab_size=1024,
                                      max_seq_len=max(2048, longest + 1024))  # fmt: skip
        return policy, BUILTIN_TOOL_STYLE
    from tooltune.policies.hf import default_device

    if spec == "smollm2-135m":
        from tooltune.policies import HFPolicy, load_smollm2

        policy = HFPolicy.from_pretrained(load_smollm2(), dtype="auto", device=device or default_device())  # fmt: skip
        return policy, HF_TOOL_STYLE
    path = Path(spec)
    if (path / "checkpoints" / "latest" / "policy").is_dir():
        path = path / "checkpoints" / "latest" / "policy"
    if not path.is_dir():
        raise ValueError(
            f"--model must be builtin, smollm2-135m, a saved model directory or a tooltune demo "
            f"run directory; {spec!r} is none of these"
        )
    from tooltune.training.run_dir import load_policy

    policy = load_policy(path, device=device or None)
    builtin = type(policy).__name__ == "BuiltinPolicy"
    return policy, BUILTIN_TOOL_STYLE if builtin else HF_TOOL_STYLE


def tool_style_for(policy: Any, default: str, explicit: str | None = None) -> str:
    """The tool style to prompt in: the one asked for, else the one the model was trained with
    (its saved prompt format), else `default` for its kind, with a warning."""
    if explicit:
        return explicit
    fmt = getattr(policy, "prompt_format", None)
    if fmt is not None:
        return fmt.tool_style
    if hasattr(policy, "save"):
        warnings.warn(f"the model has no saved prompt format: listing tools in the {default!r} "
                      "style (--tool-style to choose)", stacklevel=2)  # fmt: skip
    return default


# --------------------------------------------------------------------------------------------
# Asking and scoring
# --------------------------------------------------------------------------------------------


def question_prompt(question: BFCLQuestion, tool_style: str = "json",
                    template: NativeTemplate | None = None) -> str:  # fmt: skip
    """One question's prompt: the system turn with its functions (and the question's own system
    message, if any, after them), its first turn's messages, the open assistant turn. For the
    native tool style, `template` (the model's) renders the messages with the functions as its
    tools (the question's system message, if any, first)."""
    from tooltune.chat_format import build_system_prompt, render_prompt

    tools = [to_openai_tool(f) for f in question.functions]
    messages = [{"role": str(m.get("role", "user")), "content": str(m.get("content") or "")}
                for m in question.messages]  # fmt: skip
    extra = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if tool_style == NATIVE:
        if template is None:
            raise ValueError("tool style native prompts through the model's chat template: "
                             "pass its template (native_template.template_of(policy))")  # fmt: skip
        system = [{"role": "system", "content": "\n\n".join(extra)}] if extra else []
        return template.render([*system, *turns], tools, generation=True)
    system = build_system_prompt(tools, style=tool_style)
    return render_prompt([{"role": "system", "content": "\n\n".join([system, *extra])}, *turns])


def predict(policy: Any, questions: list[BFCLQuestion], tool_style: str = "json",
            max_new_tokens: int = 256, batch_size: int = BATCH_SIZE,
            constrained: bool = False) -> list[dict]:  # fmt: skip
    """One greedy assistant turn per question; its calls, as parsed, are the prediction
    (`{"id", "calls", "text", "finish_reason"}`; a malformed call keeps its `parse_error`).
    The native tool style prompts through the policy's chat template, stops at its end of turn
    and parses calls in its family's format. ``constrained``: the calls are decoded under the
    question's functions (`tooltune.call_grammar`; tooltune's or the Hermes call format)."""
    from tooltune.chat_format import parse_action
    from tooltune.rollout import SamplingParams

    sampling = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)
    template, parse = None, parse_action
    if tool_style == NATIVE:
        template = template_of(policy)
        sampling.stop = [template.end_of_turn]
        parse = template.parse
    out = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        prompts = [question_prompt(q, tool_style, template) for q in batch]
        if constrained:
            grammars = [CallGrammar([to_openai_tool(f) for f in q.functions]) for q in batch]
            completions = policy.generate(prompts, sampling, grammars=grammars)
        else:
            completions = policy.generate(prompts, sampling)
        for q, completion in zip(batch, completions, strict=True):
            calls = []
            for call in parse(completion.text, None, "call").tool_calls:
                row: dict[str, Any] = {"name": call.name, "arguments": call.arguments}
                if call.parse_error:
                    row["parse_error"] = call.parse_error
                calls.append(row)
            out.append({"id": q.id, "calls": calls, "text": completion.text,
                        "finish_reason": completion.finish_reason})  # fmt: skip
    return out


def score(questions: list[BFCLQuestion], predictions: list[dict], category: str, model: str,
          tool_style: str, out: Path | None = None) -> RunResult:  # fmt: skip
    """Write the predictions (when `out` is given) and score them with the checker."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions),
                       encoding="utf-8")  # fmt: skip
    report = check_predictions(questions, None, predictions)
    return RunResult(
        category=category,
        model=model,
        tool_style=tool_style,
        accuracy=report["accuracy"],
        n=report["n"],
        correct=report["correct"],
        malformed=sum(any("parse_error" in c for c in p["calls"]) for p in predictions),
        cut_off=sum(p.get("finish_reason") == "length" for p in predictions),
        predictions=str(out) if out is not None else None,
        entries=report["entries"],
    )


def run(model: str, category: str, data: Path | None = None, limit: int | None = None,
        out: Path | None = None, tool_style: str | None = None, max_new_tokens: int = 256,
        batch_size: int = BATCH_SIZE, device: str = "", policy: Any = None,
        constrained: bool = False) -> RunResult:  # fmt: skip
    """`tooltune bfcl run`: load the category and the model (or use `policy`), ask, score."""
    outs = {category: out} if out is not None else {}
    return run_categories(model, [category], data, limit, outs, tool_style, max_new_tokens,
                          batch_size, device, policy, constrained)[0]  # fmt: skip


def run_categories(model: str, categories: list[str], data: Path | None = None,
                   limit: int | None = None, outs: dict[str, Path] | None = None,
                   tool_style: str | None = None, max_new_tokens: int = 256,
                   batch_size: int = BATCH_SIZE, device: str = "", policy: Any = None,
                   constrained: bool = False) -> list[RunResult]:  # fmt: skip
    """`run` for several categories, the model loaded once; ``outs``: category -> where its
    predictions go (none written for a category without one)."""
    data = data or default_data_dir()
    if data is None:
        raise ValueError("no BFCL data: pass --data FOLDER (BFCL's layout) or install bfcl-eval")
    asked = {c: load_category(Path(data), c, limit) for c in categories}
    default = BUILTIN_TOOL_STYLE
    if policy is None:
        policy, default = load_model(model, [q for qs in asked.values() for q in qs], device)
        if model in ("builtin", "smollm2-135m"):  # untrained: no format of its own to warn about
            tool_style = tool_style or default
    style = tool_style_for(policy, default, tool_style)
    hermes = style != NATIVE or template_of(policy).family.name == "hermes"
    if constrained and not (hermes and accepts_keyword(policy.generate, "grammars")):
        raise ValueError(
            "constrained decoding needs a token policy that writes <tool_call>{json}</tool_call> "
            "(tooltune's format, or a Hermes/Qwen chat template)"
        )
    results = []
    for category, questions in asked.items():
        predictions = predict(policy, questions, style, max_new_tokens, batch_size, constrained)
        out = (outs or {}).get(category)
        results.append(score(questions, predictions, category, model, style, out))
    return results
