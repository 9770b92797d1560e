"""`tooltune demo`: a preset (the `[config]` and `[pipeline]` tables of
`tooltune/presets/NAME.toml`), the model's defaults, the user's `--config` and `--set` on top;
then the pipeline and the report."""

from __future__ import annotations

import os
import random
import shutil
import time
import tomllib
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from tooltune.allocator import allocator_name
from tooltune.config import AgentConfig, ConfigError, load_config, parse_override
from tooltune.training.pipeline import AgentTrainingPipeline, PipelineSettings


def load_preset(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config table, pipeline table) of a built-in preset or a TOML file path."""
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        text = path.read_text(encoding="utf-8")
    else:
        try:
            text = resources.files("tooltune.presets").joinpath(f"{name}.toml").read_text("utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"unknown preset {name!r}; built-in presets: default, builtin, smoke"
            ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset {name!r} is not valid TOML: {exc}") from None
    unknown = set(data) - {"config", "pipeline"}
    if unknown:
        raise ConfigError(f"preset {name!r} has unknown tables: {', '.join(sorted(unknown))}")
    return dict(data.get("config", {})), dict(data.get("pipeline", {}))


FORMER_NAMES = {"lora_layers": "train_layers"}  # from when only LoRA could train the top layers


def make_settings(table: dict[str, Any]) -> PipelineSettings:
    for old, new in FORMER_NAMES.items():
        if old in table:
            if new in table:
                raise ConfigError(f"pipeline.{old} is the former name of {new}: set one")
            table[new] = table.pop(old)
    known = {f.name: f.type for f in fields(PipelineSettings)}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown pipeline key {key!r} (known: {', '.join(known)})")
        default = getattr(PipelineSettings, key)
        if isinstance(default, float) and type(value) is int:
            table[key] = value = float(value)
        if isinstance(default, bool) != isinstance(value, bool) or not isinstance(
            value, type(default)
        ):
            raise ConfigError(
                f"pipeline.{key} must be of type {type(default).__name__}, got {value!r}"
            )
    return PipelineSettings(**table)


def preset_name(args: Any) -> str:
    """The preset asked for; without one, `default` (SmolLM2) or `builtin` for the built-in model."""
    return args.preset or ("builtin" if args.model == "builtin" else "default")


def resolve_demo(args: Any) -> tuple[AgentConfig, PipelineSettings]:
    """The demo's config and pipeline settings: the preset, defaults for Hugging Face models,
    then the user's `--config` file and `--set` overrides (which win)."""
    config_table, pipeline_table = load_preset(preset_name(args))
    if args.model:
        pipeline_table["model"] = args.model
    if pipeline_table.get("model", "builtin") != "builtin":
        # One signature line per offered tool: 296-391 SmolLM2 tokens a prompt against 1,029-1,360
        # for the JSON schemas, paid in every SFT row, rollout and scoring pass.
        pipeline_table.setdefault("tool_style", "compact")
        # context-token loss and copy head are aids for a model trained from scratch
        config_table.pop("sft_context_weight", None)
        pipeline_table.pop("copy_head", None)
        # Room for every demonstrated turn (the world's tasks need at most 147 SmolLM2 tokens,
        # schema tasks' parallel calls up to 397): a shorter limit cuts demonstrated calls off,
        # and SFT would teach turns the model cannot finish when it runs.
        config_table["max_new_tokens"] = max(int(config_table.get("max_new_tokens", 0)), 416)
        # Room for every expert solution: a booking that searches again after a sold-out flight
        # in a list cut short needs up to ~2,330 SmolLM2 tokens before its answer turn, and
        # the answer turn its `max_new_tokens` (at 2,048, 4 of the 250 test tasks could not be
        # finished, and 1% of the demonstrations were cut short in SFT).
        for table, key in ((config_table, "max_trajectory_len"), (pipeline_table, "max_seq_len")):
            table[key] = max(int(table.get(key, 0)), 3072)
        # Memory follows the tokens of one forward and backward (the LM head runs on scored
        # positions only): ~0.55 GB of SmolLM2's activations a 1,000. Cap them, so that rows
        # which share a system prompt can still run together.
        config_table.setdefault("micro_batch_tokens", 4096)
    config_overrides = [o for o in args.overrides if not o.startswith("pipeline.")]
    for override in args.overrides:
        if override.startswith("pipeline."):
            path, value = parse_override(override)
            key = ".".join(path[1:])
            pipeline_table[FORMER_NAMES.get(key, key)] = value  # a later layer wins either way
    if getattr(args, "device", ""):
        pipeline_table["device"] = args.device
    if getattr(args, "report_to", None):
        pipeline_table["report_to"] = args.report_to
    if getattr(args, "backend", "local") != "local":
        pipeline_table["backend"] = args.backend
        pipeline_table["ray_address"] = args.ray_address
    config_table.setdefault("seed", args.seed)
    config = load_config(args.config, config_overrides, base=config_table)
    return config, make_settings(pipeline_table)


