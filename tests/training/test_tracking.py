"""--report-to: metrics.jsonl's rows also go to TensorBoard or W&B, with each stage's own x."""

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from tooltune.cli import main
from tooltune.config import AgentConfig, ConfigError
from tooltune.training import tracking
from tooltune.training.pipeline import AgentTrainingPipeline, PipelineSettings
from tooltune.training.run_dir import RunDirectory

ROWS = [
    {"stage": "before", "accuracy.simple": 0.25, "avg_steps": 2, "note": "text is left out"},
    {"stage": "sft", "epoch": 1, "train_loss": 3.5, "val_loss": 3.0},
    {"stage": "sft", "epoch": 2, "train_loss": 2.5, "val_loss": 2.0},
    {"stage": "after_sft", "accuracy.simple": 0.5, "avg_steps": 3},
    {"stage": "grpo", "step": 0, "loss": 0.5, "kl": 0.0, "clip_fraction": 0.1, "skipped": 1},
    {"stage": "grpo", "step": 1, "loss": 0.25, "kl": 0.01, "clip_fraction": 0.2, "skipped": 0},
    {"stage": "after_grpo", "accuracy.simple": 0.75, "avg_steps": 2.5},
]


def test_each_row_is_plotted_against_its_own_x():
    assert tracking.scalars(ROWS[0]) == ("eval", "stage", 0, {"accuracy.simple": 0.25,
                                                               "avg_steps": 2.0})  # fmt: skip
    assert tracking.scalars(ROWS[2])[:3] == ("sft", "epoch", 2)
    assert tracking.scalars(ROWS[5]) == (
        "grpo", "step", 1, {"loss": 0.25, "kl": 0.01, "clip_fraction": 0.2, "skipped": 0.0})  # fmt: skip
    assert tracking.scalars(ROWS[6])[:3] == ("eval", "stage", 2)
    assert tracking.scalars({"stage": "copy_drill", "loss_end": 1.0})[:3] == (
        "copy_drill",
        "step",
        0,
    )


