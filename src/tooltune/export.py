"""`tooltune export`: a trained model as a plain Hugging Face directory people can serve.

LoRA adapters are folded into the weights (peft's ``merge_and_unload``), so the directory loads
with ``AutoModelForCausalLM.from_pretrained`` alone, without peft or tooltune. The tokenizer gets
a chat template that renders ``tools`` and ``tool_calls`` the way the model was trained, as the
policy's ``prompt_format.json`` (copied beside it) says: for tooltune's own tool styles one made
for that style (`tooltune.chat_template`); for the ``native`` style the tokenizer's own template,
which the model was trained through, kept as it is. The generation config stops where tooltune's
rollout ends a turn (``<|im_end|>``, or the native template's end of turn).

The directory is written aside and renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tooltune.chat_template import chat_template
from tooltune.native_template import FIX, NATIVE, NativeTemplate, TemplateError
from tooltune.prompt_format import FILENAME, PromptFormat

TRAINING_STAGES = ("sft", "grpo")  # a run's checkpoint holds a trained model after one of these
# how a run that stopped early gets on
RESUME = (
    "rerun the tooltune demo or tooltune train command that made it (it resumes where it stopped)"
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ExportError(ValueError):
    """An export that cannot be done, with what to do instead."""


@dataclass
class ExportResult:
    out_dir: Path
    source: Path  # the saved policy directory that was exported
    prompt_format: PromptFormat
    dtype: str
    merged_lora: bool
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        how = "LoRA merged into the weights" if self.merged_lora else "full weights"
        if self.prompt_format.tool_style == NATIVE:
            template = "the tokenizer's own chat template (tool style native)"
        else:
            template = f"chat template for tool style {self.prompt_format.tool_style}"
        return f"exported {self.source} to {self.out_dir} ({how}, {self.dtype}, {template})"


def policy_dir(path: str | Path) -> Path:
    """The saved policy to export: a run directory's latest checkpoint (`tooltune demo` or
    `tooltune train`), or a saved policy directory given directly."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path} is not a directory (give a tooltune demo or train run "
                          "directory or a saved policy directory)")  # fmt: skip
    if not ((path / "state.json").exists() or (path / "checkpoints").is_dir()):
        return path
    latest = path / "checkpoints" / "latest"
    if not (latest / "COMPLETE").exists() or not (latest / "policy").is_dir():
        raise ExportError(f"{path} has no finished checkpoint yet; {RESUME} and export again")
    completed = _completed_stages(path)
    if not any(stage in completed for stage in TRAINING_STAGES):
        done = ", ".join(completed) or "none"
        raise ExportError(f"{path} has finished no training stage (completed: {done}), so its "
                          f"model is untrained; {RESUME} past SFT and export again")  # fmt: skip
    return latest / "policy"


