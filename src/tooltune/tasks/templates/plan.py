"""The language a template's plan is written in, and the minimal calls it implies.

A plan is the expert's recipe written as data: turns of tool calls whose arguments may name
values read from earlier results (`<<ceo>>`), each with an extraction rule that says how to read
the value from the tool's result, plus a few multi-turn macros for the planted failures (a
sold-out flight, a moved file, a query written for an old schema). The expert
(`tooltune.tasks.expert`) executes plans through the real tools; `minimal_calls` is the same
plan filled in with the world's ground truth.
"""

from __future__ import annotations

import re
from typing import Any

from tooltune.tasks.templates.draft import Draft

# Plan building blocks ------------------------------------------------------------------------


def call(name: str, **arguments: Any) -> dict:
    return {"name": name, "arguments": arguments}


def op(c: dict, extract: dict, name: str) -> dict:
    """One call of a turn: run `c`, read a value with `extract`, remember it as `name`."""
    return {"call": c, "extract": extract, "as": name}


def step(think: str, *ops: dict) -> dict:
    return {"think": think, "calls": list(ops)}


def plan(answer: str, *steps: dict) -> dict:
    return {"steps": list(steps), "answer": answer}


def fmt_value(value: Any, grouped: bool = True) -> str:
    """A value as text: what task prompts quote (large whole numbers with thousands
    separators, as people write them); `grouped=False` for what the expert writes (`written`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if grouped and abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return fmt_value(int(value), grouped)
        if abs(value) < 1:
            return f"{value:.6g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def written(value: Any) -> str:
    """How the expert writes a value it read from a tool into a thought, a call or an answer:
    as the tool wrote it, less thousands separators. A 135M model copies digits well but does
    not insert separators reliably: taught "808,491" for SQL's 808491, it wrote "80,849,1" (7 of
    the 106 failed test tasks after the default demo's SFT). Nor does it drop only some
    decimals: taught "784" for a file's "784.0", it wrote "1248" for "1248.4" (3 of the 4 failed
    `quarter_sum` tasks), so a float keeps its decimal point (`reading.extract` keeps whole
    numbers whole where the tool's text has no point)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{int(value)}.0"
    return fmt_value(value, grouped=False)


def plain_number(value: Any) -> str:
    """A number as it goes into an expression: no thousands separators, every digit, a float's
    decimal point kept (see `written`)."""
    return str(value)


# Extraction rules (what the expert does with a result) --------------------------------------


def x_sql(column: str | None = None) -> dict:
    return {"kind": "sql", "column": column}


def x_search(title: str, fieldname: str) -> dict:
    return {"kind": "search", "title": title, "field": fieldname}


def x_field(fieldname: str) -> dict:
    return {"kind": "field", "field": fieldname}


def x_numeric() -> dict:
    return {"kind": "numeric"}


def x_csv(key_col: str, key: str, col: str) -> dict:
    return {"kind": "csv", "key_col": key_col, "key": key, "col": col}


def x_shapes(color: str | None = None, kind: str | None = None) -> dict:
    return {"kind": "shapes", "color": color, "shape": kind}


def x_key(key: str) -> dict:
    return {"kind": "key", "key": key}


# Minimal calls --------------------------------------------------------------------------------


def expand_slots(template: Any, values: dict) -> Any:
    """Fill `<<name>>`, `<<name:num>>` (plain number), `<<name:raw>>` (the value itself),
    `<<name:sum>>` (a list joined with +) and `<<name:initial>>` (first letter, upper case)
    slots."""
    if isinstance(template, str):
        full = re.fullmatch(r"<<(\w+):raw>>", template)
        if full and full.group(1) in values:
            return values[full.group(1)]

        def sub(m: re.Match) -> str:
            name, mode = m.group(1), m.group(2) or ""
            if name not in values:
                return m.group(0)
            v = values[name]
            if mode == "num":
                return plain_number(v)
            if mode == "sum":
                return " + ".join(plain_number(x) for x in v)
            if mode == "raw":
                return str(v)
            if mode == "initial":
                return str(v)[:1].upper()
            return written(v)

        return re.sub(r"<<(\w+)(?::(num|raw|sum|initial))?>>", sub, template)
    if isinstance(template, list):
        return [expand_slots(t, values) for t in template]
    if isinstance(template, dict):
        return {k: expand_slots(v, values) for k, v in template.items()}
    return template


def minimal_calls(draft: Draft) -> list[dict]:
    """The plan filled in with the world's ground truth: the shortest solution's calls.

    Macro steps (planted failures) list their calls in `truth["_macro"][step index]`; values
    only known at run time (a booking id) stay as `<<slot>>`s."""
    macros = draft.truth.get("_macro", {})
    calls: list[dict] = []
    for i, s in enumerate(draft.plan["steps"]):
        if s.get("macro"):
            calls += [expand_slots(c, draft.truth) for c in macros[i]]
        else:
            calls += [expand_slots(o["call"], draft.truth) for o in s["calls"]]
    return calls
