"""`ToolEnv`: your tools and your tasks, ready for rollouts, SFT, GRPO and evaluation.

An environment is what the pipeline needs to know about a world: the tasks (with a split and a
group each), a fresh tool registry per episode, how an episode is verified, the reward terms,
and where SFT data comes from (demonstrations, an expert, or neither: then the model's own
verified successes). The built-in world (`tooltune.environment.BuiltinWorld`) has the same
methods; `AgentTrainingPipeline` and `evaluation.evaluate` take either.

    from tooltune import ToolEnv, reward, tool

    @tool
    def add(a: float, b: float) -> float:
        "Add two numbers."
        return a + b

    @reward(weight=0.2)
    def short(task, trajectory) -> float:
        return 1.0 if len(trajectory.steps) <= 2 else 0.0

    env = ToolEnv(tasks="tasks.jsonl", tools=[add], rewards=[short])
"""

from __future__ import annotations

import hashlib
import random
import sys
import threading
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tooltune.config import AgentConfig
from tooltune.registry import ToolDefinition, ToolRegistry, ToolRegistryError, tool
from tooltune.tasks import Task
from tooltune.tasks.checkers import verify as verify_spec
from tooltune.tasks.sources import load_task_source
from tooltune.types import AgentTrajectory

ToolsLike = Any  # ToolDefinition | typed function | module | object with .tools | list of these


@dataclass
class Reward:
    """A user's reward term: `fn(task, trajectory) -> float`, added to the rubric at `weight`."""

    fn: Callable[[Task, AgentTrajectory], float]
    weight: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.fn.__name__

    def __call__(self, task: Task, trajectory: AgentTrajectory) -> float:
        return float(self.fn(task, trajectory))


def reward(fn: Callable | None = None, *, weight: float = 1.0, name: str = "") -> Any:
    """Decorator: `@reward` or `@reward(weight=0.5)` turns `(task, trajectory) -> float` into a
    `Reward` term, reported on its own beside the built-in terms."""
    if fn is not None:
        return Reward(fn, weight, name)
    return lambda f: Reward(f, weight, name)


def tool_definitions(tools: ToolsLike) -> list[ToolDefinition]:
    """Tool definitions from a definition, a typed function, a module (its `@tool`s, or else its
    public functions defined there), an object with `.tools` (an MCP bridge) or a list."""
    if tools is None:
        return []
    if isinstance(tools, ToolDefinition):
        return [tools]
    if isinstance(tools, types.ModuleType):
        found = [v for v in vars(tools).values() if isinstance(v, ToolDefinition)]
        return found or [
            tool(v) for k, v in vars(tools).items()
            if isinstance(v, types.FunctionType) and not k.startswith("_")
            and v.__module__ == tools.__name__
        ]  # fmt: skip
    if hasattr(tools, "tools") and not callable(tools):
        return tool_definitions(list(tools.tools))
    if callable(tools):
        return [tool(tools)]
    if isinstance(tools, Iterable):
        return [d for item in tools for d in tool_definitions(item)]
    raise ToolRegistryError(f"not a tool: {tools!r}")


def _test_ids(tasks: list[Task], fraction: float) -> set[str]:
    """Tasks without a split: in each group, the `fraction` (at least one, when the group has
    two or more) whose id hashes lowest; stable when tasks are added or reordered."""
    out: set[str] = set()
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        if task.metadata.pop("split_drawn", False):
            groups.setdefault(task.group, []).append(task)
    for members in groups.values():
        if len(members) < 2 or fraction <= 0:
            continue
        n = max(1, round(fraction * len(members)))
        ranked = sorted(members, key=lambda t: hashlib.sha256(t.id.encode()).hexdigest())
        out |= {t.id for t in ranked[:n]}
    return out


