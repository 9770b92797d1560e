"""The report's pictures: SFT steps and GRPO steps on axes of their own, accuracy as bars, all
inside report.html as data URIs (the page needs no file beside it and no network)."""

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from tooltune.config import AgentConfig
from tooltune.training.pipeline import PipelineSettings
from tooltune.training.report import write_report
from tooltune.training.report_plots import grpo_series, read_metrics, sft_loss_series

ACC = {"simple": 0.5, "multi_tool_seq": 0.25, "multi_tool_par": 0.0, "complex": 0.0,
       "no_tool": 0.75, "overall": 0.3}  # fmt: skip
STAGE = {"accuracy": ACC, "n_tasks": 20, "avg_steps": 2.0, "tool_call_failure_rate": 0.1,
         "unplanned_failure_rate": 0.1, "unnecessary_call_rate": 0.2, "parallel_call_rate": 0.5}  # fmt: skip
METRICS = {"before": STAGE, "after_sft": STAGE, "after_grpo": STAGE}
PNG = b"\x89PNG\r\n\x1a\n"


def _rows(step_losses=((2.0, 1.5, 1.2), (1.0, 0.9, 0.8)), grpo_steps=3):
    rows = [{"stage": "before", "accuracy.overall": 0.1}]
    for epoch, losses in enumerate(step_losses, 1):
        rows.append({"stage": "sft", "epoch": epoch, "train_loss": sum(losses) / len(losses),
                     "val_loss": 1.1 / epoch, "step_loss": list(losses)})  # fmt: skip
    for step in range(grpo_steps):
        rows.append({"stage": "grpo", "step": step, "loss": 0.01, "mean_reward": 0.5 + step / 10,
                     "success_rate": 0.25 * step, "reward.outcome": 0.25 * step,
                     "reward.format": 1.0, "reward.unnecessary_calls": -0.5})  # fmt: skip
    return rows


def _write_run(tmp_path, rows):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return write_report(tmp_path, METRICS, {"loss": [9.0]}, PipelineSettings(), AgentConfig(),
                        20, 60.0)  # fmt: skip


def test_sft_steps_and_grpo_steps_are_separate_series():
    rows = _rows()
    sft = sft_loss_series(rows)
    assert sft["train loss (per step)"] == [(1, 2.0), (2, 1.5), (3, 1.2), (4, 1.0), (5, 0.9),
                                            (6, 0.8)]  # fmt: skip
    assert sft["validation loss (end of epoch)"] == [(3, 1.1), (6, 0.55)]  # at each epoch's end
    grpo = grpo_series(rows)
    assert set(grpo) == {"mean_reward", "success_rate", "reward.outcome", "reward.format",
                         "reward.unnecessary_calls"}  # fmt: skip
    assert grpo["success_rate"] == [(1, 0.0), (2, 0.25), (3, 0.5)]  # counted from 1
    assert all(x <= 3 for points in grpo.values() for x, _ in points)  # no SFT epoch among them


def test_runs_that_logged_no_steps_plot_epochs():
    rows = [{"stage": "sft", "epoch": e, "train_loss": 1.0 / e, "val_loss": None} for e in (1, 2)]
    assert sft_loss_series(rows)["train loss (per epoch)"] == [(1, 1.0), (2, 0.5)]


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "grpo", "step": 0}\n{"stage": "gr')
    assert read_metrics(path) == [{"stage": "grpo", "step": 0}]
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_the_report_embeds_every_figure(tmp_path):
    (tmp_path / "curves.png").write_bytes(PNG)  # an older report's mixed figure
    report = _write_run(tmp_path, _rows())
    for name in ("accuracy.png", "sft_loss.png", "grpo.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG), name
        assert f"]({name})" in report.read_text()
    assert not (tmp_path / "curves.png").exists()
    page = (tmp_path / "report.html").read_text()
    sources = re.findall(r"<img src='([^']*)'", page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(PNG) for s in sources)
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert page.index("Tool use accuracy") < page.index(sources[0]) < page.index("Efficiency")


def test_one_sft_epoch_is_a_sentence_and_missing_stages_draw_nothing(tmp_path):
    rows = [{"stage": "sft", "epoch": 1, "train_loss": 0.206, "val_loss": None}]
    (tmp_path / "grpo.png").write_bytes(PNG)  # an earlier report's, for a run now without GRPO
    report = _write_run(tmp_path, rows).read_text()
    assert "SFT: one epoch, train loss 0.206 (this run logged no per-step losses)." in report
    assert not (tmp_path / "sft_loss.png").exists() and not (tmp_path / "grpo.png").exists()
    assert (tmp_path / "accuracy.png").exists()


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.mark.timeout(120)
def test_a_headless_browser_shows_the_pictures(tmp_path):
    """report.html alone in a folder, opened by a real browser: the bars' colours are on the
    screen, so the embedded pictures decode and display without the PNG files or a network."""
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless Chromium on this machine (apt-get install chromium)")
    Image = pytest.importorskip("PIL.Image")
    _write_run(tmp_path, _rows())
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "report.html", alone / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--window-size=1100,2600", f"--screenshot={shot}",
                    (alone / "report.html").as_uri()], check=True, capture_output=True,
                   timeout=100)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=int)

    def near(colour):
        return int((np.abs(pixels - np.array(colour)).max(axis=-1) < 12).sum())

    assert near((0xF5, 0x85, 0x18)) > 500  # After GRPO's orange bars
    assert near((0x4C, 0x78, 0xA8)) > 500  # After SFT's blue bars
