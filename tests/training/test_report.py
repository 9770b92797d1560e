"""The run report: one accuracy row per tier, the no-tool tier's included."""

from tooltune.config import AgentConfig
from tooltune.training.pipeline import PipelineSettings
from tooltune.training.report import (
    accuracy_table,
    failures_table,
    shapes_table,
    summarise,
    write_report,
)

TIER_ROWS = ["Simple", "Multi-Tool Seq", "Multi-Tool Par", "Complex", "No tool needed"]


def _stage(no_tool):
    accuracy = {"simple": 0.5, "multi_tool_seq": 0.25, "multi_tool_par": 0.0, "complex": 0.0,
                "no_tool": no_tool, "overall": 0.3}  # fmt: skip
    return {"accuracy": accuracy, "n_tasks": 20, "avg_steps": 2.0, "tool_call_failure_rate": 0.1,
            "unplanned_failure_rate": 0.1, "unnecessary_call_rate": 0.2, "parallel_call_rate": 0.5}  # fmt: skip


def test_the_report_has_a_no_tool_needed_row(tmp_path):
    metrics = {"before": _stage(0.0), "after_sft": _stage(0.75), "after_grpo": _stage(1.0)}
    summary = summarise(metrics, 20)
    assert summary["after_sft"]["accuracy"]["no_tool"] == 0.75  # metrics.json has the tier
    rows = accuracy_table(summary)
    assert [r[0] for r in rows[1:]] == TIER_ROWS
    assert rows[-1] == ["No tool needed", "0%", "75%", "100%", "-"]  # the seed sets no target
    write_report(tmp_path, metrics, {}, PipelineSettings(), AgentConfig(), 20, 60.0,
                 sft_source="797 expert demonstrations")  # fmt: skip
    report = (tmp_path / "report.md").read_text()
    assert "| No tool needed | 0% | 75% | 100% | - |" in report
    assert "per tier" in report and "797 expert demonstrations" in report  # what SFT really had
    assert "<td>No tool needed</td>" in (tmp_path / "report.html").read_text()
    assert "constrained" not in report
    write_report(tmp_path, metrics, {}, PipelineSettings(constrained_calls=True), AgentConfig(),
                 20, 60.0)  # fmt: skip
    assert "greedy decoding (calls constrained to" in (tmp_path / "report.md").read_text()


def test_a_tier_a_stage_did_not_evaluate_reads_as_a_dash():
    before = _stage(0.0)
    del before["accuracy"]["no_tool"]  # e.g. metrics written before the tier existed
    rows = accuracy_table(summarise({"before": before}, 16))
    assert rows[-1] == ["No tool needed", "-", "-"]


def test_seen_and_new_task_shapes_get_a_row_each():
    """Test-only templates are a fifth to a third of each tier's test tasks: the report says
    how the model does on them apart from the shapes it trained on."""
    after = _stage(0.5)
    after["by_shape"] = {"seen": {"correct": 8, "n": 10, "accuracy": 0.8},
                         "new": {"correct": 1, "n": 10, "accuracy": 0.1}}  # fmt: skip
    rows = accuracy_table(summarise({"before": _stage(0.0), "after_sft": after}, 20))
    assert rows[len(TIER_ROWS) + 1 :] == [
        ["All tiers: task shapes seen in training", "-", "80%", "-"],
        ["All tiers: new task shapes (templates only in test)", "-", "10%", "-"],
    ]


def test_failed_tasks_get_a_table_by_why_they_failed(tmp_path):
    before, after = _stage(0.0), _stage(0.5)
    before["failures"] = {"no_call": 14, "wrong_answer": 2}
    after["failures"] = {"too_few_calls": 3, "wrong_answer": 5}
    metrics = {"before": before, "after_sft": after}
    rows = failures_table(summarise(metrics, 20))
    assert rows[0] == ["Failed test tasks", "Before Training", "After SFT"]
    assert rows[1:] == [
        ["No call, where the task needs one", "14", "0"],
        ["Fewer successful calls than the task needs", "0", "3"],
        ["The calls the task needs ran; wrong answer", "2", "5"],
        ["All failed", "16", "8"],
    ]
    write_report(tmp_path, metrics, {}, PipelineSettings(), AgentConfig(), 20, 60.0)
    assert "## Why test tasks failed" in (tmp_path / "report.md").read_text()
    assert failures_table(summarise({"before": _stage(0.0)}, 20)) == []  # older metrics: none


def test_the_task_shapes_that_fail_most_get_a_table(tmp_path):
    """Per template, the last stage's failures first: where the model still fails, and whether
    training ever showed that shape."""
    before, after = _stage(0.0), _stage(0.5)
    before["by_template"] = {"calc": {"correct": 0, "n": 2, "tier": "simple", "new_shape": False}}
    after["by_template"] = {
        "calc": {"correct": 2, "n": 2, "tier": "simple", "new_shape": False},
        "book": {"correct": 1, "n": 4, "tier": "complex", "new_shape": False},
        "hq_mayor": {"correct": 0, "n": 3, "tier": "complex", "new_shape": True},
        "weather": {"correct": 1, "n": 2, "tier": "my_group"},  # a user's group, new unknown
    }
    rows = shapes_table(summarise({"before": before, "after_sft": after}, 20))
    assert rows == [
        ["Task shape", "Tier", "In training", "Before Training", "After SFT"],
        ["book", "Complex", "yes", "-", "1 of 4"],
        ["hq_mayor", "Complex", "no (test only)", "-", "0 of 3"],
        ["weather", "my_group", "-", "-", "1 of 2"],
    ]  # calc solved everywhere: not listed
    write_report(tmp_path, {"before": before, "after_sft": after}, {}, PipelineSettings(),
                 AgentConfig(), 20, 60.0)  # fmt: skip
    assert "| book | Complex | yes | - | 1 of 4 |" in (tmp_path / "report.md").read_text()
    assert "<td>hq_mayor</td>" in (tmp_path / "report.html").read_text()
    assert shapes_table(summarise({"after_sft": _stage(0.5)}, 20)) == []  # older metrics: none
