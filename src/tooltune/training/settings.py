"""What the demo trains, on how much data, and how often it checkpoints: the `[pipeline]`
table of a preset, checked when it is made."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tooltune.chat_format import TOOL_STYLES
from tooltune.config import ConfigError
from tooltune.training.tracking import check_report_to


@dataclass
class PipelineSettings:
    """What the demo trains and on how much data (the `[pipeline]` table of a preset)."""

    model: str = "builtin"  # builtin | smollm2-135m | a local Hugging Face model directory
    model_size: str = "tiny"  # built-in model only
    vocab_size: int = 2048  # built-in tokenizer only
    copy_head: bool = False  # built-in model only: a pointer-generator output (see transformer)
    max_seq_len: int = 1024
    tool_style: str = "names"  # how tools are listed in the system prompt (json for HF models)
    lora: bool = True  # Hugging Face models: train LoRA adapters, not all weights
    train_layers: int = 0  # only the last N decoder layers train (LoRA or all weights); 0: all
    lora_dropout: float = 0.05
    dtype: str = "auto"  # Hugging Face models' frozen weights: auto (bf16 where fast) | bf16 | fp32
    device: str = ""  # Hugging Face models: cpu | cuda | cuda:N; empty: cuda where present
    marker_tokens: bool = False  # Hugging Face models: <tool_call> etc. as new single tokens
    # Hugging Face models: the layers' element-wise parts compiled (tooltune.policies.pointwise)
    torch_compile: bool = False
    rename_entities: bool = True  # SFT on demonstrations with fresh names each epoch
    copy_drill_steps: int = 0  # copy drills before SFT; built-in model only (pretrained ones copy)
    sft_tasks: int = 1600
    val_tasks: int = 60
    eval_tasks_per_tier: int = 50
    # also evaluated each stage: tasks whose tools training never offers
    heldout_tools_tasks: int = 0
    # the untrained model's evaluation: the first N of each tier (0: all)
    before_tasks_per_tier: int = 0
    grpo_steps: int = 30
    reward_model_tasks: int = 0  # training tasks the reward model learns from; 0: no reward model
    checkpoint_every: int = 5  # GRPO steps between checkpoints
    sft_checkpoint_minutes: float = 10.0  # SFT checkpoints this often (0: after every step)
    saved_trajectories: int = 8  # per tier and stage, into trajectories.jsonl
    # evaluations decode calls under the offered tools' schemas (tooltune.call_grammar)
    constrained_calls: bool = False
    backend: str = "local"  # GRPO rollouts: local (batched, in process) or ray (actors)
    ray_address: str = ""  # an existing Ray cluster; empty: start a local one
    ray_workers: int = 2
    report_to: str = "none"  # metrics.jsonl's rows also to tensorboard | wandb (see tracking)

    def __post_init__(self) -> None:
        for key in ("sft_tasks", "eval_tasks_per_tier", "checkpoint_every", "max_seq_len"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pipeline.{key} must be at least 1")
        if not self.sft_checkpoint_minutes >= 0:  # NaN too
            raise ConfigError("pipeline.sft_checkpoint_minutes must be >= 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("pipeline.lora_dropout must be in [0, 1)")
        for key in ("val_tasks", "grpo_steps", "saved_trajectories", "copy_drill_steps",
                    "train_layers", "before_tasks_per_tier", "heldout_tools_tasks"):  # fmt: skip
            if getattr(self, key) < 0:
                raise ConfigError(f"pipeline.{key} must be >= 0")
        if self.reward_model_tasks == 1 or self.reward_model_tasks < 0:
            raise ConfigError("pipeline.reward_model_tasks must be 0 (off) or at least 2")
        if self.tool_style not in TOOL_STYLES:
            raise ConfigError(f"pipeline.tool_style must be one of {', '.join(TOOL_STYLES)}")
        if self.device and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"pipeline.device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.backend not in ("local", "ray"):
            raise ConfigError("pipeline.backend must be local or ray")
        check_report_to(self.report_to)