def usable_cpus() -> int:
    """Cores this process may run on: `os.cpu_count()` counts the machine's, so two jobs pinned
    to one core each (`taskset -c 0`) would each start two threads on it."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def run_demo(args: Any) -> int:
    """Build the world, train, evaluate, and write the run directory with its report."""
    from tooltune.environment import BuiltinWorld

    return run_training(args, "demo", lambda config: BuiltinWorld(
        world_dir=args.world, seed=config.seed, config=config))  # fmt: skip


def run_train(args: Any) -> int:
    """`tooltune train --env SPEC`: the demo's pipeline and run directory on a user environment."""
    from tooltune.env import load_env

    label = Path(args.env.rpartition(":")[0] if ".py:" in args.env else args.env)
    label = label.parent.name if label.stem == "env" else label.stem  # examples/calc/env.py: calc
    return run_training(args, "train", lambda config: load_env(args.env), label)


def run_training(args: Any, command: str, make_env: Any, label: str = "") -> int:
    """Resolve the config, open the environment, run (or resume) the pipeline, write the report."""
    from tooltune.training.report import write_report

    started = time.perf_counter()
    config, settings = resolve_demo(args)
    name = args.name or "-".join(
        [*([label] if label else []), Path(preset_name(args)).stem, Path(settings.model).name,
         f"seed{config.seed}"])  # fmt: skip
    run_dir = Path(args.out) if args.out else Path("runs") / name
    if getattr(args, "fresh", False):
        shutil.rmtree(run_dir, ignore_errors=True)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.set_num_threads(usable_cpus())  # the cores this process may run on (taskset, cgroups)
    print(f"tooltune {command}: preset {preset_name(args)}, model {settings.model}, "
          f"run directory {run_dir}, {allocator_name()}")  # fmt: skip
    try:
        env = make_env(config)
    except (ValueError, OSError) as exc:  # a bad environment file or task file: one clear line
        raise ConfigError(str(exc)) from None
    with env:
        if command != "demo":
            print(f"environment: {env.describe()}")
        pipeline = AgentTrainingPipeline(env, config, settings, run_dir)
        metrics = pipeline.run_all()
        test_n = len(pipeline.test_tasks())
    elapsed = time.perf_counter() - started + pipeline.earlier_seconds
    # the demonstrations SFT really had (the expert's failures are left out), not the tasks asked
    report = write_report(run_dir, metrics, pipeline.history, settings, config, test_n, elapsed,
                          sft_source=pipeline.sft_source or None,
                          per="tier" if command == "demo" else "group",
                          processes=pipeline.processes)  # fmt: skip
    print(f"report: {report}")
    resumed = f" in {pipeline.processes} processes" if pipeline.processes > 1 else ""
    print(f"total time: {elapsed / 60:.1f} min{resumed}")
    return 0