def read_events(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in TensorBoard's event files, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}  # fmt: skip


def test_tensorboard_gets_every_row_as_the_run_logs_it(tmp_path):
    pytest.importorskip("tensorboard")
    run = RunDirectory(tmp_path)
    run.tracker = tracking.make_tracker("tensorboard", tmp_path)
    for row in ROWS[:5]:
        run.log_metrics(row)
    assert read_events(tmp_path / "tensorboard")["grpo/loss"] == [(0, 0.5)]  # flushed already
    for row in ROWS[5:]:
        run.log_metrics(row)
    run.tracker.close()
    scalars = read_events(tmp_path / "tensorboard")
    assert scalars["eval/accuracy.simple"] == [(0, 0.25), (1, 0.5), (2, 0.75)]
    assert scalars["sft/train_loss"] == [(1, 3.5), (2, 2.5)]
    assert [s for s, _ in scalars["grpo/clip_fraction"]] == [0, 1]
    assert not any("note" in tag for tag in scalars)
    assert len(run.dir.joinpath("metrics.jsonl").read_text().splitlines()) == len(ROWS)


def wandb_history(path: Path) -> list[dict]:
    """The logged rows of an offline W&B run file (LevelDB-style log: 32 KiB blocks of chunks
    with a 7-byte header each, after W&B's own 7-byte header; one Record protobuf a record)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending, rows = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                             for i in items})  # fmt: skip
    return rows


def test_wandb_offline_logs_without_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDirectory(tmp_path / "run")
    run.tracker = tracking.make_tracker("wandb", run.dir, {"pipeline": {"grpo_steps": 2}})
    for row in ROWS:
        run.log_metrics(row)
    run.tracker.close()
    (offline,) = (run.dir / "wandb").glob("offline-run-*/run-*.wandb")
    logged = [{k: v for k, v in r.items() if not k.startswith("_")} for r in wandb_history(offline)]
    assert len(logged) == len(ROWS)
    assert logged[5] == {"grpo/step": 1, "grpo/loss": 0.25, "grpo/kl": 0.01,
                         "grpo/clip_fraction": 0.2, "grpo/skipped": 0}  # fmt: skip
    assert logged[6] == {"eval/stage": 2, "eval/accuracy.simple": 0.75, "eval/avg_steps": 2.5}
    assert logged[2] == {"sft/epoch": 2, "sft/train_loss": 2.5, "sft/val_loss": 2.0}


def test_none_writes_nothing_and_is_the_default(tmp_path):
    assert PipelineSettings().report_to == "none"
    assert tracking.make_tracker("none", tmp_path) is None
    pipeline = AgentTrainingPipeline(None, AgentConfig(), PipelineSettings(), tmp_path / "run")
    assert pipeline.run.tracker is None
    pipeline.run.log_metrics(ROWS[0])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl"]


def test_a_run_resumes_whatever_it_reports_to(tmp_path):
    from dataclasses import asdict

    config, settings = AgentConfig(), PipelineSettings(report_to="none")
    pipeline = AgentTrainingPipeline(None, config, settings, tmp_path / "run")
    saved = asdict(settings)
    for report_to in ("tensorboard", None):  # another target, or a run from before the field
        state = {"config": config.to_dict(), "settings": {**saved, "report_to": report_to}}
        if report_to is None:
            del state["settings"]["report_to"]
        pipeline._check_same_run(state)
    with pytest.raises(ConfigError, match="another configuration"):
        pipeline._check_same_run(
            {"config": config.to_dict(), "settings": {**saved, "grpo_steps": 1}}
        )


def test_a_run_from_before_a_setting_resumes_and_a_changed_one_is_named(tmp_path):
    """A setting the saved run does not name counts as its default (the run predates it); a
    setting that differs is named in the error."""
    from dataclasses import asdict

    config, settings = AgentConfig(), PipelineSettings()
    pipeline = AgentTrainingPipeline(None, config, settings, tmp_path / "run")
    older = {k: v for k, v in config.to_dict().items() if k != "composition_tasks"}
    pipeline._check_same_run({"config": older, "settings": asdict(settings)})
    with pytest.raises(ConfigError, match=r"\(composition_tasks, pipeline.grpo_steps differ\)"):
        pipeline._check_same_run({"config": {**older, "composition_tasks": True},
                                  "settings": {**asdict(settings), "grpo_steps": 1}})  # fmt: skip
    with pytest.raises(ConfigError, match="no readable configuration"):
        pipeline._check_same_run({"config": None, "settings": asdict(settings)})


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_missing_package_is_named_before_the_run_starts(tmp_path, monkeypatch, capsys, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda module, *a: None if module == name else real(module, *a))  # fmt: skip
    with pytest.raises(ConfigError, match=f"pip install .*{name}"):
        PipelineSettings(report_to=name)
    args = ["demo", "--preset", "smoke", "--out", str(tmp_path / "run"), "--report-to", name]
    assert main([*args, "--world", str(tmp_path / "world")]) == 2
    err = capsys.readouterr().err
    assert f"--report-to {name} needs the {name} package" in err and "pip install" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "world").exists()
    with pytest.raises(ConfigError, match="one of none, tensorboard, wandb"):
        PipelineSettings(report_to="mlflow")


@pytest.mark.timeout(900)  # a whole (small) pipeline run: 10-25 s quiet, minutes on a busy machine
def test_a_demo_run_reports_to_tensorboard_what_metrics_jsonl_holds(tmp_path):
    pytest.importorskip("tensorboard")
    sets = ["pipeline.grpo_steps=2", "pipeline.sft_tasks=16", "sft_epochs=1",
            "pipeline.val_tasks=0", "pipeline.eval_tasks_per_tier=1", "pipeline.copy_drill_steps=4",
            "pipeline.reward_model_tasks=4", "max_new_tokens=24"]  # fmt: skip
    run = tmp_path / "run"
    args = ["demo", "--preset", "smoke", "--out", str(run), "--world", str(tmp_path / "world"),
            *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    assert main([*args, "--report-to", "tensorboard"]) == 0
    scalars = read_events(run / "tensorboard")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} >= {"before", "sft", "reward_model", "grpo", "after_grpo"}
    for row in rows:  # every number of every row, at its x
        section, _, x, values = tracking.scalars(row)
        for key, value in values.items():
            assert (x, pytest.approx(value, rel=1e-6, abs=1e-6)) in scalars[f"{section}/{key}"]
    assert [x for x, _ in scalars["grpo/loss"]] == [0, 1]
    assert [x for x, _ in scalars["eval/accuracy.simple"]] == [0, 1, 2]
    assert json.loads((run / "config.json").read_text())["pipeline"]["report_to"] == "tensorboard"
    # where metrics go is no part of a run's identity: it resumes (here: finishes) with another
    assert main(args) == 0


def test_peak_gpu_memory_is_reported_only_where_cuda_was_used(monkeypatch):
    """The stage lines' GPU peak: None in a process that never used CUDA (every CPU run, whose
    lines stay as they were), else torch's peak of allocated CUDA memory in GB."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert tracking.peak_gpu_memory_gb() is None
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**29)
    assert tracking.peak_gpu_memory_gb() == 1.5
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tracking.peak_gpu_memory_gb() is None