class ToolEnv:
    """Tasks, tools, rewards and SFT data for training a model on your own tools."""

    def __init__(
        self,
        tasks: Any,
        tools: ToolsLike = (),
        *,
        episode_tools: Callable[[str], ToolsLike] | None = None,
        rewards: Iterable[Reward | Callable] = (),
        demonstrations: str | Path | Any = None,
        expert: Callable[[Task, list], Any] | None = None,
        test_fraction: float = 0.2,
        config: AgentConfig | None = None,
        name: str = "",
    ) -> None:
        """`tasks`: a JSONL path, a list of dicts/`Task`s, or a `datasets.Dataset` (columns in
        `tooltune.tasks.sources`). `tools` are shared by every episode; `episode_tools(episode_id)`
        builds tools with fresh state for one episode (a list, or an object with `.tools` and
        `.close()`, closed when the episode ends). `rewards`: `@reward` terms. SFT data:
        `demonstrations` (OpenAI-style chats with `tool_calls`: a JSONL path, a
        `datasets.Dataset` or a list of dicts with `messages`), or `expert(task,
        results) -> calls | answer` (see `ExpertFunction`), or neither (the model's own verified
        successes). Tasks without a split are drawn into test at `test_fraction` per group."""
        self.config = config or AgentConfig()
        self.name = name
        self.tools = tool_definitions(tools)
        self.episode_tools = episode_tools
        self.rewards = [r if isinstance(r, Reward) else Reward(r) for r in rewards]
        self.demonstrations_path: Path | None = None
        self.demonstration_rows: list[AgentTrajectory] | None = None  # chats given as objects
        if isinstance(demonstrations, str | Path):
            self.demonstrations_path = Path(demonstrations)
        elif demonstrations is not None:  # read now: a bad row fails before any training
            from tooltune.training.sft import load_chat_rows

            self.demonstration_rows = load_chat_rows(demonstrations, "demonstrations")
        self.expert_fn = expert
        self.reward_errors: Counter[str] = Counter()
        self._closers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.closed = False
        for item in tools if isinstance(tools, list | tuple) else [tools]:
            if hasattr(item, "tools") and callable(getattr(item, "close", None)):
                self.on_close(item.close)  # an MCP server given as tools stops with the env
        ToolRegistry(self.tools, config=self.config)  # duplicate names, bad schemas: now
        self.all_tasks = load_task_source(tasks)
        test = _test_ids(self.all_tasks, test_fraction)
        for task in self.all_tasks:
            task.split = "test" if task.id in test else task.split
            task.tools = task.tools or self.tool_names()
        self._check_tasks()
        self.groups = list(dict.fromkeys(t.group for t in self.all_tasks))

    # -- checks before any training ------------------------------------------------------------
    def _check_tasks(self) -> None:
        known = set(self.tool_names())
        for task in self.all_tasks:
            unknown = [n for n in task.tools if n not in known]
            if unknown:
                raise ValueError(
                    f"task {task.id} names tools the environment lacks: {', '.join(unknown)} "
                    f"(tools: {', '.join(sorted(known))})"
                )
        names = [r.name for r in self.rewards]
        from tooltune.training.rewards import default_terms

        clash = [n for n in names if n in default_terms(1) or n == "outcome" or names.count(n) > 1]
        if clash:
            raise ValueError(f"reward names must be unique and new: {', '.join(set(clash))}")
        path = self.demonstrations_path
        if path and path.is_dir():
            raise ValueError(f"demonstrations {path} is a folder: give a JSONL file, or a "
                             f"datasets.Dataset (datasets.load_from_disk('{path}'))")  # fmt: skip
        if path and not path.is_file():
            raise ValueError(f"demonstrations file {path} not found")
        if not any(t.split == "train" for t in self.all_tasks):
            raise ValueError("no training tasks: every task is in the test split")

    # -- tools -----------------------------------------------------------------------------------
    def tool_names(self) -> list[str]:
        """Every tool an episode can be offered (the episode tools of a probe episode too)."""
        names = [t.name for t in self.tools]
        if self.episode_tools is not None:
            if not hasattr(self, "_episode_names"):
                with self.registry("probe") as probe:
                    self._episode_names = [n for n in probe.names if n not in names]
            names += self._episode_names
        return names

    def registry(
        self, episode_id: str | None = None, tools: list[str] | None = None
    ) -> ToolRegistry:
        """A fresh registry for one episode: the shared tools plus the episode's own."""
        if self.closed:
            raise RuntimeError("the environment is closed")
        episode_id = episode_id or uuid.uuid4().hex[:12]
        registry = ToolRegistry(self.tools, config=self.config)
        if self.episode_tools is not None:
            made = self.episode_tools(episode_id)
            for definition in tool_definitions(made):
                registry.register(definition)
            if callable(getattr(made, "close", None)):
                registry.on_close(made.close)
        if tools is None:
            return registry
        unknown = [n for n in tools if n not in registry]
        if unknown:
            registry.close()
            raise ToolRegistryError(f"unknown tools: {', '.join(unknown)} (known: "
                                    f"{', '.join(registry.names)})")  # fmt: skip
        subset = registry.subset(tools)
        subset.on_close(registry.close)
        return subset

    def __call__(
        self, episode_id: str | None = None, tools: list[str] | None = None
    ) -> ToolRegistry:
        """An environment is a tool source for `TrajectoryCollector` (episode_id, names)."""
        return self.registry(episode_id, tools)

    # -- tasks -----------------------------------------------------------------------------------
    def sample_tasks(
        self, split: str, n: int, seed: int = 0, per_group: bool = False
    ) -> list[Task]:
        """`per_group`: the first `n` tasks of each group in the split, in file order (test
        sets). Otherwise `n` tasks drawn with `seed`, repeating the split when it is smaller."""
        if split == "validation" and not any(t.split == split for t in self.all_tasks):
            split = "train"  # a validation score on training tasks (only logged, never used)
        pool = [t for t in self.all_tasks if t.split == split]
        if per_group:
            return [t for g in self.groups for t in [t for t in pool if t.group == g][:n]]
        if not pool or n <= 0:
            return []
        rng, out = random.Random(f"{split}:{seed}"), []
        while len(out) < n:
            out += rng.sample(pool, min(len(pool), n - len(out)))
        return out

    # -- verification and rewards ----------------------------------------------------------------
    def verify(self, task: Task, trajectory: AgentTrajectory) -> bool:
        return verify_spec(task, trajectory, self)

    def rubric(self, config: AgentConfig) -> Any:
        """The built-in terms (verified outcome, format, tool success, efficiency, unnecessary
        calls, weighted by `config.reward_weights`) plus this environment's `@reward` terms."""
        from tooltune.training.rewards import rubric_from_config

        extra = {r.name: (self._guarded(r), r.weight) for r in self.rewards}
        return rubric_from_config(config, outcome=lambda t, task: self.verify(task, t), extra=extra)

    def _guarded(self, term: Reward) -> Callable[[AgentTrajectory, Any], float]:
        """A user term that raises scores 0 for that episode, is counted, and is reported with
        the task id (the first few times); the episode's other terms still count."""

        def score(trajectory: AgentTrajectory, task: Any) -> float:
            try:
                return term(task, trajectory)
            except Exception as exc:
                with self._lock:
                    self.reward_errors[term.name] += 1
                    count = self.reward_errors[term.name]
                trajectory.metadata.setdefault("reward_errors", {})[term.name] = repr(exc)
                if count <= 5:
                    print(f"tooltune: reward {term.name!r} raised on task {getattr(task, 'id', '?')}: "
                          f"{exc!r} ({count} so far; scored 0)", file=sys.stderr)  # fmt: skip
                return 0.0

        return score

    # -- SFT data --------------------------------------------------------------------------------
    def expert(self) -> Any:
        """A `Policy` playing `expert(task, results)`, or None."""
        if self.expert_fn is None:
            return None
        from tooltune.env_data import ExpertFunction

        return ExpertFunction(self.expert_fn, self.all_tasks)

    def demonstrations(self) -> list[AgentTrajectory] | None:
        """The demonstrations' episodes (tool results filled in by running the calls when the
        chats have none), or None without demonstrations."""
        source = self.demonstrations_path or self.demonstration_rows
        if source is None:
            return None
        from tooltune.env_data import load_demonstrations

        return load_demonstrations(self, source)

    def augmenter(self, rng: random.Random) -> Callable[[Any], Any] | None:
        return None  # the built-in world renames entities; a user's world is left as it is

    def describe(self) -> str:
        n_test = sum(t.split == "test" for t in self.all_tasks)
        return (f"{self.name or 'environment'}: {len(self.all_tasks)} tasks ({n_test} test) in "
                f"{len(self.groups)} group(s), tools {', '.join(self.tool_names())}")  # fmt: skip

    # -- lifetime --------------------------------------------------------------------------------
    def on_close(self, closer: Callable[[], None]) -> None:
        """Run `closer` when the environment closes (stop a server the environment started)."""
        self._closers.append(closer)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for closer in reversed(self._closers):
            closer()

    def __enter__(self) -> ToolEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def openapi_tools(spec: str | Path | dict, base_url: str, **kwargs: Any) -> list[ToolDefinition]:
    """One tool per operation of an OpenAPI 3 spec, calling `base_url` (see `tools.openapi`)."""
    from tooltune.tools.openapi import make_openapi_tools

    return make_openapi_tools(spec, base_url=base_url, **kwargs)


