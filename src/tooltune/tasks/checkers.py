"""Verification of finished episodes against a task's `check` spec.

Answer checks read `trajectory.final_answer`: numbers are found in the text (with thousands
separators) and compared with a tolerance, names are compared after normalisation (case, accents,
punctuation). State checks read what the episode did to the world: the bookings the flight
service holds for the episode id, or a file the episode wrote into its overlay directory.

Spec types (all plain JSON):
    {"type": "number", "value": x, "rel_tol": 1e-3, "abs_tol": 0.0}
    {"type": "numbers", "values": [x, y], ...}              every value appears
    {"type": "text", "value": "Dara Velmont", "aliases": [...]}
    {"type": "choice", "value": "A", "options": ["A", "B"]} names A and no other option
    {"type": "set", "items": ["A", "B"]}                    every item appears
    {"type": "all", "checks": [spec, ...]}
    {"type": "refusal"}                                     says it cannot (see REFUSAL_MARKERS)
    {"type": "no_call", "check": spec}                      no tool call at all, and spec holds
    {"type": "booking", "flight_id": "SV123", "passenger": "Dara Velmont"}
    {"type": "file", "path": "out/x.txt", "check": spec}   spec applied to the file's text
    {"type": "bfcl", "functions": [...], "ground_truth": [...], "category": "simple_python"}
"""

from __future__ import annotations

import math
import re
import sqlite3
import unicodedata
from pathlib import Path
from typing import Any

# How an answer says that it cannot help, after `normalize_text` ("can't" reads "can t").
REFUSAL_MARKERS = ("cannot", "can not", "can t", "unable to", "not able to")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])|(?<![\w.])-?\.\d+")


def normalize_text(text: str) -> str:
    """Lower case, accents removed, every run of non-alphanumerics one space."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def contains_name(text: str, name: str) -> bool:
    """`name` appears in `text` as whole words, after normalisation."""
    needle = normalize_text(name)
    return bool(needle) and f" {needle} " in f" {normalize_text(text)} "


def extract_numbers(text: str) -> list[float]:
    """Every number written in `text`: `1,234,567`, `-3.5`, `12`, `.5` (commas as thousands)."""
    out = []
    for match in _NUMBER.finditer(str(text)):
        try:
            out.append(float(match.group().replace(",", "")))
        except ValueError:
            continue
    return out


def number_matches(
    found: float, expected: float, rel_tol: float = 1e-3, abs_tol: float = 0.0
) -> bool:
    return math.isclose(found, expected, rel_tol=rel_tol, abs_tol=abs_tol)


def check_answer(spec: dict, text: str | None) -> bool:
    """Apply an answer-check spec to answer text (no environment needed)."""
    if text is None:
        return False
    kind = spec.get("type")
    if kind == "number":
        rel, tol = spec.get("rel_tol", 1e-3), spec.get("abs_tol", 0.0)
        return any(number_matches(n, float(spec["value"]), rel, tol) for n in extract_numbers(text))
    if kind == "numbers":
        return all(
            check_answer({**spec, "type": "number", "value": v}, text) for v in spec["values"]
        )
    if kind == "text":
        names = [spec["value"], *spec.get("aliases", [])]
        return any(contains_name(text, n) for n in names)
    if kind == "choice":
        others = [o for o in spec["options"] if normalize_text(o) != normalize_text(spec["value"])]
        return contains_name(text, spec["value"]) and not any(
            contains_name(text, o) for o in others
        )
    if kind == "set":
        return all(contains_name(text, item) for item in spec["items"])
    if kind == "all":
        return all(check_answer(s, text) for s in spec["checks"])
    if kind == "refusal":
        return any(contains_name(text, marker) for marker in REFUSAL_MARKERS)
    raise ValueError(f"not an answer check: {kind!r}")


def _booking_ok(spec: dict, env: Any, episode_id: str) -> bool:
    from tooltune.tools.flights import list_bookings

    bookings = list_bookings(env.flights_db, episode_id)
    confirmed = [b for b in bookings if b["status"] == "confirmed"]
    if len(confirmed) != 1:  # exactly one trip was asked for
        return False
    booking = confirmed[0]
    return booking["flight_id"] == spec["flight_id"] and normalize_text(
        booking["passenger"]
    ) == normalize_text(spec["passenger"])


def _file_ok(spec: dict, env: Any, episode_id: str) -> bool:
    path = Path(env.overlay_dir(episode_id)) / spec["path"]
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return check_answer(spec["check"], text)


def _bfcl_ok(spec: dict, trajectory: Any) -> bool:
    from tooltune.tasks.bfcl import BFCLQuestion, check_question

    question = BFCLQuestion(
        id="task",
        messages=[],
        functions=spec["functions"],
        ground_truth=spec.get("ground_truth"),
        category=spec.get("category", ""),
    )
    first = next((s for s in trajectory.steps if s.action.tool_calls), None)
    calls = [
        {"name": c.name, "arguments": c.arguments}
        for c in (first.action.tool_calls if first else [])
        if not c.parse_error
    ]
    return not check_question(question, calls)


def check_spec(spec: dict, trajectory: Any, env: Any = None) -> bool:
    """Apply any spec; state checks need `env` (flights_db, overlay_dir) and the episode id."""
    kind = spec.get("type")
    episode_id = (getattr(trajectory, "metadata", None) or {}).get("episode_id")
    if kind == "booking":
        return env is not None and episode_id is not None and _booking_ok(spec, env, episode_id)
    if kind == "file":
        return env is not None and episode_id is not None and _file_ok(spec, env, episode_id)
    if kind == "bfcl":
        return _bfcl_ok(spec, trajectory)
    if kind == "no_call":  # a call attempt counts, even one that did not parse
        return not trajectory.tool_calls and check_spec(spec["check"], trajectory, env)
    if kind == "all":
        return all(check_spec(s, trajectory, env) for s in spec["checks"])
    return check_answer(spec, trajectory.final_answer)


# The keys each spec type needs; "state" types read the built-in world and need its services.
SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "number": ("value",), "numbers": ("values",), "text": ("value",),
    "choice": ("value", "options"), "set": ("items",), "all": ("checks",),
    "booking": ("flight_id", "passenger"), "file": ("path", "check"),
    "bfcl": ("functions",),
}  # fmt: skip
STATE_SPECS = ("booking", "file")


def validate_spec(spec: Any, state: bool = True) -> None:
    """Raise ValueError, naming the problem, for a spec `check_spec` cannot apply (an unknown
    type, a missing key); `state=False` also refuses the built-in world's state checks."""
    if not isinstance(spec, dict):
        raise ValueError(f"a check spec must be a JSON object, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in SPEC_KEYS:
        raise ValueError(f"unknown check type {kind!r}; known: {', '.join(SPEC_KEYS)}")
    if kind in STATE_SPECS and not state:
        raise ValueError(f"check type {kind!r} reads the built-in world's state")
    missing = [k for k in SPEC_KEYS[kind] if k not in spec]
    if missing:
        raise ValueError(f"check of type {kind!r} lacks {', '.join(missing)}")
    for sub in spec.get("checks", []) if kind == "all" else []:
        validate_spec(sub, state)
    if kind == "file":
        validate_spec(spec["check"], state)


def verify(task: Any, trajectory: Any, env: Any = None) -> bool:
    """Did the episode solve the task? Decided from the answer or the world state, never from
    rewards. `env` is the `Environment` the episode ran in (needed for state checks)."""
    try:
        return bool(check_spec(task.check, trajectory, env))
    except (OSError, sqlite3.Error):  # the state cannot be read: not verified
        return False
