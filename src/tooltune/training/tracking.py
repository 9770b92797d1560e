"""Where a run's metrics go besides ``metrics.jsonl``: TensorBoard or Weights & Biases
(``pipeline.report_to``, ``tooltune demo --report-to``, named as TRL names it).

Every row the pipeline writes to ``metrics.jsonl`` is sent as it is written, with the same
names under the stage that wrote it: ``grpo/loss``, ``grpo/success_rate``, ``sft/train_loss``,
``eval/accuracy.simple``... The x axis is the row's own: the GRPO step, the SFT or reward-model
epoch; evaluations are ``eval/...`` at 0 (before training), 1 (after SFT) and 2 (after GRPO).

Neither package is a dependency (``pip install 'tooltune[track]'`` brings TensorBoard). A
missing one is a `ConfigError` naming the fix when the settings are read, before any work, never
a crash mid-run. W&B runs offline with ``WANDB_MODE=offline`` (no network, no account).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from tooltune.config import ConfigError

REPORT_TO = ("none", "tensorboard", "wandb")
EVAL_STAGES = ("before", "after_sft", "after_grpo")  # x = their index
AXES = ("step", "epoch")  # a row's own x, in this order
_NEEDS = {
    "tensorboard": ("tensorboard", "pip install 'tooltune[track]' (or pip install tensorboard)"),
    "wandb": ("wandb", "pip install wandb"),
}


class Tracker(Protocol):
    def log(self, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def check_report_to(report_to: str) -> None:
    """Refuse an unknown name or a missing package now, before a run starts."""
    if report_to not in REPORT_TO:
        raise ConfigError(f"pipeline.report_to must be one of {', '.join(REPORT_TO)}, "
                          f"got {report_to!r}")  # fmt: skip
    if report_to in _NEEDS:
        module, fix = _NEEDS[report_to]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--report-to {report_to} needs the {module} package, which is "
                              f"not installed: {fix}; or --report-to none")  # fmt: skip


def make_tracker(
    report_to: str, run_dir: str | Path, config: Mapping[str, Any] | None = None
) -> Tracker | None:
    """The tracker for `report_to` writing beside `run_dir`'s metrics (None for ``none``)."""
    check_report_to(report_to)
    if report_to == "tensorboard":
        return TensorBoardTracker(Path(run_dir) / "tensorboard")
    if report_to == "wandb":
        return WandbTracker(Path(run_dir), dict(config or {}))
    return None


def scalars(row: Mapping[str, Any]) -> tuple[str, str, int, dict[str, float]]:
    """(section, x name, x, numbers) of one metrics.jsonl row; text and lists are left out."""
    stage = str(row.get("stage", "run"))
    if stage in EVAL_STAGES:
        section, axis, x = "eval", "stage", EVAL_STAGES.index(stage)
    else:
        axis = next((key for key in AXES if key in row), "step")
        section, x = stage, int(row.get(axis, 0))
    values = {
        key: float(value)
        for key, value in row.items()
        if key not in ("stage", *AXES) and isinstance(value, int | float)
    }
    return section, axis, x, values


class TensorBoardTracker:
    """Event files under ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``), flushed
    after every row, so a killed run loses nothing it logged."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # installed but broken, or too old for torch
            raise ConfigError(f"--report-to tensorboard cannot load TensorBoard ({exc}): "
                              f"{_NEEDS['tensorboard'][1]}") from None  # fmt: skip
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))
        atexit.register(self.close)

    def log(self, row: Mapping[str, Any]) -> None:
        section, _, x, values = scalars(row)
        for key, value in values.items():
            self.writer.add_scalar(f"{section}/{key}", value, global_step=x)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()  # a later add_scalar reopens it


class WandbTracker:
    """A W&B run (project ``$WANDB_PROJECT`` or tooltune) with its files under
    ``RUN_DIR/wandb``; each stage plots against its own x (``define_metric``)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as exc:  # installed but broken
            raise ConfigError(f"--report-to wandb cannot load wandb ({exc}): "
                              f"{_NEEDS['wandb'][1]}") from None  # fmt: skip
        self.wandb = wandb
        self.run_dir = run_dir
        self.config = config
        self.run: Any = None
        self.axes: set[str] = set()
        self._start()

    def _start(self) -> None:
        try:
            self.run = self.wandb.init(
                project=os.environ.get("WANDB_PROJECT", "tooltune"),
                name=self.run_dir.name,
                dir=str(self.run_dir),
                config=self.config,
            )
        except Exception as exc:  # no account, no network: wandb's own errors vary
            raise ConfigError(f"--report-to wandb could not start a run ({exc}); without an "
                              "account or network, set WANDB_MODE=offline") from None  # fmt: skip
        self.axes = set()

    def log(self, row: Mapping[str, Any]) -> None:
        if self.run is None:
            self._start()
        section, axis, x, values = scalars(row)
        if section not in self.axes:
            self.run.define_metric(f"{section}/{axis}")
            self.run.define_metric(f"{section}/*", step_metric=f"{section}/{axis}")
            self.axes.add(section)
        self.run.log({f"{section}/{axis}": x, **{f"{section}/{k}": v for k, v in values.items()}})

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def peak_memory_gb() -> float | None:
    """The process's peak resident memory so far, in GB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def peak_gpu_memory_gb() -> float | None:
    """The peak of the CUDA memory torch allocated so far (current device), in GB; None where
    this process has not used CUDA (the resident memory above does not count GPU memory)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**30
