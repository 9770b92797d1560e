"""The records of an episode: calls, responses, actions, steps and whole trajectories.

Everything here round-trips through JSON without loss (`to_dict` / `from_dict`); the
OpenAI-style chat messages that other libraries read are `tooltune.messages`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tooltune.config import TaskTier, as_group

ACTION_TYPES = ("think", "tool_call", "respond")


@dataclass
class ToolCall:
    """A tool invocation. A call the model wrote but that could not be parsed keeps the raw text
    and a `parse_error`; executing it gives a failed response the model can learn from."""

    id: str
    name: str
    arguments: dict[str, Any]
    timestamp: float | None = None
    parse_error: str | None = None
    raw: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolCall:
        return cls(**data)


@dataclass
class ToolResponse:
    """Result of a tool execution; `result` is JSON-serialisable."""

    call_id: str
    success: bool
    result: Any
    error: str | None = None
    execution_time: float = 0.0
    name: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolResponse:
        return cls(**data)


@dataclass
class AgentAction:
    """What the model did in one turn: think, call tools, or respond with the answer."""

    type: str  # "think", "tool_call", "respond"
    content: str  # text outside <think> and the calls: the answer for "respond"
    tool_calls: list[ToolCall] = field(default_factory=list)
    thinking: str = ""  # the <think> part, if any
    raw: str | None = None  # the exact text the model wrote for this turn, when it differs

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentAction:
        data = dict(data)
        data["tool_calls"] = [ToolCall.from_dict(c) for c in data.get("tool_calls", [])]
        return cls(**data)


@dataclass
class AgentStep:
    """One turn: the action, the tool responses and the observation text shown to the model."""

    action: AgentAction
    observation: str | None = None
    tool_responses: list[ToolResponse] = field(default_factory=list)
    reward: float = 0.0
    weight: float = 1.0  # how much SFT learns from the turn (0: shown, not taught)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentStep:
        return cls(
            action=AgentAction.from_dict(data["action"]),
            observation=data.get("observation"),
            tool_responses=[ToolResponse.from_dict(r) for r in data.get("tool_responses", [])],
            reward=data.get("reward", 0.0),
            weight=data.get("weight", 1.0),
        )


@dataclass
class TokenRecord:
    """The exact tokens of an episode as the model saw and produced them.

    `mask` is 1 on the model's own generated tokens and 0 on prompt, tool output and formatting;
    `logprobs` are the sampling log-probs of the generated tokens (0.0 where mask is 0)."""

    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def extend(self, ids: list[int], generated: bool, logprobs: list[float] | None = None) -> None:
        self.ids.extend(ids)
        self.mask.extend([1 if generated else 0] * len(ids))
        if logprobs is not None and len(logprobs) != len(ids):
            raise ValueError("logprobs must align with ids")
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class AgentTrajectory:
    """Complete trajectory of an agent episode."""

    prompt: str  # the user's query
    task_tier: TaskTier | str  # the task's group (a tier of the built-in world, or any name)
    steps: list[AgentStep] = field(default_factory=list)
    final_answer: str | None = None
    total_reward: float = 0.0
    success: bool = False  # the answer (or end state) was verified correct
    task_id: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-style tool list offered
    reward_components: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    tokens: TokenRecord | None = None

    # -- counts used by metrics and rewards ---------------------------------------------------
    @property
    def tool_calls(self) -> list[ToolCall]:
        return [c for s in self.steps for c in s.action.tool_calls]

    @property
    def tool_responses(self) -> list[ToolResponse]:
        return [r for s in self.steps for r in s.tool_responses]

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["task_tier"] = str(self.task_tier)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentTrajectory:
        data = dict(data)
        data["task_tier"] = as_group(data["task_tier"])
        data["steps"] = [AgentStep.from_dict(s) for s in data.get("steps", [])]
        if data.get("tokens") is not None:
            data["tokens"] = TokenRecord(**data["tokens"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> AgentTrajectory:
        return cls.from_dict(json.loads(text))
