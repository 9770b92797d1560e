"""Composable rewards for agent trajectories.

A reward function is `(trajectory, task) -> float`. A `Rubric` combines named functions with
weights and reports every component separately, so a training curve can show which part of the
reward moved. Success is the verified outcome of the task's checker (injected as `outcome`), never
a threshold on the total: a high-scoring trajectory with a wrong answer is still a failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tooltune.types import AgentTrajectory

RewardFn = Callable[[AgentTrajectory, Any], float]
OutcomeFn = Callable[[AgentTrajectory, Any], bool]

PER_CALL = 0.1  # the seed's +0.1 / -0.1 per tool call


def _minimal_call_count(task: Any) -> int | None:
    """Length of the task's shortest solution, or None when the task does not say."""
    calls = getattr(task, "minimal_calls", None)
    return None if calls is None else len(calls)


def _call_key(call: Any) -> str:
    return call.name + "\x00" + json.dumps(call.arguments, sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


def outcome_reward(outcome: OutcomeFn) -> RewardFn:
    """1.0 when the injected checker verifies the trajectory, else 0.0."""

    def reward(trajectory: AgentTrajectory, task: Any) -> float:
        return 1.0 if outcome(trajectory, task) else 0.0

    return reward


def verified_success(trajectory: AgentTrajectory, task: Any = None) -> bool:
    """Outcome checker for trajectories that were already verified (e.g. by the collector's
    `verifier`, which sees the episode's environment): reads `trajectory.success`."""
    return bool(trajectory.success)


def format_reward(trajectory: AgentTrajectory, task: Any = None) -> float:
    """Fraction of assistant turns that parsed cleanly.

    A turn is clean when none of its tool calls has a `parse_error` and it did something: called
    a tool or said something outside `<think>`. An empty or think-only turn wastes a turn.
    """
    if not trajectory.steps:
        return 0.0
    clean = 0
    for step in trajectory.steps:
        action = step.action
        ok = all(c.parse_error is None for c in action.tool_calls)
        acted = bool(action.tool_calls) or bool(action.content.strip())
        clean += ok and acted
    return clean / len(trajectory.steps)


def tool_success_reward(trajectory: AgentTrajectory, task: Any = None) -> float:
    """+0.1 per successful call, -0.1 per failed call (the seed's shaping), made unhackable.

    Repeating a successful call earns nothing, and when the task names its minimal solution,
    successes beyond that many calls earn nothing either; otherwise a policy could farm reward
    by calling a cheap tool over and over.
    """
    calls = {c.id: c for c in trajectory.tool_calls}
    seen: set[str] = set()
    successes, failures = 0, 0
    for response in trajectory.tool_responses:
        if not response.success:
            failures += 1
            continue
        call = calls.get(response.call_id)
        key = _call_key(call) if call is not None else f"id:{response.call_id}"
        if key in seen:
            continue
        seen.add(key)
        successes += 1
    cap = _minimal_call_count(task)
    if cap is not None:
        successes = min(successes, cap)
    return PER_CALL * (successes - failures)


def efficiency_reward(max_turns: int) -> RewardFn:
    """`1 - steps / max_turns` in [0, 1]: fewer turns is better."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be at least 1, got {max_turns}")

    def reward(trajectory: AgentTrajectory, task: Any = None) -> float:
        return max(0.0, 1.0 - len(trajectory.steps) / max_turns)

    return reward


def count_unnecessary_calls(trajectory: AgentTrajectory, task: Any = None) -> int:
    """Calls beyond the task's minimal solution, or exact repeats of an earlier call.

    The two overlap (a repeat is usually also an excess call), so the larger of the two counts
    is returned rather than their sum. Without a known minimal solution only repeats count.
    """
    calls = trajectory.tool_calls
    keys = [_call_key(c) for c in calls if c.parse_error is None]
    duplicates = len(keys) - len(set(keys))
    minimal = _minimal_call_count(task)
    excess = 0 if minimal is None else max(0, len(calls) - minimal)
    return max(duplicates, excess)


def unnecessary_calls_reward(trajectory: AgentTrajectory, task: Any = None) -> float:
    """Minus the number of unnecessary calls (a penalty; weight it to set its price)."""
    return -float(count_unnecessary_calls(trajectory, task))


# --------------------------------------------------------------------------------------------
# Combination
# --------------------------------------------------------------------------------------------


@dataclass
class RewardResult:
    total: float
    components: dict[str, float] = field(default_factory=dict)
    success: bool = False


class Rubric:
    """Weighted sum of named reward functions, with the verified outcome kept apart.

    `outcome` (if given) is called once per trajectory: it sets `success` and the "outcome"
    component. Components named in `success_gated` count only on verified successes: an
    efficiency bonus for a wrong answer would teach the model to give up early.
    Components are reported unweighted; `total = sum(weight * component)`.
    """

    def __init__(
        self,
        terms: Mapping[str, RewardFn],
        weights: Mapping[str, float],
        outcome: OutcomeFn | None = None,
        success_gated: tuple[str, ...] = ("efficiency",),
    ):
        self.terms = dict(terms)
        self.weights = {name: float(w) for name, w in weights.items()}
        self.outcome = outcome
        self.success_gated = tuple(success_gated)
        names = set(self.terms) | ({"outcome"} if outcome is not None else set())
        unknown = set(self.weights) - names
        if unknown:
            raise ValueError(f"weights given for unknown reward terms: {sorted(unknown)}")
        if "outcome" in self.terms:
            raise ValueError("pass the outcome checker as `outcome=`, not as a term")

    def add(self, name: str, fn: RewardFn, weight: float) -> Rubric:
        """Add another term (e.g. a reward model) and return self."""
        if name in self.terms or name == "outcome":
            raise ValueError(f"reward term {name!r} already exists")
        self.terms[name] = fn
        self.weights[name] = float(weight)
        return self

    def evaluate(self, trajectory: AgentTrajectory, task: Any) -> RewardResult:
        components: dict[str, float] = {}
        success = False
        if self.outcome is not None:
            success = bool(self.outcome(trajectory, task))
            components["outcome"] = 1.0 if success else 0.0
        for name, fn in self.terms.items():
            value = float(fn(trajectory, task))
            if name in self.success_gated and not success:
                value = 0.0
            components[name] = value
        total = sum(self.weights.get(name, 0.0) * v for name, v in components.items())
        return RewardResult(total=total, components=components, success=success)

    def score(self, trajectory: AgentTrajectory, task: Any) -> tuple[float, dict[str, float]]:
        result = self.evaluate(trajectory, task)
        return result.total, result.components

    def apply(self, trajectory: AgentTrajectory, task: Any) -> float:
        """Score and write `total_reward`, `reward_components` and `success` on the trajectory."""
        result = self.evaluate(trajectory, task)
        trajectory.total_reward = result.total
        trajectory.reward_components = dict(result.components)
        if self.outcome is not None:
            trajectory.success = result.success
        return result.total

    def __call__(self, trajectory: AgentTrajectory, task: Any) -> float:
        """The total alone, so a rubric is itself a reward function (and can be nested).
        Use `apply` as the collector's `reward_fn` to also record components and success."""
        return self.evaluate(trajectory, task).total


def default_terms(max_turns: int) -> dict[str, RewardFn]:
    return {
        "format": format_reward,
        "tool_success": tool_success_reward,
        "efficiency": efficiency_reward(max_turns),
        "unnecessary_calls": unnecessary_calls_reward,
    }


def rubric_from_config(
    config: Any,
    outcome: OutcomeFn | None,
    extra: Mapping[str, tuple[RewardFn, float]] | None = None,
) -> Rubric:
    """The default rubric with `config.reward_weights` and `config.max_turns`.

    `extra` adds terms by name, e.g. `{"reward_model": (reward_model_term(rm), 0.5)}`.
    Weights for terms that are not available (such as "outcome" without a checker) are dropped.
    """
    terms = default_terms(config.max_turns)
    weights = {
        name: w
        for name, w in config.reward_weights.items()
        if name in terms or (name == "outcome" and outcome is not None)
    }
    for name in config.reward_weights:
        if name not in terms and name != "outcome" and name not in (extra or {}):
            raise ValueError(f"reward_weights names an unknown reward term {name!r}")
    rubric = Rubric(terms, weights, outcome=outcome)
    for name, (fn, weight) in (extra or {}).items():
        rubric.add(name, fn, config.reward_weights.get(name, weight))
    return rubric
