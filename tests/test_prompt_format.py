"""A saved model carries how it was prompted (`prompt_format.json`) and its consumers use it.

The model here is trained by the pipeline (tiny settings, a few seconds) in the `names` tool
style, which is not the `json` style `tooltune eval` used to prompt every model in. Nothing
below depends on what the model learned: the checks read the prompts that were built.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tooltune import evaluation
from tooltune.cli import main
from tooltune.config import AgentConfig, ConfigError, TaskTier
from tooltune.messages import read_trajectories
from tooltune.prompt_format import FILENAME, GENERATION_KEYS, PromptFormat
from tooltune.rollout import opening_text

# generation settings unlike the defaults (256, 10, 8192, 2000, 0.7, 0.9), so using them shows
CONFIG = dict(max_new_tokens=8, max_turns=6, max_trajectory_len=1024, max_observation_chars=300,
              temperature=0.5, top_p=0.8, sft_epochs=1, sft_batch_size=8)  # fmt: skip
PIPELINE = dict(tool_style="names", vocab_size=512, max_seq_len=1024, sft_tasks=8, val_tasks=0,
                eval_tasks_per_tier=1, grpo_steps=0, reward_model_tasks=0, copy_drill_steps=0,
                saved_trajectories=0)  # fmt: skip


def _pipeline(world: Path, run: Path, log=lambda message: None):
    from tooltune.environment import Environment
    from tooltune.training.pipeline import AgentTrainingPipeline, PipelineSettings

    config = AgentConfig(**CONFIG)
    env = Environment(world_dir=world, seed=0, config=config)
    pipeline = AgentTrainingPipeline(
        env, config, PipelineSettings(**PIPELINE), run, log=log, progress=False
    )
    return env, pipeline


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(world directory, run directory) of a finished run trained in the `names` style."""
    root = tmp_path_factory.mktemp("prompt_format")
    env, pipeline = _pipeline(root / "world", root / "run")
    with env:
        pipeline.run_all()
    return root / "world", root / "run"


