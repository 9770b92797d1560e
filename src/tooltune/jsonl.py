"""Reading JSON Lines files: trajectories, task files, chats, BFCL data and a run's logs.

One reader, so that a bad line is reported the same way wherever it is read (the file and the
line number, never a bare `JSONDecodeError`), and so that a line a killed writer left half
written at the end of a run's log can be dropped when the run resumes instead of failing it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path, torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-blank line of `path`, numbered from 1. A line that is
    not JSON raises a ValueError naming `path:line`; with `torn_tail`, a last line that does not
    parse and has no newline (its writer was killed mid-line) is skipped instead."""
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                if torn_tail and not line.endswith("\n"):
                    return
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            yield number, value
