"""The report's pictures, one question each: did SFT's loss fall (per optimizer step), what did
GRPO reward and how often did it succeed (per GRPO step, per reward term), and how did each tier's
test accuracy move from stage to stage (grouped bars).

SFT epochs and GRPO steps are different units, so they never share an axis. Everything is read
from `metrics.jsonl` rows, so an old run directory can be re-plotted. The pictures go into
`report.html` as data URIs (the page needs no network and no file beside it) and into
`report.md` as file links.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tooltune.config import TIER_LABELS, TaskTier

# The file names a run directory gets, in the order the report shows them.
FIGURES = {"accuracy": "accuracy.png", "sft": "sft_loss.png", "grpo": "grpo.png"}
STAGE_LABELS = {"before": "Before Training", "after_sft": "After SFT", "after_grpo": "After GRPO"}
STAGE_COLOURS = {"before": "#9e9e9e", "after_sft": "#4c78a8", "after_grpo": "#f58518"}
DPI = 110
CAPTIONS = {
    "accuracy": "Test accuracy per tier and stage (the table above, as bars).",
    "sft": "SFT: loss on the model's own tokens per optimizer step",
    "grpo": "GRPO, per step: each reward term's mean over the step's samples, unweighted, and the "
    "weighted total that GRPO's advantages come from (left); the share of samples whose answer "
    "verified (right).",
}


ALT = {"accuracy": "Accuracy per tier and stage", "sft": "SFT loss per step",
       "grpo": "GRPO reward terms and success rate per step"}  # fmt: skip


@dataclass
class Figure:
    kind: str  # a key of FIGURES
    path: Path
    caption: str

    @property
    def alt(self) -> str:
        return ALT[self.kind]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl` ([] when there is none); a torn last line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a run killed mid-write
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: the report is written by runs on servers
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def sft_loss_series(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(x, loss) points of SFT: per optimizer step where the rows carry `step_loss`, else per
    epoch; validation loss per epoch, at the step that ends the epoch."""
    train_steps: list[tuple[float, float]] = []
    train_epochs: list[tuple[float, float]] = []
    val: list[tuple[float, float]] = []
    step = 0
    for row in rows:
        if row.get("stage") != "sft":
            continue
        losses = [float(x) for x in row.get("step_loss") or []]
        train_steps += [(step + i + 1, loss) for i, loss in enumerate(losses)]
        step += len(losses)
        epoch = int(row.get("epoch", len(train_epochs) + 1))
        if row.get("train_loss") is not None:
            train_epochs.append((epoch, float(row["train_loss"])))
        if row.get("val_loss") is not None:
            val.append((step if losses else epoch, float(row["val_loss"])))
    if train_steps:
        return {"train loss (per step)": train_steps, "validation loss (end of epoch)": val}
    return {"train loss (per epoch)": train_epochs, "validation loss": val}


