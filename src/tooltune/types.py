"""The records of an episode: calls, responses, actions, steps and whole trajectories.

Everything here round-trips through JSON without loss (`to_dict` / `from_dict`), and a trajectory
converts to and from OpenAI-style chat messages, so trajectories saved as JSONL can be read by
other libraries (for example as a `datasets` JSON file).
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentStep:
        return cls(
            action=AgentAction.from_dict(data["action"]),
            observation=data.get("observation"),
            tool_responses=[ToolResponse.from_dict(r) for r in data.get("tool_responses", [])],
            reward=data.get("reward", 0.0),
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

    # -- OpenAI-style chat messages -------------------------------------------------------------
    def to_messages(self, system_prompt: str | None = None) -> list[dict[str, Any]]:
        """user, then per step an `assistant` message (with `tool_calls`) and one `tool`
        message per call (with `tool_call_id`)."""
        messages: list[dict[str, Any]] = []
        if system_prompt is not None:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": self.prompt})
        for step in self.steps:
            action = step.action
            message: dict[str, Any] = {"role": "assistant", "content": action.content}
            if action.thinking:
                message["reasoning_content"] = action.thinking
            if action.tool_calls:
                message["tool_calls"] = [_call_to_openai(c) for c in action.tool_calls]
            messages.append(message)
            for response in step.tool_responses:
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": response.call_id,
                        "name": response.name,
                        "content": _response_content(response),
                    }
                )
        return messages

    def to_record(self) -> dict[str, Any]:
        """One JSONL row that chat-format loaders understand, plus tooltune's own fields."""
        return {
            "messages": self.to_messages(),
            "tools": self.tools,
            "task_id": self.task_id,
            "task_tier": str(self.task_tier),
            "final_answer": self.final_answer,
            "total_reward": self.total_reward,
            "success": self.success,
        }

    @classmethod
    def from_messages(
        cls,
        messages: list[dict[str, Any]],
        task_tier: TaskTier | str = TaskTier.SIMPLE,
        tools: list[dict[str, Any]] | None = None,
    ) -> AgentTrajectory:
        """Rebuild a trajectory from OpenAI-style messages (system messages are skipped)."""
        from tooltune.chat_format import format_observation  # avoid an import cycle

        users = [m for m in messages if m.get("role") == "user"]
        if not users:
            raise ValueError("messages hold no user message to take the prompt from")
        trajectory = cls(prompt=_text(users[0].get("content")), task_tier=as_group(task_tier))
        trajectory.tools = list(tools or [])
        started = False
        for message in messages:
            role = message.get("role")
            if role == "user" and not started:
                started = True
                continue
            if role == "assistant":
                calls = [
                    _call_from_openai(c, i) for i, c in enumerate(message.get("tool_calls") or [])
                ]
                content = _text(message.get("content"))
                kind = "tool_call" if calls else ("respond" if content.strip() else "think")
                action = AgentAction(kind, content, calls, message.get("reasoning_content") or "")
                trajectory.steps.append(AgentStep(action=action))
            elif role == "tool":
                if not trajectory.steps:
                    raise ValueError("a tool message comes before any assistant message")
                step = trajectory.steps[-1]
                names = {c.id: c.name for c in step.action.tool_calls}
                call_id = message.get("tool_call_id", "")
                step.tool_responses.append(
                    _response_from_content(call_id, message.get("name") or names.get(call_id, ""),
                                           _text(message.get("content")))
                )  # fmt: skip
        for step in trajectory.steps:
            if step.tool_responses:
                step.observation = format_observation(step.tool_responses)
        if trajectory.steps and trajectory.steps[-1].action.type == "respond":
            trajectory.final_answer = trajectory.steps[-1].action.content
        return trajectory


ERROR_PREFIX = "Error: "


def _text(content: Any) -> str:
    """OpenAI content may be a string or a list of parts; keep the text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _call_to_openai(call: ToolCall) -> dict[str, Any]:
    arguments = (
        call.raw if call.parse_error and call.raw is not None else json.dumps(call.arguments)
    )
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


def _call_from_openai(data: dict[str, Any], index: int) -> ToolCall:
    function = data.get("function") or {}
    call_id = data.get("id") or f"call_{index}"
    name = function.get("name") or ""
    raw = function.get("arguments", "{}")
    if isinstance(raw, dict):
        return ToolCall(id=call_id, name=name, arguments=raw)
    try:
        arguments = json.loads(raw) if raw else {}
    except (json.JSONDecodeError, TypeError) as exc:
        return ToolCall(
            call_id, name, {}, parse_error=f"arguments are not valid JSON: {exc}", raw=raw
        )
    if not isinstance(arguments, dict):
        return ToolCall(call_id, name, {}, parse_error="arguments must be a JSON object", raw=raw)
    return ToolCall(id=call_id, name=name, arguments=arguments)


def _response_content(response: ToolResponse) -> str:
    if not response.success:
        return ERROR_PREFIX + (response.error or "unknown error")
    if isinstance(response.result, str):
        return response.result
    return json.dumps(response.result, ensure_ascii=False)


def _response_from_content(call_id: str, name: str, content: str) -> ToolResponse:
    if content.startswith(ERROR_PREFIX):
        return ToolResponse(call_id, False, None, error=content[len(ERROR_PREFIX) :], name=name)
    try:
        result = json.loads(content)  # tools return JSON values; plain text stays text
    except json.JSONDecodeError:
        result = content
    return ToolResponse(call_id, True, result, name=name)
