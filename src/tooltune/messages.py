"""Trajectories as OpenAI-style chat messages, the form other libraries read and write.

`trajectory_to_messages` gives `user`, then per step an `assistant` message (with `tool_calls`)
and one `tool` message per call; `trajectory_from_messages` reads that form back, rendering each
step's observation as the collector would have shown it (`chat_format.format_observation`), so
a trajectory read from a public SFT set trains exactly like a collected one.
`write_trajectories` and `read_trajectories` keep trajectories in JSONL, one a line, in
tooltune's lossless form or as such messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tooltune.chat_format import format_observation
from tooltune.config import TaskTier, as_group
from tooltune.jsonl import read_jsonl
from tooltune.types import AgentAction, AgentStep, AgentTrajectory, ToolCall, ToolResponse

ERROR_PREFIX = "Error: "  # how a failed call's `tool` message begins


def trajectory_to_messages(
    trajectory: AgentTrajectory, system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """user, then per step an `assistant` message (with `tool_calls`) and one `tool` message
    per call (with `tool_call_id`)."""
    messages: list[dict[str, Any]] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": trajectory.prompt})
    for step in trajectory.steps:
        action = step.action
        message: dict[str, Any] = {"role": "assistant", "content": action.content}
        if action.thinking:
            message["reasoning_content"] = action.thinking
        if action.tool_calls:
            message["tool_calls"] = [_call_to_openai(c) for c in action.tool_calls]
        if step.weight != 1.0:  # OpenAI's fine-tuning format: `weight` 0 is shown, not learned
            message["weight"] = step.weight
        messages.append(message)
        for response in step.tool_responses:
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": response.call_id,
                    "name": response.name,
                    "content": response_content(response),
                }
            )
    return messages


def trajectory_to_record(trajectory: AgentTrajectory) -> dict[str, Any]:
    """One JSONL row that chat-format loaders understand, plus tooltune's own fields."""
    return {
        "messages": trajectory_to_messages(trajectory),
        "tools": trajectory.tools,
        "task_id": trajectory.task_id,
        "task_tier": str(trajectory.task_tier),
        "final_answer": trajectory.final_answer,
        "total_reward": trajectory.total_reward,
        "success": trajectory.success,
    }


def trajectory_from_messages(
    messages: list[dict[str, Any]],
    task_tier: TaskTier | str = TaskTier.SIMPLE,
    tools: list[dict[str, Any]] | None = None,
) -> AgentTrajectory:
    """Rebuild a trajectory from OpenAI-style messages (system messages are skipped)."""
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise ValueError("messages hold no user message to take the prompt from")
    trajectory = AgentTrajectory(
        prompt=_content_text(users[0].get("content")), task_tier=as_group(task_tier)
    )
    trajectory.tools = list(tools or [])
    started = False
    for message in messages:
        role = message.get("role")
        if role == "user" and not started:
            started = True
            continue
        if role == "assistant":
            calls = [_call_from_openai(c, i) for i, c in enumerate(message.get("tool_calls") or [])]
            content = _content_text(message.get("content"))
            kind = "tool_call" if calls else ("respond" if content.strip() else "think")
            action = AgentAction(kind, content, calls, message.get("reasoning_content") or "")
            trajectory.steps.append(AgentStep(action=action, weight=_weight(message)))
        elif role == "tool":
            if not trajectory.steps:
                raise ValueError("a tool message comes before any assistant message")
            step = trajectory.steps[-1]
            names = {c.id: c.name for c in step.action.tool_calls}
            call_id = message.get("tool_call_id", "")
            step.tool_responses.append(
                _response_from_content(call_id, message.get("name") or names.get(call_id, ""),
                                       _content_text(message.get("content")))
            )  # fmt: skip
    for step in trajectory.steps:
        if step.tool_responses:
            step.observation = format_observation(step.tool_responses)
    if trajectory.steps and trajectory.steps[-1].action.type == "respond":
        trajectory.final_answer = trajectory.steps[-1].action.content
    return trajectory


def _weight(message: dict[str, Any]) -> float:
    """An assistant message's `weight` (OpenAI's fine-tuning format: 0 or 1; default 1)."""
    weight = message.get("weight", 1.0)
    if isinstance(weight, bool) or weight not in (0, 1):  # SFT teaches a turn or does not
        raise ValueError(f"an assistant message's weight must be 0 or 1, got {weight!r}")
    return float(weight)


def _content_text(content: Any) -> str:
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


def response_content(response: ToolResponse) -> str:
    """A tool message's content: the result as text (JSON unless it is a string), or
    ``Error: ...`` for a failed call."""
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


def write_trajectories(
    path: str | Path,
    trajectories: Iterable[AgentTrajectory],
    *,
    messages: bool = False,
    append: bool = False,
) -> int:
    """Write one trajectory per line: tooltune's lossless form, or `messages=True` for rows of
    OpenAI-style chat messages that other libraries load. Returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for t in trajectories:
            row = trajectory_to_record(t) if messages else t.to_dict()
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
        f.flush()
        os.fsync(f.fileno())
    return count


def read_trajectories(path: str | Path) -> list[AgentTrajectory]:
    """Read either form written by `write_trajectories`; a bad line names its number."""
    out = []
    for number, row in read_jsonl(path):
        try:
            if "messages" in row:
                t = trajectory_from_messages(
                    row["messages"], row.get("task_tier", "simple"), row.get("tools")
                )
                t.task_id, t.success = row.get("task_id"), bool(row.get("success", False))
                t.total_reward = float(row.get("total_reward", 0.0))
                out.append(t)
            else:
                out.append(AgentTrajectory.from_dict(row))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a trajectory: {exc}") from None
    return out
