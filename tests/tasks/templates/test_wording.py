"""Dates said relative to today, and reading them back."""

import random
from datetime import timedelta

from tooltune.tasks.templates.wording import date_phrase, resolve_date_phrase


def test_date_phrases_resolve(world):
    rng = random.Random(0)
    for offset in range(1, 15):
        target = world.today + timedelta(days=offset)
        for _ in range(10):
            phrase = date_phrase(rng, world.today, target)
            assert resolve_date_phrase(phrase, world.today) == target, phrase
