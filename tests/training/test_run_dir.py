"""Run directories: checkpoints are swapped in whole, and a swap cut short is undone."""

from tooltune.training.run_dir import RunDirectory


class Saved:
    """A policy whose `save` writes one file with its version."""

    def __init__(self, version: str) -> None:
        self.version = version

    def save(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "weights.txt").write_text(self.version)


def test_a_checkpoint_replaces_the_last_one_whole(tmp_path):
    run = RunDirectory(tmp_path / "run")
    assert run.checkpoint("latest", Saved("1")) == "checkpoints/latest"
    run.checkpoint("latest", Saved("2"), {"step": 2})
    latest = run.checkpoint_dir("checkpoints/latest")
    assert (latest / "policy/weights.txt").read_text() == "2"
    assert (latest / "COMPLETE").exists() and (latest / "trainer.pt").exists()
    assert sorted(p.name for p in (run.dir / "checkpoints").iterdir()) == ["latest"]


def test_a_swap_cut_between_its_renames_gives_back_the_checkpoint_state_names(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.checkpoint("latest", Saved("1"))
    checkpoints = run.dir / "checkpoints"
    # killed after `latest` became `.latest.old` and before `.latest.tmp` became `latest`
    (checkpoints / "latest").rename(checkpoints / ".latest.old")
    Saved("2").save(checkpoints / ".latest.tmp" / "policy")
    latest = run.checkpoint_dir("checkpoints/latest")
    assert (latest / "policy/weights.txt").read_text() == "1"  # what state.json still names
    run.checkpoint("latest", Saved("3"))  # the next checkpoint clears the leftovers
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest"]