def plot_sft(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """SFT's loss on the model's own tokens, per step (or epoch for runs that logged no steps)."""
    series = {k: v for k, v in sft_loss_series(rows).items() if v}
    if max((len(v) for k, v in series.items() if "train" in k), default=0) < 2:
        return None  # one epoch's mean is a point, not a curve
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    per_step = any("per step" in name for name in series)
    for name, points in series.items():
        xs, ys = zip(*points, strict=True)
        few = len(points) < 30 or "validation" in name
        ax.plot(xs, ys, label=name, marker="o" if few else None, linewidth=1.4,
                linestyle="--" if "validation" in name else "-")  # fmt: skip
    ax.set_title("SFT: loss on the model's own tokens")
    ax.set_xlabel("SFT optimizer step" if per_step else "SFT epoch")
    ax.set_ylabel("loss (nats per token)")
    _integer_ticks(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def grpo_series(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Per GRPO step: the mean reward, each reward term (`reward.<term>`) and the success rate."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row.get("stage") != "grpo" or "step" not in row:
            continue
        step = int(row["step"]) + 1  # steps are logged from 0; people count updates from 1
        for key, value in row.items():
            if isinstance(value, int | float) and (
                key in ("mean_reward", "success_rate") or key.startswith("reward.")
            ):
                out.setdefault(key, []).append((step, float(value)))
    return out


def plot_grpo(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Two panels: reward (total and per term) and the success rate, per GRPO step."""
    series = grpo_series(rows)
    if not series:
        return None
    plt = _pyplot()
    fig, (reward_ax, success_ax) = plt.subplots(1, 2, figsize=(10, 3.6),
                                                gridspec_kw={"width_ratios": [3, 2]})  # fmt: skip
    n_steps = max(len(points) for points in series.values())
    marker = "o" if n_steps < 30 else None
    for key, points in series.items():
        if key == "success_rate":
            continue
        xs, ys = zip(*points, strict=True)
        total = key == "mean_reward"
        reward_ax.plot(xs, ys, marker=marker, label="total (weighted)" if total else key[7:],
                       linewidth=2.4 if total else 1.2, color="black" if total else None,
                       zorder=3 if total else 2)  # fmt: skip
    reward_ax.axhline(0, color="#888", linewidth=0.6)
    reward_ax.set_title("GRPO: reward terms, mean over samples")
    reward_ax.set_xlabel("GRPO step")
    reward_ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if "success_rate" in series:
        xs, ys = zip(*series["success_rate"], strict=True)
        success_ax.plot(xs, [100 * y for y in ys], marker=marker, color="#2ca02c")
    success_ax.set_ylim(0, 100)
    success_ax.set_title("GRPO: samples verified")
    success_ax.set_xlabel("GRPO step")
    success_ax.set_ylabel("% verified")
    for ax in (reward_ax, success_ax):
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def group_label(group: str) -> str:
    """A built-in tier's name as the tables write it; any other group as it is."""
    if group == "overall":
        return "Overall"
    try:
        return TIER_LABELS[TaskTier(group)]
    except ValueError:
        return group


def plot_accuracy(
    summary: Mapping[str, Any], path: Path, targets: Mapping[str, float] | None = None
) -> Path | None:
    """Test accuracy per tier (or group), one bar per evaluated stage, the value on each bar;
    `targets` (per group) are drawn as a black tick across the group's bars."""
    stages = [s for s in STAGE_LABELS if s in summary]
    if not stages:
        return None
    groups = list(dict.fromkeys(g for s in stages for g in summary[s]["accuracy"]
                                if g != "overall"))  # fmt: skip
    if len(groups) > 1:
        groups.append("overall")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(groups) + 2), 4.2))
    width = 0.8 / len(stages)
    for i, stage in enumerate(stages):
        values = [summary[stage]["accuracy"].get(g) for g in groups]
        xs = [g + (i - (len(stages) - 1) / 2) * width for g in range(len(groups))]
        heights = [100 * v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=STAGE_LABELS[stage], color=STAGE_COLOURS[stage])
        labels = [f"{h:.0f}" if v is not None else "n/a" for h, v in zip(heights, values, strict=True)]  # fmt: skip
        ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
    marked = [(i, 100 * targets[g]) for i, g in enumerate(groups) if g in (targets or {})]
    for n, (i, target) in enumerate(marked):
        ax.hlines(target, i - 0.45, i + 0.45, colors="black", linewidth=1.6,
                  label="Seed target (after GRPO)" if n == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(groups)), [group_label(g) for g in groups], fontsize=9)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of test tasks solved")
    ax.set_title("Test accuracy per tier and stage")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize=8,
        ncols=len(stages) + bool(marked),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        frameon=False,
    )  # below: the bars reach the top
    return _save(fig, path)


def sft_caption(rows: list[dict[str, Any]]) -> str:
    """What the SFT figure shows, or what SFT did where there is no curve to draw."""
    series = sft_loss_series(rows)
    train = next(v for k, v in series.items() if "train" in k)
    if not train:
        return ""
    val = series.get("validation loss (end of epoch)") or series.get("validation loss") or []
    if len(train) < 2:  # one epoch of a run that logged no steps: a sentence, not a figure
        return (f"SFT: one epoch, train loss {train[0][1]:.3f}"
                + (f", validation loss {val[0][1]:.3f}" if val else "")
                + " (this run logged no per-step losses).")  # fmt: skip
    per = "optimizer step" if any("per step" in k for k in series) else "epoch"
    return (f"SFT: loss on the model's own tokens per {per}, {train[0][1]:.3f} at the first and "
            f"{train[-1][1]:.3f} at the last" + ("; dashed: validation loss at the end of each "
                                                  "epoch." if val else "."))  # fmt: skip


def write_figures(
    run_dir: Path,
    summary: Mapping[str, Any],
    rows: list[dict[str, Any]],
    targets: Mapping[str, float] | None = None,
) -> list[Figure]:
    """Draw every figure the run has data for, in `FIGURES` order. Figures of an earlier report
    that this one cannot draw are removed, so no stale picture stays behind."""
    drawn = {
        "accuracy": plot_accuracy(summary, run_dir / FIGURES["accuracy"], targets),
        "sft": plot_sft(rows, run_dir / FIGURES["sft"]),
        "grpo": plot_grpo(rows, run_dir / FIGURES["grpo"]),
    }
    captions = {**CAPTIONS, "sft": sft_caption(rows)}
    for kind, made in drawn.items():
        if made is None:
            (run_dir / FIGURES[kind]).unlink(missing_ok=True)
    return [Figure(kind, made, captions[kind]) for kind, made in drawn.items() if made]


def data_uri(path: Path) -> str:
    """A PNG as a `data:` URI, so report.html shows it with no file beside it and no network."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