def mcp_tools(command: list[str], **kwargs: Any) -> Any:
    """A live connection to an MCP server run as `command` over stdio; its `.tools` are tool
    definitions, `.close()` stops it. Pass it as `tools=` (or return it from `episode_tools`)."""
    from tooltune.tools.mcp_bridge import MCPBridge

    return MCPBridge(command, **kwargs)


def bind(definitions: ToolsLike, **fixed: Any) -> list[ToolDefinition]:
    """The tools with arguments fixed and hidden from the model, e.g. `bind(tools,
    session=episode_id)` gives each episode its own state on a shared server."""
    out = []
    for d in tool_definitions(definitions):
        params = dict(d.parameters)
        params["properties"] = {k: v for k, v in params.get("properties", {}).items()
                                if k not in fixed}  # fmt: skip
        params["required"] = [k for k in params.get("required", []) if k not in fixed]

        out.append(ToolDefinition(d.name, d.description, params, _with(d.function, fixed),
                                  d.timeout, dict(d.metadata)))  # fmt: skip
    return out


def _with(function: Callable[..., Any], fixed: dict[str, Any]) -> Callable[..., Any]:
    def call(**arguments: Any) -> Any:
        return function(**arguments, **fixed)

    return call


ENV_NAMES = ("env", "environment", "make_env", "load_environment")


def load_env(spec: str) -> Any:
    """The environment `spec` names: `path/to/env.py` or `package.module`, optionally with
    `:attr`. Without an attribute, the first of `ENV_NAMES` the file defines; a function is
    called (with no arguments) to make the environment."""
    import importlib
    import importlib.util

    target, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if target.endswith(".py") or Path(target).is_file():
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"environment file {path} not found")
        module_name = f"tooltune_env_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ValueError(f"cannot import environment module {target!r}: {exc}") from None
    names = [attr] if attr else list(ENV_NAMES)
    for name in names:
        value = getattr(module, name, None)
        if value is None:
            continue
        if callable(value) and not hasattr(value, "sample_tasks"):
            value = value()
        if not all(hasattr(value, m) for m in ("registry", "sample_tasks", "verify", "rubric")):
            raise ValueError(f"{spec}: {name} is a {type(value).__name__}, not an environment "
                             "(a tooltune.ToolEnv)")  # fmt: skip
        return value
    looked = ", ".join(f"`{n}`" for n in names)
    raise ValueError(f"{spec} defines no environment: looked for {looked} (a tooltune.ToolEnv, "
                     "or a function returning one)")  # fmt: skip
