import json

import pytest

from tooltune.jsonl import read_jsonl
from tooltune.training.run_dir import RunDirectory


def test_rows_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n  \n[2]\n"three"\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, [2]), (5, "three")]


def test_a_bad_line_names_the_file_and_line_wherever_it_is(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: not valid JSON"):
        list(read_jsonl(path))
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: not valid JSON"):
        list(read_jsonl(path, torn_tail=True))  # not the last line: corrupt, not torn


def test_a_torn_last_line_is_dropped_only_when_asked(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b"')  # the writer died mid-line
    assert list(read_jsonl(path, torn_tail=True)) == [(1, {"a": 1})]
    with pytest.raises(ValueError, match=r":2: not valid JSON"):
        list(read_jsonl(path))
    path.write_text('{"a": 1}\n{"a": 2, "b"\n')  # a whole line that is bad: corrupt
    with pytest.raises(ValueError, match=r":2: not valid JSON"):
        list(read_jsonl(path, torn_tail=True))


def test_a_resumed_run_drops_the_log_line_a_killed_writer_left_half_written(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.log_metrics({"stage": "before", "accuracy": 0.5})
    run.log_metrics({"stage": "sft", "loss": 1.0})
    with (run.dir / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "after_sft", "accur')
    run.trim("metrics.jsonl", lambda row: row["stage"] in ("before", "sft"))
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["before", "sft"]
    run.log_metrics({"stage": "after_sft", "accuracy": 0.75})  # appends on a whole line
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["before", "sft", "after_sft"]