def _completed_stages(run_dir: Path) -> list[str]:
    try:
        state = json.loads((run_dir / "state.json").read_text())
        return [str(stage) for stage in state["completed"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise ExportError(f"{run_dir / 'state.json'} is missing or unreadable; is {run_dir} a "
                          "tooltune demo or train run directory?") from None  # fmt: skip


def export(
    source: str | Path, out_dir: str | Path, dtype: str = "auto", tool_style: str | None = None
) -> ExportResult:
    """Write `source` (see `policy_dir`) as a merged Hugging Face model with its tokenizer, chat
    template and prompt format into `out_dir`, which must not exist or be empty. ``dtype``:
    auto (the base model's, fp32 where it has none) | fp32 | bf16 | fp16. ``tool_style`` is
    only for a directory saved without ``prompt_format.json``."""
    if dtype != "auto" and dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    directory = policy_dir(source)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty; choose another output "
                          "directory or remove it")  # fmt: skip
    if _is_builtin(directory):
        raise ExportError(f"{directory} holds tooltune's built-in model (trained from scratch), "
                          "which has no transformers architecture to export to; train a Hugging "
                          "Face model to export one (tooltune demo --model smollm2-135m or a "
                          "local model directory)")  # fmt: skip
    fmt = _prompt_format(directory, tool_style)
    notes = []
    if fmt.tool_style == "names":
        notes.append("the model was trained on the names tool style: its prompt names the "
                        "tools without their arguments, so it can call only tools it was "
                        "trained on")  # fmt: skip

    from tooltune.policies.hf import is_peft
    from tooltune.training.run_dir import load_policy

    policy = load_policy(directory, dtype="fp32", device="cpu")  # merged in fp32, then cast
    merged = is_peft(policy.model)
    model = policy.model.merge_and_unload() if merged else policy.model
    target = _target_dtype(policy, dtype)
    model = model.to(target)
    tokenizer = policy.tokenizer
    stops = set(policy._stop_ids)
    if fmt.tool_style == NATIVE:  # the template the model was trained through stays
        native = _native_template(directory, policy)
        end = policy.encode(native.end_of_turn)
        if len(end) == 1:  # a turn ends where the model was trained to end it
            stops.add(end[0])
    else:
        native = None
        tokenizer.chat_template = chat_template(fmt)
    model.generation_config.eos_token_id = sorted(stops)
    model.generation_config.pad_token_id = policy.pad_token_id

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fmt.save(tmp)
        check_template(tmp, fmt, native)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    name = str(target).removeprefix("torch.")
    return ExportResult(out, directory, fmt, name, merged, notes)


def _is_builtin(directory: Path) -> bool:
    try:
        meta = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == "tooltune-builtin"


def _prompt_format(directory: Path, tool_style: str | None) -> PromptFormat:
    saved = PromptFormat.read(directory)  # a corrupt file raises ConfigError naming it
    if tool_style is not None:
        if saved is None:
            return PromptFormat(tool_style=tool_style)
        if saved.tool_style != tool_style:
            warnings.warn(f"{directory / FILENAME} says the model was trained on the "
                          f"{saved.tool_style} tool style; the template renders {tool_style} "
                          "as asked", stacklevel=3)  # fmt: skip
        return dataclasses.replace(saved, tool_style=tool_style)
    if saved is None:
        raise ExportError(f"{directory} has no {FILENAME}, so how the model was prompted is "
                          "unknown; say it with --tool-style json|compact|names|native")  # fmt: skip
    return saved


def _native_template(directory: Path, policy: Any) -> NativeTemplate:
    """The chat template a model of the native tool style was trained through, checked as
    training checked it; an `ExportError` naming the fix when the saved tokenizer has lost it
    or it no longer renders tools."""
    base = policy.base_path or "the base model's directory"
    restore = (f"copy chat_template.jinja (or the chat_template entry of tokenizer_config.json) "
               f"from {base} into {directory} and export again")  # fmt: skip
    if not getattr(policy.tokenizer, "chat_template", None):
        raise ExportError(f"{directory} holds a model trained in the native tool style, through "
                          "its tokenizer's chat template, but the saved tokenizer has no chat "
                          f"template; {restore}")  # fmt: skip
    try:
        return NativeTemplate(policy.tokenizer)
    except TemplateError as exc:  # its fix (another tool style) is for training, not here
        why = str(exc).removesuffix("; " + FIX)
        raise ExportError(f"{directory}'s chat template cannot prompt the model as it was "
                          f"trained in the native tool style ({why}); if it was edited, "
                          f"{restore}") from None  # fmt: skip


def _target_dtype(policy: Any, dtype: str) -> torch.dtype:
    """``dtype`` by name, or for auto the dtype the base model was saved in (fp32 without one)."""
    if dtype != "auto":
        return DTYPES[dtype]
    config = getattr(policy.model, "config", None)
    base = policy.base_path
    saved = None
    if base is not None and (Path(base) / "config.json").is_file():
        meta = json.loads((Path(base) / "config.json").read_text())
        saved = meta.get("dtype") or meta.get("torch_dtype")
    elif config is not None:
        saved = str(getattr(config, "dtype", "") or "")
    names = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    return DTYPES.get(names.get(str(saved).removeprefix("torch."), "fp32"), torch.float32)


def check_template(
    directory: Path, fmt: PromptFormat, native: NativeTemplate | None = None
) -> None:
    """Load the written tokenizer as a user would and check its template renders a prompt
    exactly as tooltune's rollout does (a template that drifted must not ship): the rollout of
    `native`, the template the model was trained through, for the native tool style."""
    import transformers

    from tooltune.config import TaskTier
    from tooltune.rollout import opening_text
    from tooltune.types import AgentTrajectory

    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    tools = [{"type": "function", "function": {
        "name": "population", "description": "Population of a city. As written in the atlas.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "year": {"type": "integer", "enum": [2020, 2024]}},
            "required": ["city"]}}}]  # fmt: skip
    trajectory = AgentTrajectory(
        prompt="How many people live in Zentrix?", task_tier=TaskTier.SIMPLE
    )
    trajectory.tools = tools
    messages = [{"role": "user", "content": trajectory.prompt}]
    got = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )
    if native is not None:
        if got != native.opening(trajectory):
            raise ExportError("the written tokenizer's chat template does not render the prompt "
                              "the model was trained on; this is a bug in tooltune export, "
                              "please report it")  # fmt: skip
    elif got != opening_text(trajectory, fmt.tool_style):
        raise ExportError("the written chat template does not render tooltune's prompt; this is "
                          "a bug in tooltune.chat_template, please report it")  # fmt: skip