def test_a_run_without_grpo_steps_is_not_evaluated_twice(trained):
    """(Reuses the run above, which has grpo_steps=0.) The model after zero GRPO steps is the
    SFT model: its evaluation is reported, not run again."""
    run = trained[1]
    metrics = json.loads((run / "state.json").read_text())["metrics"]
    assert metrics["after_grpo"] == metrics["after_sft"]
    logged = [
        json.loads(line)["stage"] for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged.count("after_sft") == 1 and "after_grpo" not in logged


@pytest.fixture
def policy_dir(trained, tmp_path):
    """A copy of the run's saved policy, free to damage."""
    copy = tmp_path / "policy"
    shutil.copytree(trained[1] / "checkpoints" / "latest" / "policy", copy)
    return copy


@pytest.fixture
def calls(monkeypatch):
    """The (config, tool_style) of every `evaluation.evaluate` call the CLI makes."""
    seen = []
    original = evaluation.evaluate

    def recording(policy, tasks, env, config=None, **kwargs):
        seen.append((config, kwargs.get("tool_style")))
        return original(policy, tasks, env, config, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", recording)
    return seen


def _eval(capsys, world, policy, tmp_path, *extra):
    out = tmp_path / "trajectories.jsonl"
    code = main(["eval", "--policy", str(policy), "-n", "1", "--json", "--world", str(world),
                 "--trajectories", str(out), *extra])  # fmt: skip
    captured = capsys.readouterr()
    trajectories = read_trajectories(out) if out.exists() else []
    return code, captured.err, trajectories


def _opens_in(trajectories, style: str) -> bool:
    return bool(trajectories) and all(
        t.metadata["text"].startswith(opening_text(t, style)) for t in trajectories
    )


def test_every_checkpoint_records_the_prompt_format_it_was_trained_with(trained):
    _, run = trained
    expected = PromptFormat.from_training(AgentConfig(**CONFIG), "names")
    for name in ("latest", "sft"):
        saved = PromptFormat.read(run / "checkpoints" / name / "policy")
        assert saved == expected and saved.max_new_tokens == 8 and saved.top_p == 0.8


def test_eval_prompts_a_saved_model_as_it_was_trained(trained, capsys, calls, tmp_path):
    world, run = trained
    policy = run / "checkpoints" / "latest" / "policy"
    code, err, trajectories = _eval(capsys, world, policy, tmp_path)
    assert code == 0, err
    assert len(trajectories) == len(TaskTier) and _opens_in(trajectories, "names")  # one a tier
    assert not _opens_in(trajectories, "json")
    [(config, style)] = calls
    assert style == "names"
    assert {k: getattr(config, k) for k in GENERATION_KEYS} == {
        k: CONFIG[k] for k in GENERATION_KEYS
    }
    assert all(len(t.steps) <= CONFIG["max_turns"] for t in trajectories)
    assert f"prompting as saved in {policy / FILENAME}" in err and "overrides" not in err


def test_the_command_line_wins_over_the_saved_format_and_says_so(trained, capsys, calls, tmp_path):
    world, run = trained
    policy = run / "checkpoints" / "latest" / "policy"
    code, err, trajectories = _eval(capsys, world, policy, tmp_path, "--tool-style", "json",
                                    "--set", "max_turns=3", "--set", "max_new_tokens=8")  # fmt: skip
    assert code == 0, err
    assert _opens_in(trajectories, "json")
    [(config, style)] = calls
    assert style == "json" and config.max_turns == 3
    assert config.max_observation_chars == CONFIG["max_observation_chars"]  # the rest as saved
    assert "--tool-style json overrides the saved tool style names" in err
    assert "max_turns 3 from the command line overrides the saved 6" in err
    assert "max_new_tokens 8 from the command line" not in err  # the saved value: nothing to say


def test_a_model_saved_without_a_format_is_prompted_as_before_with_a_warning(
    trained, policy_dir, capsys, calls, tmp_path
):
    (policy_dir / FILENAME).unlink()
    world, _ = trained
    code, err, trajectories = _eval(capsys, world, policy_dir, tmp_path,
                                    "--set", "max_new_tokens=8", "--set", "max_turns=2")  # fmt: skip
    assert code == 0, err
    assert f"has no {FILENAME}" in err and "'json' tool style" in err
    assert _opens_in(trajectories, "json")
    [(config, style)] = calls
    assert style == "json" and config.max_observation_chars == AgentConfig().max_observation_chars


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{not json", "corrupt"),
        ('{"version": 1, "tool_style": "xml"}', "tool_style must be one of"),
        ('{"version": 1, "tool_style": "names", "max_turns": "6"}', "max_turns must be of type"),
        ('{"version": 1, "tool_style": "names", "max_turns": 0}', "max_turns must be at least 1"),
        ('{"version": 1, "tool_style": "names", "stop": "x"}', "unknown key(s) stop"),
        ('{"tool_style": "names"}', "version None"),
        ("[1]", "expected a JSON object"),
    ],
)
def test_a_corrupt_format_is_a_clear_error_naming_the_file(
    trained, policy_dir, capsys, text, fragment, tmp_path
):
    from tooltune.training.run_dir import load_policy

    (policy_dir / FILENAME).write_text(text)
    code, err, _ = _eval(capsys, trained[0], policy_dir, tmp_path)
    assert code == 2 and str(policy_dir / FILENAME) in err and fragment in err
    assert "Traceback" not in err
    with pytest.raises(ConfigError, match="prompt_format.json is corrupt"):
        load_policy(policy_dir)


def test_a_resumed_run_takes_the_checkpoint_format_or_refuses_a_different_one(trained, tmp_path):
    world, run = trained
    shutil.copytree(run, tmp_path / "run")
    saved = tmp_path / "run" / "checkpoints" / "latest" / "policy" / FILENAME

    saved.unlink()  # a checkpoint written before formats were recorded: this run's, with a warning
    lines: list[str] = []
    env, pipeline = _pipeline(world, tmp_path / "run", log=lines.append)
    with env:
        pipeline.run_all()
    assert any(f"has no {FILENAME}" in line for line in lines)
    assert pipeline.policy.prompt_format == PromptFormat.from_training(
        AgentConfig(**CONFIG), "names"
    )

    other = dataclasses.replace(pipeline.policy.prompt_format, tool_style="json")
    other.save(saved.parent)
    env, pipeline = _pipeline(world, tmp_path / "run")
    with env, pytest.raises(ConfigError, match="tool style json.*rerun with --fresh"):
        pipeline.run_all()


def test_ray_workers_prompt_in_the_style_of_the_policy_they_are_given(trained):
    from tooltune.distributed.ray_backend import PolicySnapshot, RolloutWorker
    from tooltune.registry import ToolRegistry
    from tooltune.rollout import SamplingParams
    from tooltune.training.run_dir import load_policy

    policy = load_policy(trained[1] / "checkpoints" / "latest" / "policy")
    snapshot = PolicySnapshot.from_policy(policy)

    def worker(style):
        return RolloutWorker(snapshot, lambda: ToolRegistry([]), AgentConfig(), SamplingParams(),
                             style, None, None, 1)  # fmt: skip

    assert worker(None).tool_style == "names"  # from the snapshot's prompt_format.json
    assert worker("compact").tool_style == "compact"  # an explicit style wins


def test_the_format_round_trips_and_policies_carry_it(trained, tmp_path):
    from tooltune.training.run_dir import load_policy

    fmt = PromptFormat.from_training(AgentConfig(max_turns=3), "compact", marker_tokens=True)
    assert PromptFormat.from_dict(json.loads(json.dumps(fmt.to_dict()))) == fmt
    policy = load_policy(trained[1] / "checkpoints" / "latest" / "policy")
    assert policy.clone().prompt_format == policy.prompt_format
    policy.prompt_format = fmt
    policy.save(tmp_path / "a")
    assert load_policy(tmp_path / "a").prompt_format == fmt
    policy.prompt_format = None  # saving over a directory leaves no stale format behind
    policy.save(tmp_path / "a")
    assert load_policy(tmp_path / "a").prompt_format is None


def test_hugging_face_policies_save_and_load_their_format(tmp_path, tiny_qwen2):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from tooltune.policies.hf import HFPolicy, LoraSettings

    model = tiny_qwen2(tmp_path / "base", ["The quick brown fox."] * 20, vocab_size=300)
    fmt = PromptFormat.from_training(AgentConfig(max_new_tokens=16), "compact", marker_tokens=True)
    for name, lora in (("adapter", LoraSettings(r=2)), ("full", None)):
        policy = HFPolicy.from_pretrained(model, lora=lora, marker_tokens=True)
        assert policy.prompt_format is None  # a base model tooltune did not save
        policy.prompt_format = fmt
        policy.save(tmp_path / name)
        assert HFPolicy.from_pretrained(tmp_path / name).prompt_format == fmt
