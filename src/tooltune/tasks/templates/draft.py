"""What a template is given and what it returns.

A template is a function of a `Ctx` (the world, the task's random source and its split's entity
pool) that returns a `Draft` (prompt, tool families, answer, check spec, plan);
`tooltune.tasks.splits` turns a draft into a `Task`. `num_check` and `text_check` write the two
most common check specs (see `tooltune.tasks.checkers` for all of them).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tooltune.config import TaskTier
from tooltune.tasks.world_data import World


@dataclass
class Draft:
    """What a template produces; `splits.sample_tasks` turns it into a `Task`."""

    prompt: str
    families: list[str]
    answer: Any
    check: dict
    plan: dict  # {"steps": [...], "answer": "template"}
    truth: dict  # values the plan reads, as the world says they are (for minimal_calls)
    parallel: int = 0  # independent calls the task expects in one turn (MULTI_TOOL_PAR)
    # Calls of the minimal solution that fail on purpose (a sold-out flight, a moved file, an
    # old-schema query), as {"name", "arguments"} with only the arguments that identify them.
    planted: list[dict] = field(default_factory=list)


@dataclass
class Template:
    id: str
    tier: TaskTier
    make: Callable[[Ctx], Draft]
    heldout: bool = False  # only in the test split (templates never seen in training)
    heldout_tools: bool = False  # only in the heldout_tools split
    # Only in train/validation: known parts in combinations the test split does not ask for,
    # so a model learns the parts instead of memorising each whole (the test mix stays the same).
    train_only: bool = False


@dataclass
class Ctx:
    """The world, the random source of one task and the entity pool of its split."""

    world: World
    rng: random.Random
    pool: str

    def choice(self, seq: list) -> Any:
        return self.rng.choice(seq)

    def _pool(self, kind: str) -> list[dict]:
        items = self.world.in_pool(kind, self.pool)
        if not items:
            raise LookupError(f"no {kind} in the {self.pool} pool")
        return items

    def company(self) -> dict:
        return self.choice(self._pool("companies"))

    def companies(self, n: int) -> list[dict]:
        return self.rng.sample(self._pool("companies"), n)

    def place(self) -> dict:
        return self.choice(self._pool("places"))

    def places(self, n: int) -> list[dict]:
        return self.rng.sample(self._pool("places"), n)

    def person(self) -> dict:
        return self.choice(self._pool("people"))

    def people(self, n: int) -> list[dict]:
        return self.rng.sample(self._pool("people"), n)

    def item(self, kind: str) -> dict:
        return self.choice(self._pool(kind))


def num_check(value: float, rel_tol: float = 1e-3, abs_tol: float = 0.0) -> dict:
    return {"type": "number", "value": value, "rel_tol": rel_tol, "abs_tol": abs_tol}


def text_check(value: str) -> dict:
    return {"type": "text", "value": value}
