"""Where a user environment's SFT data comes from: a demonstrations file, an expert function,
or the model's own verified successes (rejection sampling).

Every source ends as verified `AgentTrajectory` episodes of training tasks, rendered by SFT
exactly as a rollout renders them (the system prompt lists the task's tools, tool turns carry
the real tools' results).
"""

from __future__ import annotations

import copy
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tooltune.chat_format import format_observation
from tooltune.rollout import Completion, SamplingParams, TrajectoryCollector
from tooltune.tasks.expert import Result, Turn, conversation
from tooltune.types import AgentTrajectory


class ExpertFunction:
    """A `Policy` that plays `expert(task, results)` turn by turn.

    `results` holds one list per earlier tool turn of `tasks.expert.Result`s (`name`, `ok`,
    `value`, `error`). The function returns the next move: a list of calls
    (`{"name": ..., "arguments": {...}}`), one call as a dict, or the final answer as text."""

    def __init__(self, fn: Callable[[Any, list[list[Result]]], Any], tasks: list[Any]) -> None:
        self.fn = fn
        self.tasks = {t.prompt: t for t in tasks}

    def prepare(self, tasks: list[Any]) -> None:
        self.tasks.update({t.prompt: t for t in tasks})

    def generate(
        self, prompts: list[str], sampling: Any = None, prompt_token_ids: Any = None
    ) -> list[Completion]:
        out = []
        for prompt in prompts:
            user, history = conversation(prompt)
            task = self.tasks.get(user)
            if task is None:
                out.append(Completion("I have no plan for this task."))
                continue
            move = self.fn(task, history)
            if isinstance(move, dict):
                move = [move]
            if isinstance(move, list):
                calls = [{"name": c["name"], "arguments": c.get("arguments", {})} for c in move]
                out.append(Completion(Turn(calls=calls).render()))
            else:
                out.append(Completion(Turn(answer=str(move)).render()))
        return out


def collect_successes(
    policy: Any,
    env: Any,
    tasks: list[Any],
    config: Any,
    tool_style: str,
    *,
    num_samples: int = 1,
    sampling: SamplingParams | None = None,
    bar: Any = None,
) -> tuple[list[AgentTrajectory], int]:
    """(verified successes, episodes run) of `policy` on `tasks`: an expert's demonstrations,
    or with `num_samples` > 1 at a temperature, rejection sampling of a model's own episodes."""
    prepare = getattr(policy, "prepare", None)
    if callable(prepare):
        prepare(tasks)
    collector = TrajectoryCollector(policy, env.registry, config, sampling=sampling,
                                    tool_style=tool_style, verifier=env.verify)  # fmt: skip
    kept, total = [], 0
    for start in range(0, len(tasks), 64):  # as many episodes as one collect call holds well
        chunk = tasks[start : start + 64]
        episodes = collector.collect(chunk, num_samples=num_samples)
        total += len(episodes)
        kept += [e for e in episodes if e.success]
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return kept, total


def load_demonstrations(env: Any, source: Path | list[AgentTrajectory]) -> list[AgentTrajectory]:
    """The chats of a JSONL file (or already read, `sft.load_chat_rows`) as episodes of the
    environment's training tasks (found by prompt).

    A call to a tool the environment lacks is refused with the file and line. Tool results
    missing from the file are filled in by running the calls (one fresh episode per chat);
    a chat whose answer does not verify, or that belongs to a test task, is left out."""
    from tooltune.training.sft import load_chat_jsonl

    by_prompt = {t.prompt: t for t in env.all_tasks}
    known = set(env.tool_names())
    out, unverified, test = [], 0, 0
    if isinstance(source, Path):
        path, chats = str(source), load_chat_jsonl(source)
    else:  # copies: the tool results filled in below stay out of the environment's rows
        path, chats = "demonstrations", copy.deepcopy(source)
    for demo in chats:
        where = demo.metadata.get("source", path)
        for call in demo.tool_calls:
            if call.name not in known:
                raise ValueError(f"{where}: calls {call.name!r}, a tool the environment lacks")
        task = by_prompt.get(demo.prompt)
        if task is not None and task.split == "test":
            test += 1
            continue
        episode_id = uuid.uuid4().hex[:12]
        demo.metadata["episode_id"] = episode_id
        with env.registry(episode_id, task.tools if task else None) as registry:
            demo.tools = demo.tools or registry.openai_tools()
            for step in demo.steps:
                if step.action.tool_calls and not step.tool_responses:
                    step.tool_responses = registry.execute_many(step.action.tool_calls)
                if step.tool_responses:
                    step.observation = format_observation(
                        step.tool_responses, env.config.max_observation_chars
                    )
            if task is not None:
                demo.task_id, demo.task_tier = task.id, task.tier
                demo.success = bool(env.verify(task, demo))
            else:
                demo.success = True  # not one of the tasks: nothing to check it against
        if demo.success:
            out.append(demo)
        else:
            unverified += 1
    if unverified:
        print(f"tooltune: {path}: left out {unverified} demonstrations whose answer does not "
              "verify", file=sys.stderr)  # fmt: skip
    if test:
        print(f"tooltune: {path}: left out {test} demonstrations of test tasks", file=sys.stderr)
    if not out:
        raise ValueError(f"{path}: no usable demonstration")
    return out
