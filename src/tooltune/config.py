"""Configuration: the seed's `AgentConfig` plus the knobs the real trainers need.

Configs load from TOML or YAML and from `--set key=value` overrides. Anything that cannot be
right (an unknown key, a string where a number belongs, a negative learning rate, tier weights that
cannot be normalised) is refused with a `ConfigError` that names the key, before any work starts.

The GRPO options carry the names TRL's `GRPOConfig` gives them; their former names (the seed's and
tooltune's own, see `ALIASES`) are still accepted wherever a config is made: `AgentConfig(...)`,
config files and `--set`. Attributes have the new names only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml


class TaskTier(StrEnum):
    """Complexity tiers for agent tasks."""

    SIMPLE = "simple"  # one tool call
    MULTI_TOOL_SEQ = "multi_tool_seq"  # the result of one call feeds the next
    MULTI_TOOL_PAR = "multi_tool_par"  # independent calls in one turn
    COMPLEX = "complex"  # planning, several tools, recovery from errors
    NO_TOOL = "no_tool"  # no offered tool can help: make no call, say so or answer directly


TIER_LABELS = {
    TaskTier.SIMPLE: "Simple",
    TaskTier.MULTI_TOOL_SEQ: "Multi-Tool Seq",
    TaskTier.MULTI_TOOL_PAR: "Multi-Tool Par",
    TaskTier.COMPLEX: "Complex",
    TaskTier.NO_TOOL: "No tool needed",
}
# The training mix: the seed's 30/30/20/20 over the tool tiers, scaled to leave a tenth for
# tasks where the right move is to call nothing.
DEFAULT_TIER_WEIGHTS = {
    TaskTier.SIMPLE: 0.27,
    TaskTier.MULTI_TOOL_SEQ: 0.27,
    TaskTier.MULTI_TOOL_PAR: 0.18,
    TaskTier.COMPLEX: 0.18,
    TaskTier.NO_TOOL: 0.1,
}


def as_group(value: Any) -> TaskTier | str:
    """A task's group: one of the built-in world's tiers, or any name a user's tasks carry
    (reports and evaluation group by it)."""
    if isinstance(value, TaskTier):
        return value
    try:
        return TaskTier(value)
    except ValueError:
        text = str(value).strip() if value is not None else ""
        if not text:
            raise ValueError("a task's group must be a non-empty name") from None
        return text


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


def _default_tier_weights() -> dict[TaskTier, float]:
    return dict(DEFAULT_TIER_WEIGHTS)


def _default_reward_weights() -> dict[str, float]:
    return {
        "outcome": 1.0,
        "format": 0.1,
        "tool_success": 1.0,
        "efficiency": 0.1,
        "unnecessary_calls": 0.1,
    }


# Former names of options, accepted wherever a config is made (constructor, files, --set): the
# seed's and tooltune's own names on the left, TRL's (`GRPOConfig`) on the right.
ALIASES = {
    "num_samples": "num_generations",
    "kl_coef": "beta",
    "clip_eps": "epsilon",
    "loss_aggregation": "loss_type",
    "ppo_epochs": "num_iterations",
}
# `loss_type` values: TRL's names, and tooltune's former ones (accepted too).
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
LOSS_TYPE_ALIASES = {"seq_mean": "grpo", "token_mean": "dapo", "constant": "dr_grpo"}
# Keys of the seed's config that nothing reads: accepted with a warning, then dropped.
RETIRED = {
    "d_model": "the model is pipeline.model (and pipeline.model_size for the built-in one)",
    "num_epochs": "GRPO runs pipeline.grpo_steps steps; SFT runs sft_epochs epochs",
}


def _accept_former_names(cls: type) -> type:
    """Let the dataclass's constructor take `ALIASES` and `RETIRED` keys too."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **canonical_keys(kwargs))

    cls.__init__ = __init__
    return cls


