"""`bfcl run` finds each category's file in a folder in BFCL's layout (no shared data needed)."""

from tooltune import bfcl_run


def test_each_category_reads_its_own_file_not_a_longer_name(tmp_path):
    """`multiple` must not read `live_multiple` or `parallel_multiple` (the bfcl-eval wheel
    ships all of them side by side), and the newest version wins."""
    (tmp_path / "possible_answer").mkdir()
    names = ["live_parallel_multiple", "parallel_multiple", "live_multiple", "multiple",
             "live_irrelevance", "irrelevance", "live_parallel", "parallel"]  # fmt: skip
    for name in names:
        for version in (3, 4):
            for folder in (tmp_path, tmp_path / "possible_answer"):
                (folder / f"BFCL_v{version}_{name}.json").write_text("")
    for category in ("multiple", "parallel", "parallel_multiple", "irrelevance", "live_multiple"):
        questions, _ = bfcl_run.category_files(tmp_path, category)
        assert questions.name == f"BFCL_v4_{category}.json"
