"""Plain Python tools and a custom reward: the smallest tooltune environment."""

from pathlib import Path

from tooltune import ToolEnv, reward, tool


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@reward(weight=0.2)
def one_call(task, trajectory) -> float:  # a sum or a product needs exactly one call
    return 1.0 if len(trajectory.tool_calls) == 1 else 0.0


def expert(task, results):  # SFT data: call the task's shortest solution, then read the result
    return task.minimal_calls if not results else f"The answer is {results[-1][0].value:g}."


tasks = Path(__file__).with_name("tasks.jsonl")
env = ToolEnv(tasks, [add, multiply], rewards=[one_call], expert=expert)
