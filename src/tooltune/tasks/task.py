"""`Task`: what an episode asks for, which tools it offers, and how success is verified.

A `Task` is plain data (it round-trips through JSON) so task sets can be sampled once, saved and
shared between training, evaluation and the CLI. The `check` spec is what
`tooltune.tasks.checkers.verify` applies to a finished trajectory; it never looks at rewards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tooltune.config import TaskTier, as_group


@dataclass
class Task:
    """One task: of the built-in world, of BFCL, or of a user's `ToolEnv`.

    `tier` is the task's group: a `TaskTier` for the built-in world, any name for user tasks
    (`group` reads it as text)."""

    id: str
    prompt: str
    tier: TaskTier | str
    tools: list[str]
    answer: Any  # expected answer, for people and checkers
    check: dict  # serialisable checker spec (see tooltune.tasks.checkers)
    minimal_calls: list[dict] | None  # [{"name":..., "arguments":...}] shortest; None: unknown
    split: str = "train"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tier = as_group(self.tier)

    @property
    def group(self) -> str:
        return str(self.tier)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tier"] = str(self.tier)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        known = {
            "id",
            "prompt",
            "tier",
            "tools",
            "answer",
            "check",
            "minimal_calls",
            "split",
            "metadata",
        }
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown task fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Task:
        return cls.from_dict(json.loads(text))


def save_tasks(path: Any, tasks: list[Task]) -> None:
    """Write tasks as JSON lines."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", encoding="utf-8") as f:
        for task in tasks:
            f.write(task.to_json() + "\n")


def load_tasks(path: Any) -> list[Task]:
    """Read tasks written by `save_tasks`; a bad line names its number."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(Task.from_json(line))
                except (ValueError, TypeError, KeyError) as exc:
                    raise ValueError(f"{path}:{number}: not a task: {exc}") from None
    return out


def format_task(task: Task) -> str:
    """A task as a person reads it: prompt, tier, tools, expected answer and shortest solution."""
    lines = [
        f"[{task.id}] tier={task.tier} split={task.split}",
        f"prompt: {task.prompt}",
        f"tools: {', '.join(task.tools)}",
        f"answer: {json.dumps(task.answer, ensure_ascii=False)}",
        f"check: {json.dumps(task.check, ensure_ascii=False)[:300]}",
        "minimal calls:",
    ]
    calls = task.minimal_calls or []
    lines += [f"  {json.dumps(c, ensure_ascii=False)}" for c in calls] or ["  (none)"]
    return "\n".join(lines)
