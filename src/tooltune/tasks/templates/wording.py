"""How templates write values into prompts and queries: dates relative to today (and reading
them back), money, SQL string literals.
"""

from __future__ import annotations

import random
import re
from datetime import date, timedelta

from tooltune.tasks.templates.plan import fmt_value

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]  # fmt: skip


def money(musd: float) -> str:
    return f"${fmt_value(musd)} million"


def sql_lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def long_date(d: date) -> str:
    return f"{WEEKDAYS[d.weekday()]}, {d.day} {MONTHS[d.month - 1]} {d.year}"


def date_phrase(rng: random.Random, today: date, target: date) -> str:
    """A way to say `target` relative to `today` that resolves to exactly that date."""
    offset = (target - today).days
    options = [f"on {target.day} {MONTHS[target.month - 1]}", f"on {target.isoformat()}",
               f"on {MONTHS[target.month - 1]} {target.day}"]  # fmt: skip
    if offset >= 2:
        options.append(f"in {offset} days")
    if offset == 1:
        options += ["tomorrow", "tomorrow"]
    if offset == 2:
        options.append("the day after tomorrow")
    if 1 <= offset <= 7:
        options += [
            f"next {WEEKDAYS[target.weekday()]}",
            f"this coming {WEEKDAYS[target.weekday()]}",
        ]
    next_monday = today + timedelta(days=7 - today.weekday())
    weeks = (target - next_monday).days // 7
    if weeks == 0:
        options.append(f"on {WEEKDAYS[target.weekday()]} next week")
    elif weeks == 1:
        options.append(f"on {WEEKDAYS[target.weekday()]} of the week after next")
    return rng.choice(options)


def resolve_date_phrase(phrase: str, today: date) -> date:
    """Inverse of `date_phrase` (used by tests and by the expert's plan explanation)."""
    if phrase == "tomorrow":
        return today + timedelta(days=1)
    if phrase == "the day after tomorrow":
        return today + timedelta(days=2)
    if m := re.fullmatch(r"in (\d+) days", phrase):
        return today + timedelta(days=int(m.group(1)))
    if m := re.fullmatch(r"on (\d{4}-\d{2}-\d{2})", phrase):
        return date.fromisoformat(m.group(1))
    if m := re.fullmatch(r"on (\d+) (\w+)|on (\w+) (\d+)", phrase):
        day = int(m.group(1) or m.group(4))
        month = MONTHS.index(m.group(2) or m.group(3)) + 1
        d = date(today.year, month, day)
        return d if d > today else date(today.year + 1, month, day)
    if m := re.fullmatch(r"(?:next|this coming) (\w+)", phrase):
        wd = WEEKDAYS.index(m.group(1))
        return today + timedelta(days=(wd - today.weekday() - 1) % 7 + 1)
    if m := re.fullmatch(r"on (\w+) next week", phrase):
        monday = today + timedelta(days=7 - today.weekday())
        return monday + timedelta(days=WEEKDAYS.index(m.group(1)))
    if m := re.fullmatch(r"on (\w+) of the week after next", phrase):
        monday = today + timedelta(days=14 - today.weekday())
        return monday + timedelta(days=WEEKDAYS.index(m.group(1)))
    raise ValueError(f"cannot resolve date phrase {phrase!r}")
