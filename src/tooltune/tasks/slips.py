"""Recovery demonstrations: the expert slips as a model does, reads the error, looks, repairs.

A trained model's failed calls are mostly its own slips: a column name guessed (`revenue` for
`revenue_musd`, `qty` for `quantity`), a file name misspelt. The expert never slips, so its
demonstrations never show what to do after an error the task did not plant (3b01b2d's demo
recovered in 1 of 44 such episodes, in 18 of 25 with planted failures). With `recovery_share`
a share of the training tasks that look something up in the database or a file get a plan whose
first such call is a slip: the slipped turn is shown but not taught (its step's `weight` is 0),
and the turns after it are: `describe_table` (or `list_files`) and the call with the right name.

Measured at 0.6 (77 of 797 demonstrations; benchmarks/RESULTS.md): the model then looked at
the table after 11 of 11 SQL errors (12 of 21 without), but wrote a working query after 3; 7 of
the 11 asked a column of the wrong table, which these slips do not teach. Accuracy within one
draw's noise (53.6 against 54.8% after SFT), failed calls 15.6 -> 17.8%: off by default.

The tasks themselves (prompt, tools, check) stay as sampled, so a run with slips trains on the
same tasks as one without; only the expert's episode of them differs.
"""

from __future__ import annotations

import copy
import posixpath
import random
import re
from collections.abc import Container
from pathlib import Path
from typing import Any

# Names a model guesses for the world's columns (`world_files`): the name without its unit,
# a synonym, or the name another table uses.
WRONG_COLUMNS: dict[str, list[str]] = {
    "revenue_musd": ["revenue", "revenue_usd", "annual_revenue"],
    "net_worth_musd": ["net_worth", "networth", "net_worth_usd"],
    "area_km2": ["area", "area_sq_km", "size_km2"],
    "population": ["pop", "inhabitants", "population_count"],
    "employees": ["employee_count", "num_employees", "staff"],
    "founded": ["founded_year", "year_founded", "founding_year"],
    "hq_city": ["headquarters", "hq", "headquarters_city"],
    "ceo": ["ceo_name", "chief_executive"],
    "quantity": ["qty", "ordered_units", "units"],
    "price": ["cost", "unit_price", "price_usd"],
    "order_date": ["date", "ordered_on"],
    "industry": ["sector"],
    "age": ["age_years", "years"],
    "occupation": ["job", "profession"],
    "maker": ["manufacturer", "brand"],
    "category": ["type", "product_type"],
    "customer": ["customer_name", "buyer"],
    "status": ["order_status", "state"],
    "city": ["home_city", "location"],
    "region": ["country", "area_name"],
}
_SELECTED = re.compile(r"^\s*SELECT\s+(.*?)\s+FROM\s+(\w+)", re.IGNORECASE | re.DOTALL)


def _sql_slip(query: str, rng: random.Random) -> tuple[str, str, str, str] | None:
    """(slipped query, wrong column, right column, table): a column the query selects under a
    name a model might guess; None when it selects none of the known columns."""
    match = _SELECTED.match(query)
    if not match:
        return None
    selected = [w for w in re.findall(r"\b\w+\b", match.group(1)) if w in WRONG_COLUMNS]
    if not selected:
        return None
    right = rng.choice(selected)
    wrong = rng.choice(WRONG_COLUMNS[right])
    return re.sub(rf"\b{right}\b", wrong, query), wrong, right, match.group(2)


def listable_folders(sandbox: Path, most: int = 20) -> set[str]:
    """The sandbox's folders of at most `most` entries: a listing the model sees whole."""
    return {str(d.relative_to(sandbox)) for d in sandbox.rglob("*")
            if d.is_dir() and sum(1 for _ in d.iterdir()) <= most}  # fmt: skip


