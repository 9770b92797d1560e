"""How a saved model was prompted, kept beside its weights in `prompt_format.json`.

A model reads only the prompt format it was trained on: the default demo's model, trained on
the `names` tool listing, solves nothing when `tooltune eval` prompts it with the JSON schemas.
So a policy carries its `PromptFormat` (``policy.prompt_format``), its ``save`` writes it, its
``load`` reads it, and every consumer of a saved model (`tooltune eval`, a resumed run, the Ray
workers) asks the model instead of assuming a default. This module is the one place that knows
the file.

A directory saved before the file existed has none: consumers then prompt as tooltune always
did (the `json` tool style, the configured generation settings) and say so. A file that cannot
be read is an error naming it, never a silent fallback.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tooltune.chat_format import TOOL_STYLES
from tooltune.config import AgentConfig, ConfigError

FILENAME = "prompt_format.json"
FALLBACK_TOOL_STYLE = "json"  # what a model without a saved format is prompted with
CHAT_FORMATS = ("tooltune",)  # tooltune's ChatML text (chat_format.py)
VERSION = 1
# AgentConfig fields that shape what the model sees and writes in an episode
GENERATION_KEYS = (
    "max_new_tokens", "max_turns", "max_trajectory_len", "max_observation_chars",
    "temperature", "top_p",
)  # fmt: skip
_TYPES = {"str": str, "bool": bool, "int": int, "float": (int, float)}


@dataclass(frozen=True)
class PromptFormat:
    """The prompt a model was trained on and the generation settings it was trained with
    (temperature and top_p are GRPO's sampling; evaluation is greedy)."""

    tool_style: str
    chat: str = "tooltune"
    marker_tokens: bool = False  # Hugging Face models: chat markers added as single tokens
    max_new_tokens: int = AgentConfig.max_new_tokens
    max_turns: int = AgentConfig.max_turns
    max_trajectory_len: int = AgentConfig.max_trajectory_len
    max_observation_chars: int = AgentConfig.max_observation_chars
    temperature: float = AgentConfig.temperature
    top_p: float = AgentConfig.top_p

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # f.type is the annotation's text
            value = getattr(self, f.name)
            wrong_bool = isinstance(value, bool) and f.type != "bool"  # True is an int to Python
            if wrong_bool or not isinstance(value, _TYPES[f.type]):
                raise ValueError(f"{f.name} must be of type {f.type}, got {value!r}")
        if self.tool_style not in TOOL_STYLES:
            raise ValueError(
                f"tool_style must be one of {', '.join(TOOL_STYLES)}, got {self.tool_style!r}"
            )
        if self.chat not in CHAT_FORMATS:
            raise ValueError(f"chat must be one of {', '.join(CHAT_FORMATS)}, got {self.chat!r}")
        self.configure(AgentConfig())  # the config's limits (a ConfigError is a ValueError)

    @classmethod
    def from_training(
        cls, config: AgentConfig, tool_style: str, marker_tokens: bool = False
    ) -> PromptFormat:
        """The format of a model trained with `config` on prompts in `tool_style`."""
        settings = {key: getattr(config, key) for key in GENERATION_KEYS}
        return cls(tool_style=tool_style, marker_tokens=marker_tokens, **settings)

    # -- applying it --------------------------------------------------------------------------
    def configure(
        self, config: AgentConfig, keep: frozenset[str] | set[str] = frozenset()
    ) -> AgentConfig:
        """`config` with this format's generation settings, except the keys in `keep` (those
        the user set explicitly)."""
        changes = {key: getattr(self, key) for key in GENERATION_KEYS if key not in keep}
        return config.replace(**changes)

    def describe(self) -> str:
        settings = ", ".join(f"{key} {getattr(self, key)}" for key in GENERATION_KEYS)
        markers = ", marker tokens" if self.marker_tokens else ""
        return f"tool style {self.tool_style}{markers}, {settings}"

    # -- the file -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> PromptFormat:
        """Check keys and types; raises ValueError saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", None)
        if version != VERSION:
            raise ValueError(f"version {version!r} is not one this tooltune reads ({VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}")
        if "tool_style" not in data:
            raise ValueError("tool_style is missing")
        return cls(**data)

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / FILENAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, directory: str | Path) -> PromptFormat | None:
        """The format saved in `directory`; None when it has none (saved by an older tooltune).
        A file that cannot be read raises `ConfigError` naming it."""
        path = Path(directory) / FILENAME
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is one
            raise ConfigError(
                f"{path} is corrupt ({exc}); fix or delete it (without it the model is "
                f"prompted in the {FALLBACK_TOOL_STYLE!r} tool style)"
            ) from None


def save_prompt_format(policy: Any, directory: str | Path) -> None:
    """What a policy's ``save`` calls: write its format, or remove a stale file when it has none."""
    fmt = getattr(policy, "prompt_format", None)
    if fmt is not None:
        fmt.save(directory)
    else:
        (Path(directory) / FILENAME).unlink(missing_ok=True)


def missing_message(directory: str | Path) -> str:
    """The warning for a saved model without a format, and what today's fallback is."""
    return (
        f"{directory} has no {FILENAME} (saved before tooltune recorded how a model was "
        f"prompted): prompting in the {FALLBACK_TOOL_STYLE!r} tool style with the configured "
        "generation settings; if the model was trained otherwise, say so (tooltune eval "
        "--tool-style STYLE --set max_new_tokens=N ...)"
    )


def tool_style_of(policy: Any) -> str:
    """The tool style `policy` was trained with. A model policy without a format (loaded from
    an old directory, or never given one) gets the fallback with a warning; a policy that is
    not a model (the scripted expert) gets the fallback silently, as it reads no prompt."""
    fmt = getattr(policy, "prompt_format", None)
    if fmt is not None:
        return fmt.tool_style
    if hasattr(policy, "prompt_format"):
        warnings.warn(
            f"the policy carries no prompt format; prompting in the {FALLBACK_TOOL_STYLE!r} "
            "tool style",
            stacklevel=2,
        )
    return FALLBACK_TOOL_STYLE
