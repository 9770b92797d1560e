"""The run report: the reference design's two tables on held-out test tasks, plus pictures.

`metrics.json` is the machine-readable form; `report.md` and `report.html` are for people. The
pictures (`report_plots`: accuracy per tier and stage, SFT loss per step, GRPO reward per term
and success rate per step) are PNG files beside report.md and data URIs inside report.html, so
the page shows them opened from anywhere, with no network.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tooltune.config import TIER_LABELS, AgentConfig, TaskTier
from tooltune.evaluation import FAILURES, TIERS
from tooltune.training.report_plots import (
    Figure,
    data_uri,
    read_metrics,
    sft_caption,
    write_figures,
)

STAGE_NAMES = {"before": "Before Training", "after_sft": "After SFT", "after_grpo": "After GRPO"}
# The seed's targets; it sets none for the no-tool tier.
SEED_ACCURACY = {"simple": 0.96, "multi_tool_seq": 0.88, "multi_tool_par": 0.85, "complex": 0.74}
SHAPE_LABELS = {"seen": "All tiers: task shapes seen in training",
                "new": "All tiers: new task shapes (templates only in test)"}  # fmt: skip
KEYS = ("avg_steps", "tool_call_failure_rate", "unplanned_failure_rate", "unnecessary_call_rate",
        "parallel_call_rate")  # fmt: skip


def summarise(metrics: dict[str, Any], n_test: int) -> dict[str, Any]:
    """The fields of metrics.json for each evaluated stage."""
    out: dict[str, Any] = {}
    for stage in STAGE_NAMES:
        if stage not in metrics:
            continue
        m = metrics[stage]
        row = {"accuracy": {g: m["accuracy"][g] for g in _groups(m["accuracy"])}}
        row["accuracy"]["overall"] = m["accuracy"].get("overall")
        row.update({k: m[k] for k in KEYS if k in m})
        row["n_test_tasks"] = m.get("n_tasks", n_test)
        if "heldout_tools" in m:
            row["heldout_tools"] = m["heldout_tools"]
        if "by_shape" in m:
            row["by_shape"] = m["by_shape"]
        if "failures" in m:
            row["failures"] = m["failures"]
        if "by_template" in m:
            row["by_template"] = m["by_template"]
        out[stage] = row
    if metrics.get("reward_model"):  # scalars only: the split's task ids stay in state.json
        lists = ("tasks", "train_loss", "val_loss")
        out["reward_model"] = {k: v for k, v in metrics["reward_model"].items() if k not in lists}
    return out


def _groups(accuracy: dict[str, Any]) -> list[str]:
    """The groups of an accuracy row (the built-in tiers, or a user environment's groups)."""
    return [g for g in accuracy if g != "overall"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def accuracy_table(summary: dict[str, Any]) -> list[list[str]]:
    stages = [s for s in STAGE_NAMES if s in summary]
    groups = list(dict.fromkeys(g for s in stages for g in _groups(summary[s]["accuracy"])))
    builtin = bool(groups) and set(groups) <= {t.value for t in TaskTier}
    if builtin:  # every tier, a dash where a stage did not evaluate it (an older run's)
        groups = [t.value for t in TaskTier]
    rows = [["Task Tier" if builtin else "Group", *(STAGE_NAMES[s] for s in stages)]
            + (["Seed target (after GRPO)"] if builtin else [])]  # fmt: skip
    for group in groups:
        name = TIER_LABELS[TaskTier(group)] if builtin else group
        rows.append([name, *(_pct(summary[s]["accuracy"].get(group)) for s in stages)]
                    + ([_pct(SEED_ACCURACY.get(group))] if builtin else []))  # fmt: skip
    if not builtin and len(groups) > 1:
        rows.append(["Overall", *(_pct(summary[s]["accuracy"].get("overall")) for s in stages)])
    for shape, label in SHAPE_LABELS.items():
        if any(shape in summary[s].get("by_shape", {}) for s in stages):
            cells = [summary[s].get("by_shape", {}).get(shape) for s in stages]
            rows.append([label, *(_pct(c["accuracy"]) if c else "-" for c in cells)]
                        + (["-"] if builtin else []))  # fmt: skip
    if any("heldout_tools" in summary[s] for s in stages):
        rows.append(["Held-out tools (never trained on)",
                     *(f"{summary[s]['heldout_tools']['accuracy']:.0%}" if "heldout_tools" in summary[s]
                       else "-" for s in stages), *(["-"] if builtin else [])])  # fmt: skip
    return rows


def efficiency_table(summary: dict[str, Any]) -> list[list[str]]:
    stages = [s for s in STAGE_NAMES if s in summary]
    builtin = not stages or set(_groups(summary[stages[0]]["accuracy"])) == set(SEED_ACCURACY)
    rows = [
        ["Metric", *(STAGE_NAMES[s] for s in stages), *(["Seed target (after)"] if builtin else [])]
    ]
    labels = [("avg_steps", "Avg. Steps per Task", "{:.2f}", "3.1"),
              ("tool_call_failure_rate", "Tool Call Failures (all)", "{:.1%}", "4%"),
              ("unplanned_failure_rate", "Tool Call Failures (not planted by the task)", "{:.1%}", "4%"),
              ("unnecessary_call_rate", "Unnecessary Tool Calls", "{:.1%}", "8%"),
              ("parallel_call_rate", "Parallel calls on Multi-Tool Par", "{:.0%}", "-")]  # fmt: skip
    for key, label, fmt, target in labels:
        if all(key in summary[s] and summary[s][key] is not None for s in stages):
            rows.append([label, *(fmt.format(summary[s][key]) for s in stages),
                         *([target] if builtin else [])])  # fmt: skip
    return rows


def failures_table(summary: dict[str, Any]) -> list[list[str]]:
    """Failed test tasks per stage, by why they failed (`evaluation.why_failed`); no rows for
    runs whose metrics predate the count."""
    stages = [s for s in STAGE_NAMES if "failures" in summary.get(s, {})]
    rows = [["Failed test tasks", *(STAGE_NAMES[s] for s in stages)]]
    for key, label in FAILURES.items():
        if any(summary[s]["failures"].get(key) for s in stages):
            rows.append([label, *(str(summary[s]["failures"].get(key, 0)) for s in stages)])
    if len(rows) > 1:
        rows.append(["All failed", *(str(sum(summary[s]["failures"].values())) for s in stages)])
    return rows if len(rows) > 1 else []


def shapes_table(summary: dict[str, Any], top: int = 10) -> list[list[str]]:
    """The `top` task shapes (templates) with the most failed test tasks at the last stage, and
    how each stage did on them: where the model still fails, at a glance. Empty where the
    tasks name no templates, or only one."""
    stages = [s for s in STAGE_NAMES if summary.get(s, {}).get("by_template")]
    if not stages or len(summary[stages[-1]]["by_template"]) < 2:
        return []
    last = summary[stages[-1]]["by_template"]
    failing = sorted((t for t in last if last[t]["n"] > last[t]["correct"]),
                     key=lambda t: (last[t]["correct"] - last[t]["n"], t))[:top]  # fmt: skip
    rows = [["Task shape", "Tier", "In training", *(STAGE_NAMES[s] for s in stages)]]
    for t in failing:
        tier = last[t].get("tier") or "-"
        trained = {True: "no (test only)", False: "yes"}.get(last[t].get("new_shape"), "-")
        cells = [summary[s]["by_template"].get(t) for s in stages]
        rows.append([t or "-", TIER_LABELS[TaskTier(tier)] if tier in TIERS else tier,
                     trained, *(f"{c['correct']} of {c['n']}" if c else "-" for c in cells)])  # fmt: skip
    return rows if len(rows) > 1 else []


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _reward_model_text(summary: dict[str, Any]) -> str:
    """The reward model stage in a sentence (empty when it did not run)."""
    if "reward_model" not in summary:
        return ""
    from tooltune.training.reward_stage import describe

    return (f"Trained on {describe(summary['reward_model'])}. Accuracy: success predicted where "
            "the task-completion logit is > 0; labels from the task verifiers.")  # fmt: skip


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;"
    "color:#222;line-height:1.45}table{border-collapse:collapse;margin:1rem 0}"
    "td,th{border:1px solid #ccc;padding:.3rem .7rem;text-align:right}"
    "td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}"
    "figure{margin:1rem 0 2rem}img{max-width:100%;height:auto;border:1px solid #eee}"
    "figcaption{color:#555;font-size:.9rem}code{background:#f4f4f4;padding:0 .2rem}"
)


def _code_html(text: str) -> str:
    """Markdown's `code` spans as <code>, the rest escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _figure_html(figure: Figure) -> str:
    caption = html.escape(figure.caption)
    return (f"<figure><img src='{data_uri(figure.path)}' alt='{html.escape(figure.alt)}'>"
            f"<figcaption>{caption}</figcaption></figure>")  # fmt: skip


def _resumed_text(processes: int) -> str:
    if processes <= 1:
        return ""
    times = "once" if processes == 2 else f"{processes - 1} times"
    return (f" in {processes} processes (resumed {times}; the time a stopped process spent after"
            " its last checkpoint is not counted)")  # fmt: skip


def write_report(
    run_dir: str | Path,
    metrics: dict[str, Any],
    history: dict[str, list[float]] | None,
    settings: Any,
    config: AgentConfig,
    n_test: int,
    elapsed_s: float,
    sft_source: str | None = None,
    per: str = "tier",
    processes: int = 1,
) -> Path:
    """Write metrics.json, report.md, report.html and the figures. The curves come from the run's
    `metrics.jsonl`; `history` (the pipeline's one list of SFT epochs then GRPO steps) is not
    read any more and stays in the signature for callers. `sft_source` says what SFT learned
    from (default: the built-in world's expert demonstrations); `per` names what the test tasks
    are counted per ("tier", or a user environment's "group"); `processes`, how many processes
    a resumed run took (`elapsed_s` is their time together)."""
    run_dir = Path(run_dir)
    summary = summarise(metrics, n_test)
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "curves.png").unlink(missing_ok=True)  # older reports' one mixed figure
    rows = read_metrics(run_dir / "metrics.jsonl")
    stages = [s for s in STAGE_NAMES if s in summary]
    builtin = bool(stages) and all(set(_groups(summary[s]["accuracy"])) <= set(SEED_ACCURACY)
                                   | {"no_tool"} for s in stages)  # fmt: skip
    drawn = write_figures(run_dir, summary, rows, SEED_ACCURACY if builtin else None)
    figures = {f.kind: f for f in drawn}
    training = [figures[k] for k in ("sft", "grpo") if k in figures]
    sft_note = "" if "sft" in figures else sft_caption(rows)  # one epoch: a sentence
    acc, eff = accuracy_table(summary), efficiency_table(summary)
    title = f"tooltune run: {run_dir.name}"
    decoding = "greedy decoding"
    if getattr(settings, "constrained_calls", False):
        decoding += " (calls constrained to the tools' schemas)"
    facts = (f"Model `{settings.model}`" + (f" ({settings.model_size})" if settings.model == "builtin" else "")
             + f"; {n_test} held-out test tasks ({settings.eval_tasks_per_tier} per "
             + per
             + (f", the first {settings.before_tasks_per_tier} of each before training"
                if getattr(settings, "before_tasks_per_tier", 0) else "") + f"), {decoding},"
             f" real tools; {sft_source or f'{settings.sft_tasks} expert demonstrations'};"
             f" {settings.grpo_steps} GRPO steps of"
             f" {config.batch_size} tasks x {config.num_generations} samples ({config.reward_baseline} baseline);"
             f" wall time {elapsed_s / 60:.1f} min{_resumed_text(processes)}.")  # fmt: skip
    reward_model = _reward_model_text(summary)
    sections = [("Tool use accuracy", acc, figures.get("accuracy")), ("Efficiency", eff, None)]
    if failed := failures_table(summary):
        sections.append(("Why test tasks failed", failed, None))
    if shapes := shapes_table(summary):
        sections.append(("Task shapes with the most failed test tasks", shapes, None))
    footer = ("Configuration: `config.json`; per-step log: `metrics.jsonl`; sample episodes: "
              "`trajectories.jsonl`.")  # fmt: skip

    md = [f"# {title}", "", facts, ""]
    for heading, table, figure in sections:
        md += [f"## {heading}", "", _markdown(table), ""]
        if figure is not None:
            md += [f"![{figure.alt}]({figure.path.name})", ""]
    if reward_model:
        md += ["## Reward model", "", reward_model, ""]
    if training or sft_note:
        md += ["## Training curves", "", *([sft_note, ""] if sft_note else [])]
        md += [f"![{f.alt}]({f.path.name})\n\n*{f.caption}*\n" for f in training]
    md.append(footer)
    (run_dir / "report.md").write_text("\n".join(md) + "\n")

    page = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width,initial-scale=1'>",
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1><p>{_code_html(facts)}</p>"]  # fmt: skip
    for heading, table, figure in sections:
        page += [f"<h2>{heading}</h2>", _html_table(table)]
        if figure is not None:
            page.append(_figure_html(figure))
    if reward_model:
        page.append(f"<h2>Reward model</h2><p>{html.escape(reward_model)}</p>")
    if training or sft_note:
        page.append("<h2>Training curves</h2>")
        page += [f"<p>{html.escape(sft_note)}</p>"] if sft_note else []
        page += [_figure_html(f) for f in training]
    settings_json = html.escape(json.dumps(asdict(settings), indent=2))
    page += [f"<p>{_code_html(footer)}</p>",
             f"<details><summary>Settings</summary><pre>{settings_json}</pre></details>",
             "</body></html>"]  # fmt: skip
    (run_dir / "report.html").write_text("\n".join(page))
    return run_dir / "report.md"
