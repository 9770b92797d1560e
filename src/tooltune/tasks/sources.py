"""A user's tasks from a JSONL file, a list of dicts or `Task`s, or a Hugging Face `Dataset`.

Columns (keys) of a task row:

    prompt         the user's request (required)
    answer         the expected answer; without `check`, a number is checked as a number, a
                   list as a set of names, anything else as text
    check          a checker spec (see `tooltune.tasks.checkers`), e.g. {"type": "number", ...}
    tools          the tool names the episode offers (default: every tool of the environment)
    group          what reports group by (default "all"); `tier` is read the same way
    id             default: the row's position; split: "train" or "test" (default: drawn)
    minimal_calls  the shortest solution's calls, [{"name": ..., "arguments": {...}}] (optional)

Other columns are kept in `task.metadata`. A bad row is refused with where it came from (a
file's name and line number, or the row's index), so a typo never trains on half a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tooltune.jsonl import read_jsonl
from tooltune.tasks.checkers import validate_spec
from tooltune.tasks.task import Task

COLUMNS = ("id", "prompt", "answer", "check", "tools", "group", "tier", "split", "minimal_calls",
           "metadata")  # fmt: skip


def default_check(answer: Any) -> dict:
    """The check a bare `answer` implies: number, set of names, or text."""
    if isinstance(answer, bool) or answer is None:
        raise ValueError("no check and no answer to check against")
    if isinstance(answer, int | float):
        return {"type": "number", "value": answer}
    if isinstance(answer, list | tuple):
        return {"type": "set", "items": [str(a) for a in answer]}
    return {"type": "text", "value": str(answer)}


def task_from_row(row: Any, index: int) -> Task:
    """One `Task` from a row (a dict or a `Task`); raises ValueError naming the problem."""
    if isinstance(row, Task):
        return row
    if not isinstance(row, dict):
        raise ValueError(f"a task must be an object, got {type(row).__name__}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    check = row.get("check")
    if isinstance(check, str):  # a Dataset column of JSON text
        check = json.loads(check)
    check = check if check is not None else default_check(row.get("answer"))
    validate_spec(check, state=False)
    tools = row.get("tools")
    if isinstance(tools, str):
        tools = json.loads(tools) if tools.strip().startswith("[") else tools.split(",")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, str) and t.strip() for t in tools)
    ):
        raise ValueError("'tools' must be a list of tool names")
    split = row.get("split") or None
    if split not in (None, "train", "test", "validation"):
        raise ValueError(f"'split' must be train, test or validation, got {split!r}")
    metadata = dict(row.get("metadata") or {})
    metadata.update({k: v for k, v in row.items() if k not in COLUMNS})
    if split is None:
        metadata["split_drawn"] = True
    return Task(
        id=str(row.get("id") if row.get("id") is not None else f"task-{index}"),
        prompt=prompt,
        tier=row.get("group") or row.get("tier") or "all",
        tools=[t.strip() for t in tools] if tools is not None else [],
        answer=row.get("answer"),
        check=check,
        minimal_calls=row.get("minimal_calls"),  # None: not known
        split=split or "train",
        metadata=metadata,
    )


def read_task_rows(source: Any) -> list[tuple[str, Any]]:
    """(where, row) for every row of a JSONL path, a Dataset or any iterable of rows."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"task file {path} not found")
        return [(f"{path}:{number}", row) for number, row in read_jsonl(path)]
    if isinstance(source, dict):
        raise ValueError("tasks must be a JSONL path or a list of rows, not one dict")
    if not isinstance(source, Iterable):
        raise ValueError(f"cannot read tasks from {type(source).__name__}")
    return [(f"task {i}", row) for i, row in enumerate(source)]  # a Dataset yields dicts


def load_task_source(source: Any) -> list[Task]:
    """Every task of `source` (see the module docstring); ids must be unique."""
    tasks, seen = [], set()
    for index, (where, row) in enumerate(read_task_rows(source)):
        try:
            task = task_from_row(row, index)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{where}: not a task: {exc}") from None
        if task.id in seen:
            raise ValueError(f"{where}: task id {task.id!r} is used twice")
        seen.add(task.id)
        tasks.append(task)
    if not tasks:
        raise ValueError("no tasks: the environment needs at least one")
    return tasks
