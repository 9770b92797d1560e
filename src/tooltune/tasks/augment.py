"""Entity renaming: demonstrations whose invented names are swapped for fresh ones.

A small model trained on a few hundred entities learns the names by heart and writes them from
memory instead of copying them from the question or a tool result, so it fails on the held-out
entities of the test split. Renaming every invented name of a demonstration consistently (in the
prompt, the thinking, the call arguments, the tool output and the answer) keeps the episode
self-consistent while making memorised names useless: the only way to predict a name is to copy
it. Each word is replaced by a new word from the same syllable grammar with the same first letter
(the web atlas files cities by first letter) and the same casing (file names use lower case).
Fresh words never collide with any name of the world, test pool included.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

from tooltune.tasks.world_data import World
from tooltune.tasks.world_names import CODAS, ONSETS, VOWELS
from tooltune.types import AgentTrajectory

_MAX_SHARED = 3  # words in more than this many names are vocabulary ("Labs", "Kettle"), not names


_LETTER_RUN = re.compile(r"[A-Za-z]+")
_CACHE: dict[tuple[str, int], frozenset[str]] = {}


def name_words(world: World) -> frozenset[str]:
    """The invented words of a world's names, in lower case."""
    key = (str(world.root), world.seed)
    if key not in _CACHE:
        names = [e["name"] for group in (world.places, world.companies, world.people, world.products)
             for e in group] + list(world.regions)  # fmt: skip
        counts = Counter(w for name in names for w in set(name.split()))
        _CACHE[key] = frozenset(
            w.lower() for w, n in counts.items() if n <= _MAX_SHARED and len(w) >= 4
        )
    return _CACHE[key]


def _fresh_word(first: str, rng: random.Random, taken: set[str]) -> str:
    onsets = [o for o in ONSETS if o[0] == first] or [first]
    for _ in range(200):
        n = rng.choice([2, 2, 3])
        parts = [rng.choice(onsets) + rng.choice(VOWELS)]
        parts += [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(n - 1)]
        word = "".join(parts) + rng.choice(CODAS)
        if len(word) >= 4 and word not in taken:
            return word
    raise RuntimeError("could not find a fresh name")


def _cased(word: str, like: str) -> str:
    if like.isupper():
        return word.upper()
    return word.capitalize() if like[:1].isupper() else word


def rename_entities(
    trajectory: AgentTrajectory, world: World, rng: random.Random
) -> AgentTrajectory:
    """A copy of `trajectory` with each invented name word replaced by a fresh word, the same
    word always by the same replacement. The token record is dropped (the text changed)."""
    words = name_words(world)
    data = trajectory.to_dict()
    data["tokens"] = None
    tools = data.pop("tools")  # tool descriptions name no entity
    mapping: dict[str, str] = {}
    taken = set(words)

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        key = found.lower()
        if key not in words:
            return found
        if key not in mapping:
            mapping[key] = _fresh_word(key[0], rng, taken)
            taken.add(mapping[key])
        return _cased(mapping[key], found)

    def walk(value: Any) -> Any:  # strings only: JSON text would glue escapes ("\\n") to names
        if isinstance(value, str):
            return _LETTER_RUN.sub(replace, value)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return AgentTrajectory.from_dict({**walk(data), "tools": tools})


def copy_drills(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """`n` (user message, assistant reply) pairs whose reply quotes one item of the message: an
    invented name (the world's syllable grammar) or a number, among distractors.

    A model trained from scratch first needs a circuit that copies a span from its context
    (an induction head); on tool-use demonstrations alone, where copying is a small part of the
    loss, that circuit forms too late for a CPU budget. A few hundred steps on these short drills
    form it (copy loss 3.4 -> 1.4 nats in 600 steps of the tiny model), and SFT then reuses it:
    after the same SFT, the loss on held-out demonstrations is 1.2 instead of 1.7."""

    def name() -> str:
        return " ".join(
            _fresh_word(rng.choice(ONSETS)[0], rng, set()).capitalize()
            for _ in range(rng.choice([1, 2, 2, 3]))
        )

    def item() -> str:
        return name() if rng.random() < 0.7 else str(rng.randint(0, 10 ** rng.randint(1, 7)))

    pairs = []
    for _ in range(n):
        target, others = item(), [item() for _ in range(rng.randint(0, 3))]
        pairs.append((f"Copy {target}. Not: {', '.join(others)}", f'"{target}"'))
    return pairs
