"""Reading values out of tool results, and the notes the expert writes about what it read.

`extract` applies a plan's extraction rule (`templates/plan.py`) to one result. `note` says
what was read in words the next turn starts with ("inventory/a.csv: Gripou Backpack, stock 45."):
a small model copies a value far more reliably right after naming the row or item it belongs to
than when it must pick the value out of a long result in the middle of a call's arguments.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from tooltune.tasks.checkers import normalize_text
from tooltune.tasks.templates.plan import expand_slots, fmt_value, written

NUMERIC_FIELDS = {"Revenue", "Age", "Net worth", "Population", "Area", "Founded", "Employees",
                  "Approved budget", "Elevation"}  # fmt: skip
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class ExpertError(RuntimeError):
    """A tool result the plan cannot continue from (the expert then gives up, visibly)."""


def to_number(text: Any) -> int | float:
    if isinstance(text, bool):
        raise ExpertError(f"not a number: {text!r}")
    if isinstance(text, int | float):
        return text
    match = _NUMBER.search(str(text))
    if not match:
        raise ExpertError(f"no number in {text!r}")
    value = float(match.group().replace(",", ""))
    return int(value) if value.is_integer() and "." not in match.group() else value


def _as_written(value: int | float, text: str) -> int | float:
    """A tool's number as its text wrote it: 5234 where the calculator wrote "5234" beside
    its float 5234.0 (see `plan.written`: the expert writes what it read)."""
    whole = isinstance(value, float) and value.is_integer() and abs(value) < 1e15
    return int(value) if whole and re.fullmatch(r"-?\d+", text.strip()) else value


def field_text(text: str, name: str) -> str:
    """The text after `Name:` in an article, a memo or a page (`- Name: value`)."""
    match = re.search(rf"{re.escape(name)}:\s*(.+?)(?:\.\s|\.$|\.\.\.|\n|$)", text)
    if not match:
        raise ExpertError(f"no {name!r} in the text")
    return match.group(1).strip()


def field_value(text: str, name: str) -> Any:
    """`Name: value` from an article, a memo or a page, numbers as numbers."""
    value = field_text(text, name)
    return to_number(value) if name in NUMERIC_FIELDS else value


def _sql(result: Any, column: str | None) -> Any:
    if not isinstance(result, dict) or not result.get("rows"):
        raise ExpertError("the query returned no rows")
    columns = result.get("columns", [])
    index = columns.index(column) if column in columns else 0
    return result["rows"][0][index]


def hit_titled(result: Any, title: str) -> dict:
    if isinstance(result, str):  # a clipped result: read the hits out of the text
        hits = [
            {"id": m.group(1), "title": m.group(2), "snippet": m.group(3)}
            for m in re.finditer(
                r'"id": "([^"]*)", "title": "([^"]*)", "snippet": "([^"]*)', result
            )
        ]
    else:
        hits = result if isinstance(result, list) else []
    for hit in hits:
        if isinstance(hit, dict) and normalize_text(hit.get("title", "")) == normalize_text(title):
            return hit
    raise ExpertError(f"no search result titled {title!r}")


def _csv_rows(result: Any) -> list[dict]:
    content = result.get("content", "") if isinstance(result, dict) else str(result)
    return list(csv.DictReader(io.StringIO(content)))


def extract(spec: dict, result: Any, values: dict) -> Any:
    kind = spec["kind"]
    if kind == "sql":
        return _sql(result, spec.get("column"))
    if kind == "search":
        return field_value(
            hit_titled(result, expand_slots(spec["title"], values))["snippet"], spec["field"]
        )
    if kind == "field":
        if isinstance(result, dict):
            text = result.get("content") or result.get("text") or ""
        else:
            text = str(result)
        return field_value(text, spec["field"])
    if kind == "numeric":
        number = result.get("numeric") if isinstance(result, dict) else None
        text = str(result.get("result", "")) if isinstance(result, dict) else ""
        value = _as_written(number if number is not None else to_number(text), text)
        return round(value, 10) if isinstance(value, float) else value
    if kind == "solve":
        text = str(result["solutions"][0].get(spec["var"], ""))
        return _as_written(to_number(result["numeric"][0][spec["var"]]), text)
    if kind == "stdout":
        return to_number(result["stdout"].strip())
    if kind == "csv":
        for row in _csv_rows(result):
            if row.get(spec["key_col"]) == spec["key"]:
                return to_number(row[spec["col"]])
        raise ExpertError(f"no row with {spec['key_col']} = {spec['key']}")
    if kind == "csv_column":
        return [to_number(row[spec["col"]]) for row in _csv_rows(result)]
    if kind == "shapes":
        shapes = result.get("shapes", []) if isinstance(result, dict) else []
        return sum(
            1
            for s in shapes
            if (spec.get("color") is None or s.get("color") == spec["color"])
            and (spec.get("shape") is None or s.get("kind") == spec["shape"])
        )
    if kind == "page_field":
        return field_value(result.get("content", ""), spec["field"])
    if kind == "key":
        if not isinstance(result, dict) or spec["key"] not in result:
            raise ExpertError(f"no {spec['key']!r} in the result")
        return result[spec["key"]]
    if kind == "none":
        return None
    raise ExpertError(f"unknown extraction {kind!r}")


# Notes ---------------------------------------------------------------------------------------

_QUERY_NAME = re.compile(r"\bname\s*=\s*'([^']*)'", re.IGNORECASE)


def note(spec: dict, call: dict, result: Any, value: Any, values: dict, several: bool) -> str:
    """What one call's result said, as the next turn opens with it; "" where there is nothing
    worth saying. Rows of files and shape counts always get a note (the value sits in a
    long result); lookups only when `several` ran in one turn (which value belongs to whom)."""
    kind = spec["kind"]
    where = call.get("arguments", {}).get("path", "")
    if kind == "csv":  # the cell as the file writes it
        rows = [r for r in _csv_rows(result) if r.get(spec["key_col"]) == spec["key"]]
        cell = rows[0][spec["col"]] if rows else written(value)
        return f"{where}: {spec['key']}, {spec['col']} {cell}."
    if kind == "shapes":
        color, shape = spec.get("color"), spec.get("shape")
        what = " ".join(w for w in (color, f"{shape}s" if shape else "shapes") if w)
        return f"{where}: {value} {what}."
    if not several:
        return ""
    if kind == "search":
        title = expand_slots(spec["title"], values)
        said = field_text(hit_titled(result, title)["snippet"], spec["field"])
        return f"{title} {spec['field'].lower()}: {said}."
    if kind == "sql":
        named = _QUERY_NAME.search(call.get("arguments", {}).get("query", ""))
        label = " ".join(w for w in (named and named.group(1), spec.get("column")) if w)
        return f"{label}: {value}." if label else ""
    return ""


def mentions(text: str, value: Any) -> bool:
    """Whether `text` already states `value` (as a whole number or word, in either notation)."""
    forms = {str(value), fmt_value(value)}
    return any(re.search(rf"(?<![\w.,]){re.escape(f)}(?![\w]|[.,]\d)", text) for f in forms if f)
