"""Invented names from a syllable grammar, so no fact of a world can be answered from a model's
memory: the only way to know Zentrix's chief executive is to look it up.

`tooltune.tasks.augment` draws fresh words from the same grammar to rename demonstrations.
"""

from __future__ import annotations

import random
import re

ONSETS = ["b", "br", "d", "dr", "f", "g", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t",
          "tr", "v", "z", "th", "sh", "qu", "h", "j", "gr", "pl"]  # fmt: skip
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou", "ia"]
CODAS = ["", "", "", "n", "r", "l", "s", "x", "th", "nd", "rk", "m", "v"]
_PLACE_ENDINGS = ["holt", "mere", "ford", "vik", "ara", "burg", "stad", "wick", "lon", "ria", "dal"]
_COMPANY_SUFFIXES = ["", "", "", " Labs", " Systems", " Group", " Works", " Dynamics"]


class Names:
    """Invented, unique names; no name is a substring of another, so text checks stay exact."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: list[str] = []
        self._lowered: list[str] = []

    def _syllables(self, n: int) -> str:
        parts = []
        for i in range(n):
            coda = self.rng.choice(CODAS) if i == n - 1 else ""
            parts.append(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + coda)
        return "".join(parts)

    def _ok(self, name: str) -> bool:
        low = name.lower()
        words = low.split()
        if any(len(w) < 4 for w in words) or re.search(r"(.)\1\1", low):
            return False
        return all(low not in u and u not in low for u in self._lowered)

    def take(self, make) -> str:
        for _ in range(1000):
            name = make()
            if self._ok(name):
                self.used.append(name)
                self._lowered.append(name.lower())
                return name
        raise RuntimeError("name generator exhausted")

    def word(self, n: int = 2) -> str:
        return self._syllables(n).capitalize()

    def place(self) -> str:
        return self.take(
            lambda: (
                self._syllables(self.rng.choice([1, 2])) + self.rng.choice(_PLACE_ENDINGS)
            ).capitalize()
        )

    def company(self) -> str:
        return self.take(lambda: self.word(2) + self.rng.choice(_COMPANY_SUFFIXES))

    def person(self) -> str:
        return self.take(lambda: f"{self.word(2)} {self.word(self.rng.choice([2, 3]))}")

    def region(self) -> str:
        return self.take(lambda: self.word(2) + self.rng.choice(["ia", "land", "mark"]))

    def brand(self) -> str:
        return self.take(lambda: self.word(2))


def slug(name: str) -> str:
    """File-name form of a name: lower case, words joined by underscores."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