def _misspelt(path: str, rng: random.Random) -> str | None:
    """The path with its file name misspelt: two letters swapped, one dropped, or a word left
    out; None for a name too short to misspell."""
    folder, name = posixpath.split(path)
    stem, dot, ext = name.partition(".")
    if len(stem) < 4:
        return None
    words = stem.split("_")
    kind = rng.choice(["swap", "drop", "word"] if len(words) > 1 else ["swap", "drop"])
    if kind == "word":
        words.pop(rng.randrange(len(words)))
        stem = "_".join(words)
    else:
        letters = [
            i for i in range(1, len(stem) - 1) if stem[i].isalpha() and stem[i + 1].isalpha()
        ]
        if not letters:
            return None
        i = rng.choice(letters)
        if kind == "swap" and stem[i] != stem[i + 1]:
            stem = stem[:i] + stem[i + 1] + stem[i] + stem[i + 2 :]
        else:
            stem = stem[:i] + stem[i + 1 :]
    slipped = posixpath.join(folder, stem + dot + ext)
    return slipped if slipped != path else None


def _slip_step(step: dict, rng: random.Random, listable: Container[str]) -> dict | None:
    """The plan step with its one lookup made as a slip first (macro `slip`), or None. A file
    name slips only in a folder of `listable` (one whose listing the model sees whole)."""
    if step.get("macro") or len(step.get("calls", [])) != 1:
        return None
    call = step["calls"][0]["call"]
    args = call.get("arguments", {})
    if call["name"] == "sql_query" and isinstance(args.get("query"), str):
        slip = _sql_slip(args["query"], rng)
        if slip is None:
            return None
        query, wrong, right, table = slip
        fix = {"kind": "column", "wrong": wrong, "right": right, "table": table}
        slipped = {**call, "arguments": {**args, "query": query}}
    elif (
        call["name"] == "read_file"
        and isinstance(args.get("path"), str)
        and "<<" not in args["path"]
        and posixpath.dirname(args["path"]) in listable
    ):
        path = _misspelt(args["path"], rng)
        if path is None:
            return None
        fix = {"kind": "file", "wrong": path, "right": args["path"]}
        slipped = {**call, "arguments": {**args, "path": path}}
    else:
        return None
    return {**step, "macro": "slip", "slip": slipped, "fix": fix}


# The most turns a macro step can take (a booking: search, book, a sold-out flight or two,
# confirm; a file or query repaired: three)
_MACRO_TURNS = {"book": 5, "read_or_find": 3, "sql_fix": 3}


def _most_turns(plan: dict) -> int:
    """The most turns the expert's episode of `plan` can take, its answer included (a plain
    step one, two where a search snippet may not show the fact and its document is opened)."""
    turns = 1
    for step in plan["steps"]:
        searches = any(c.get("extract", {}).get("kind") == "search" for c in step.get("calls", []))
        turns += _MACRO_TURNS.get(step.get("macro"), 3) if step.get("macro") else 1 + searches
    return turns


def with_slip(task: Any, share: float, listable: Container[str] = (), max_turns: int = 6) -> Any:
    """`task` with, in `share` of the tasks that look something up, a plan whose first lookup
    slips (`listable`: the folders whose file names may slip); other tasks as they were, and
    those whose episode might not fit `max_turns` with the slip's two more turns. Drawn from
    the task's own stream, so the sample around it does not change."""
    plan = task.metadata.get("plan")
    if share <= 0 or not plan or not plan.get("steps") or _most_turns(plan) + 2 > max_turns:
        return task
    rng = random.Random(f"slip:{task.id}")
    if rng.random() >= share:
        return task
    for i, step in enumerate(plan["steps"]):
        slipped = _slip_step(step, rng, listable)
        if slipped is not None:
            task = copy.copy(task)
            steps = [*plan["steps"][:i], slipped, *plan["steps"][i + 1 :]]
            task.metadata = {**task.metadata, "plan": {**plan, "steps": steps},
                             "slip": slipped["fix"]}  # fmt: skip
            return task
    return task
