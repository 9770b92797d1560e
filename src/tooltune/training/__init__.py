"""Training algorithms: rewards, supervised fine-tuning, GRPO (the update and its loop) and a
learned reward model."""

from tooltune.training.grpo import GRPOTrainer, group_advantages, grpo_loss
from tooltune.training.grpo_loop import GRPOStep, Rollout, collector_rollout, train_grpo
from tooltune.training.reward_model import (
    AgentRewardModel,
    RewardModelConfig,
    learned_baseline,
    reward_model_term,
    roc_auc,
    train_reward_model,
)
from tooltune.training.rewards import (
    RewardResult,
    Rubric,
    count_unnecessary_calls,
    efficiency_reward,
    format_reward,
    outcome_reward,
    rubric_from_config,
    tool_success_reward,
    unnecessary_calls_reward,
    verified_success,
)
from tooltune.training.schedule import make_scheduler, warmup_cosine
from tooltune.training.sft import (
    SFTHistory,
    collate,
    evaluate_loss,
    load_chat_jsonl,
    load_chat_rows,
    to_token_records,
    train_sft,
)

__all__ = [
    "AgentRewardModel",
    "GRPOStep",
    "GRPOTrainer",
    "RewardModelConfig",
    "RewardResult",
    "Rollout",
    "Rubric",
    "SFTHistory",
    "collate",
    "collector_rollout",
    "count_unnecessary_calls",
    "efficiency_reward",
    "evaluate_loss",
    "format_reward",
    "group_advantages",
    "grpo_loss",
    "learned_baseline",
    "load_chat_jsonl",
    "load_chat_rows",
    "make_scheduler",
    "outcome_reward",
    "reward_model_term",
    "roc_auc",
    "rubric_from_config",
    "to_token_records",
    "tool_success_reward",
    "train_grpo",
    "train_reward_model",
    "train_sft",
    "unnecessary_calls_reward",
    "verified_success",
    "warmup_cosine",
]