@_accept_former_names
@dataclass
class AgentConfig:
    """Configuration for agent training. The first groups are the seed's, with its defaults.

    GRPO options under TRL's names (former names still accepted, see `ALIASES`):
      num_generations (was num_samples)   episodes per task: the size of a GRPO group
      beta            (was kl_coef)       weight of the KL penalty towards the reference policy
      epsilon         (was clip_eps)      PPO clip range: ratios outside [1 - eps, 1 + eps] clip
      loss_type       (was loss_aggregation)  how token losses are averaged: "grpo" over each
                      sequence, then over sequences (was seq_mean); "dapo" over every token of
                      the update (was token_mean); "dr_grpo" the sum / (sequences x
                      max_new_tokens) (was constant)
      num_iterations  (was ppo_epochs)    updates on each batch of episodes
    The seed's `d_model` and `num_epochs` are read by nothing; old files that set them get a
    warning (see `RETIRED`).
    """

    # Model configuration
    max_trajectory_len: int = 8192

    # Tool configuration
    max_tools: int = 32
    max_tool_calls_per_turn: int = 5
    tool_call_timeout: float = 30.0

    # Training configuration
    learning_rate: float = 1e-5
    batch_size: int = 16  # GRPO: tasks per step

    # GRPO configuration
    num_generations: int = 8  # episodes per task (the seed's num_samples)
    beta: float = 0.1  # KL penalty coefficient (the seed's kl_coef)
    reward_baseline: str = "mean"  # mean, min, or learned

    # Trajectory collection
    max_turns: int = 10
    temperature: float = 0.7
    top_p: float = 0.9

    # Task distribution
    task_tier_weights: dict[TaskTier, float] = field(default_factory=_default_tier_weights)
    # Share of the built-in world's simple, parallel and no-tool training tasks made from random
    # function schemas (tasks/schema_tasks.py, checked by BFCL's rules); the test split never
    # changes.
    schema_task_share: float = 0.0
    # The built-in world's training-only templates (`Template.train_only`): its lookups in
    # combinations the test split does not ask for, so that a model learns the parts rather
    # than each whole. They pay with more SFT data than the default demo's 800 tasks (at 3,200:
    # 68.8 -> 79.2% of the test tasks, new task shapes 15 -> 41%; at 800 they cost the seen
    # shapes more than they give; benchmarks/RESULTS.md). The test split never changes.
    composition_tasks: bool = False
    # Recovery demonstrations (`tasks.slips`): this share of the training tasks that look
    # something up in the database or a file are demonstrated with a slip first (a column
    # name guessed, a file name misspelt; that turn shown, not taught: context, weighted as
    # the prompt is by `sft_context_weight`), then the repair. The tasks are the same; the
    # test split never changes. At 0.6 the model learned to look after an error, not to
    # repair it (53.6 against 54.8% after SFT; benchmarks/RESULTS.md): off by default.
    recovery_share: float = 0.0

    # --- beyond the seed: what a correct trainer needs -------------------------------------
    seed: int = 0
    # The order training data is drawn in: SFT's batches and GRPO's tasks (TRL's and
    # transformers' `data_seed`); unset, `seed`. The tasks themselves and the world stay
    # those of `seed`, so runs that differ only here show how much a result owes to the draw.
    data_seed: int | None = None
    max_new_tokens: int = 256  # per assistant turn
    max_observation_chars: int = 2000  # tool output shown to the model is cut to this

    epsilon: float = 0.2  # PPO ratio clipping
    num_iterations: int = 1  # updates on one batch of episodes
    loss_type: str = "grpo"  # grpo | dapo | dr_grpo (see the class docstring)
    scale_rewards: bool = True  # divide group advantages by their std
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.1
    grad_accum_steps: int = 1
    # At most this many tokens (rows x their padded width) in one forward/backward pass, in SFT
    # and GRPO alike; a step splits into more micro-batches than `grad_accum_steps` where
    # needed. Activation memory grows with tokens, not rows (a GRPO micro-batch of 16 episodes
    # holds 8x the tokens of an SFT one of 2). 0: no cap. The update is the same either way.
    micro_batch_tokens: int = 0
    weight_decay: float = 0.0

    sft_epochs: int = 3
    sft_learning_rate: float = 1e-3
    sft_batch_size: int = 16
    # Weight of the next-token loss on context tokens (prompt, tool output, formatting) beside
    # the model's own tokens, whose weight is 1. 0 (the default) trains on the model's own
    # tokens only; a model trained from scratch learns to read names and values faster with a
    # little of it (as OpenAI's legacy fine-tuning `prompt_loss_weight`, default 0.01).
    sft_context_weight: float = 0.0
    # Run the beginning that an SFT batch's rows have in common (the instructions of the
    # system prompt) once per batch where the weights are fp32: the same update from fewer
    # positions (see `training.sft.train_sft`).
    sft_share_prefix: bool = True

    reward_weights: dict[str, float] = field(default_factory=_default_reward_weights)

    def __post_init__(self) -> None:
        hints = _field_types()
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Refuse impossible values; each message names the key."""
        positive_ints = [
            "max_trajectory_len", "max_tools", "max_tool_calls_per_turn", "batch_size",
            "num_generations", "max_turns", "max_new_tokens", "max_observation_chars",
            "num_iterations", "grad_accum_steps", "sft_batch_size",
        ]  # fmt: skip
        for key in positive_ints:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)!r}")
        if self.micro_batch_tokens < 0:
            raise ConfigError(f"micro_batch_tokens must be >= 0, got {self.micro_batch_tokens!r}")
        if self.sft_epochs < 0:
            raise ConfigError(f"sft_epochs must be >= 0, got {self.sft_epochs!r}")
        for key in ["learning_rate", "sft_learning_rate", "tool_call_timeout", "max_grad_norm"]:
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{key} must be a positive finite number, got {value!r}")
        for key in ["beta", "temperature", "weight_decay", "epsilon", "sft_context_weight"]:
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{key} must be >= 0 and finite, got {value!r}")
        for key in ["schema_task_share", "recovery_share"]:
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key} must be in [0, 1], got {getattr(self, key)!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        _check_choice("reward_baseline", self.reward_baseline, ("mean", "min", "learned"))
        self.loss_type = LOSS_TYPE_ALIASES.get(self.loss_type, self.loss_type)
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        self.task_tier_weights = _normalise_tier_weights(self.task_tier_weights)
        for name, weight in self.reward_weights.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
                raise ConfigError(f"reward_weights.{name} must be a number >= 0, got {weight!r}")

    # -- conversion ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["task_tier_weights"] = {t.value: w for t, w in self.task_tier_weights.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentConfig:
        """Build from plain data (TOML/YAML/JSON), checking keys and types."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a table of key = value, got {type(data).__name__}")
        data = canonical_keys(data)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown config key {key!r}{_suggest(key, known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> AgentConfig:
        return AgentConfig.from_dict({**self.to_dict(), **canonical_keys(changes)})


def canonical_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with former names (`ALIASES`) renamed and retired keys (`RETIRED`) dropped, with a
    warning each. A key set under both its names is refused: which one was meant is unknown."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in RETIRED:
            warnings.warn(f"config key {key!r} is ignored: {RETIRED[key]}", stacklevel=3)
            continue
        name = ALIASES.get(key, key)
        if name in out:
            raise ConfigError(f"{name!r} is set twice (once as {key!r}, its former name); set one")
        out[name] = value
    return out


@functools.cache
def _field_types() -> dict[str, Any]:
    return get_type_hints(AgentConfig)


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _normalise_tier_weights(weights: dict[Any, Any]) -> dict[TaskTier, float]:
    out: dict[TaskTier, float] = {}
    for tier, weight in weights.items():
        try:
            tier = TaskTier(tier)
        except ValueError:
            names = ", ".join(t.value for t in TaskTier)
            raise ConfigError(
                f"task_tier_weights: unknown tier {tier!r} (tiers: {names})"
            ) from None
        if not (isinstance(weight, int | float) and not isinstance(weight, bool)):
            raise ConfigError(f"task_tier_weights.{tier.value} must be a number, got {weight!r}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"task_tier_weights.{tier.value} must be >= 0, got {weight!r}")
        out[tier] = float(weight)
    total = sum(out.values())
    if not total > 0:
        raise ConfigError("task_tier_weights cannot be normalised: they must sum to more than 0")
    return {tier: w / total for tier, w in out.items()}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's type; ints are accepted where floats are expected."""
    origin = get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table (mapping), got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint == int | None:
        return None if value is None else _coerce(key, value, int)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if get_args(hint):  # pragma: no cover - no such fields today
        return value
    return value


def data_seed_of(config: Any) -> int:
    """The seed of the training data's order (`AgentConfig.data_seed`, else `seed`)."""
    data_seed = getattr(config, "data_seed", None)
    return int(getattr(config, "seed", 0) if data_seed is None else data_seed)


def _suggest(key: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known | set(ALIASES)), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as TOML, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read TOML (.toml) or YAML (.yaml/.yml) or JSON into plain data, with a clear error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of key = value")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> AgentConfig:
    """Defaults <- `base` (e.g. a preset) <- file at `path` <- `key=value` overrides."""
    # each layer's keys under their current names, so a later layer's former name still wins
    data = canonical_keys(base or {})
    if path is not None:
        data.update(canonical_keys(read_config_file(path)))
    for text in overrides or []:
        keys, value = parse_override(text)
        keys[0] = ALIASES.get(keys[0], keys[0])
        target = data
        for part in keys[:-1]:
            if part not in target:
                default = AgentConfig().to_dict().get(part) if target is data else None
                target[part] = dict(default) if isinstance(default, dict) else {}
            target = target[part]
            if not isinstance(target, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a table")
        target[keys[-1]] = value
    return AgentConfig.from_dict(data)
