"""A run directory: `state.json`, checkpoints, `metrics.jsonl`, each written so that a run
killed at any moment resumes from its last complete piece; and `load_policy`, which reads back
a checkpoint's policy (or any saved policy directory)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tooltune.config import ConfigError
from tooltune.jsonl import read_jsonl


class RunDirectory:
    """A run directory: state, checkpoints and logs, each written atomically."""

    tracker: Any = None  # also gets every metrics row (training.tracking)

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = directory / "state.json"

    def load_state(self) -> dict[str, Any] | None:
        if not self.state_path.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{self.state_path} is corrupt ({exc}); rerun with --fresh") from None
        if not isinstance(state, dict) or "completed" not in state:
            raise ConfigError(f"{self.state_path} is not a tooltune run state; rerun with --fresh")
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        write_atomic(self.state_path, json.dumps(state, indent=2))

    def checkpoint(self, name: str, policy: Any, extra: dict[str, Any] | None = None) -> str:
        """Write `checkpoints/<name>` completely, then swap it in; returns its relative path."""
        final = self.dir / "checkpoints" / name
        tmp = final.with_name(f".{name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        policy.save(tmp / "policy")
        if extra:
            torch.save(extra, tmp / "trainer.pt")
        (tmp / "COMPLETE").write_text("ok")
        old = final.with_name(f".{name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return str(final.relative_to(self.dir))

    def checkpoint_dir(self, relative: str) -> Path:
        """The directory of a checkpoint `state.json` names. A process killed between
        `checkpoint`'s two renames left it as `.<name>.old` (the new one, never named by
        `state.json`, is still `.<name>.tmp`): it is put back."""
        final = self.dir / relative
        old = final.with_name(f".{final.name}.old")
        if not final.exists() and (old / "COMPLETE").exists():
            old.rename(final)
        return final

    def log_metrics(self, row: dict[str, Any]) -> None:
        with (self.dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tracker is not None:
            self.tracker.log(row)

    def trim(self, name: str, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop JSONL rows written after the checkpoint a resumed run starts from."""
        path = self.dir / name
        if path.exists():
            rows = [row for _, row in read_jsonl(path, torn_tail=True)]
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows if keep(r)))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_policy(directory: str | Path, dtype: str = "auto", device: str | None = None) -> Any:
    """A saved policy directory: the built-in format or a Hugging Face model (its frozen
    weights in ``dtype``, see `tooltune.policies.hf.resolve_dtype`, on ``device``). Its
    ``prompt_format`` is the directory's `tooltune.prompt_format.PromptFormat`, None when
    it has none (saved before formats were recorded, or a model tooltune did not train)."""
    directory = Path(directory)
    meta_path = directory / "config.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{meta_path} is corrupt: {exc}") from None
        if meta.get("format") == "tooltune-builtin":
            from tooltune.policies import BuiltinPolicy

            return BuiltinPolicy.load(directory)
    from tooltune.policies import HFPolicy
    from tooltune.policies.hf import default_device

    return HFPolicy.from_pretrained(directory, dtype=dtype, device=device or default_device())
