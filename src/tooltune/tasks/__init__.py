"""Tasks: what an episode asks for, which tools it offers, and how success is verified.

| module | holds |
|---|---|
| `task` | `Task` (plain data, round-trips through JSON), saving, loading and printing tasks |
| `splits` | the splits and `sample_tasks` over the built-in world |
| `templates` | the built-in world's task templates, one module per tool family |
| `abstention` | the no-tool tier's templates |
| `schema_gen`, `schema_tasks` | opt-in tasks on random function schemas, checked by BFCL's rules |
| `world` | the built-in world: its data, building it, writing its sources, loading it |
| `checkers` | `verify`: a finished trajectory against a task's `check` spec |
| `expert` | the scripted expert that solves the built-in tasks through the real tools |
| `augment` | renaming a demonstration's entities afresh |
| `sources` | a user's tasks from JSONL, dicts or a Hugging Face `Dataset` |
| `bfcl` | the Berkeley Function Calling Leaderboard's questions and checker |

This package re-exports the names most callers need; its modules import each other, never it.
"""

from tooltune.config import TaskTier
from tooltune.tasks.checkers import verify
from tooltune.tasks.splits import SPLITS, sample_tasks
from tooltune.tasks.task import Task, format_task, load_tasks, save_tasks

__all__ = [
    "SPLITS",
    "Task",
    "TaskTier",
    "format_task",
    "load_tasks",
    "sample_tasks",
    "save_tasks",
    "verify",
]
