"""Rollouts on Ray: rollout workers as actors, each with its own policy copy and tools.

A `RayRolloutBackend` starts `num_workers` actors. Every actor builds its policy with
`policy_factory()` and its tool source with `tools_factory()` inside its own process, so tool
calls (Python sandboxes, HTTP services, SQLite) run next to the model that made them and never
cross the driver. `collect(tasks, num_samples)` means exactly what `TrajectoryCollector.collect`
means: `num_samples` episodes per task, grouped task by task, in task order.

Batches and seeds. A collect call's episodes are split into one contiguous share per worker
(`plan_batches`), and each worker plays its share as ONE batch in one `TrajectoryCollector`,
as the in-process collector plays all of them. That collector seeds one generator per
`generate` call, so a sampled token depends on the batch it was sampled in; each share is
therefore seeded by its position, `batch_seed(seed, first_episode)`, and results are the same
for a given seed and number of workers, whichever worker runs which share. The first share's
seed is `seed` itself, so one worker samples exactly what the in-process collector samples,
and `collect_local(..., num_workers=n)` gives, in this process, what n workers give.

Rewards and verification run inside the actors, where the episode's tool state lives:
`verifier="tools"` uses the tool source's own `verify(task, trajectory)` (an `Environment`),
and `reward_fn(trajectory, task)` must then read `trajectory.success` (for example a rubric
built with `outcome=tooltune.training.rewards.verified_success`).

Ray is optional (the `scale` extra): it is imported only when a backend is created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune.config import AgentConfig, TaskTier
from tooltune.prompt_format import tool_style_of
from tooltune.rollout import SamplingParams, ToolSource, TrajectoryCollector
from tooltune.types import AgentTrajectory

Verifier = Callable[[Any, AgentTrajectory], bool]
RewardFn = Callable[[AgentTrajectory, Any], float]


def _ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Ray backend needs the 'scale' extra: pip install 'tooltune[scale]'"
        ) from exc
    return ray


# --------------------------------------------------------------------------------------------
# Shares of a collect call, and their seeds
# --------------------------------------------------------------------------------------------


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and runs,
    unlike `hash`)."""
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def batch_seed(base_seed: int, first_episode: int) -> int:
    """Seed of the share of a collect call that starts at episode `first_episode`: `base_seed`
    for the first share (what the in-process collector would use), derived for the others."""
    return base_seed if first_episode == 0 else derive_seed("batch", base_seed, first_episode)


@dataclass
class Episode:
    """One planned episode: which task, and which of its samples."""

    task_index: int
    sample_index: int
    task: Any


@dataclass
class EpisodeBatch:
    """One worker's share of a collect call, played as one batch sampled with `seed`
    (None: unseeded)."""

    episodes: list[Episode]
    seed: int | None


def plan_episodes(tasks: Sequence[Any], num_samples: int) -> list[Episode]:
    """Episodes in the collector's order: task by task, `num_samples` each."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    return [Episode(t, s, task) for t, task in enumerate(tasks) for s in range(num_samples)]


def plan_batches(
    tasks: Sequence[Any], num_samples: int, seed: int | None, parts: int
) -> list[EpisodeBatch]:
    """The episodes of `tasks` in at most `parts` contiguous shares, each with its seed."""
    batches, first = [], 0
    for chunk in split_evenly(plan_episodes(tasks, num_samples), parts):
        batches.append(EpisodeBatch(chunk, None if seed is None else batch_seed(seed, first)))
        first += len(chunk)
    return batches


def run_batch(
    policy: Any,
    tools: ToolSource,
    config: AgentConfig,
    batch: EpisodeBatch,
    *,
    sampling: SamplingParams,
    tool_style: str = "json",
    verifier: Verifier | None = None,
    reward_fn: RewardFn | None = None,
    tier: TaskTier = TaskTier.SIMPLE,
) -> list[AgentTrajectory]:
    """Play `batch` in this process (what each Ray worker runs): all its episodes together in
    one collector, sampled with the batch's seed."""
    if not batch.episodes:
        return []
    collector = TrajectoryCollector(
        policy, tools, config, sampling=dataclasses.replace(sampling, seed=batch.seed),
        tool_style=tool_style, verifier=verifier, reward_fn=reward_fn,
    )  # fmt: skip
    trajectories = collector.collect([e.task for e in batch.episodes], 1, tier=tier)
    for e, t in zip(batch.episodes, trajectories, strict=True):
        t.metadata["task_index"] = e.task_index
        t.metadata["sample_index"] = e.sample_index
    return trajectories


def collect_local(
    policy: Any,
    tools: ToolSource,
    config: AgentConfig,
    tasks: Iterable[Any],
    num_samples: int = 1,
    *,
    num_workers: int = 1,
    sampling: SamplingParams | None = None,
    tool_style: str = "json",
    verifier: Verifier | None = None,
    reward_fn: RewardFn | None = None,
    tier: TaskTier = TaskTier.SIMPLE,
) -> list[AgentTrajectory]:
    """In this process, what `RayRolloutBackend.collect` gives with `num_workers` workers
    (same shares, same seeds, same results)."""
    sampling = sampling or _default_sampling(config)
    out = []
    for batch in plan_batches(list(tasks), num_samples, sampling.seed, num_workers):
        out += run_batch(
            policy, tools, config, batch, sampling=sampling, tool_style=tool_style,
            verifier=verifier, reward_fn=reward_fn, tier=tier,
        )  # fmt: skip
    return out


def _default_sampling(config: AgentConfig) -> SamplingParams:
    return SamplingParams(
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
    )


def split_evenly(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Contiguous chunks whose sizes differ by at most one (empty chunks dropped)."""
    n = len(items)
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [list(items[a:b]) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


# --------------------------------------------------------------------------------------------
# Picklable factories
# --------------------------------------------------------------------------------------------


@dataclass
class PolicySnapshot:
    """A policy carried as the bytes of its saved directory, so it can be rebuilt in another
    process or on another machine (`load_policy` reads either policy format).

    A LoRA policy's adapter names its base model by path: that path must exist where the
    snapshot is loaded."""

    files: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_policy(cls, policy: Any) -> PolicySnapshot:
        directory = Path(tempfile.mkdtemp(prefix="tooltune-snapshot-"))
        try:
            policy.save(directory)
            files = {
                str(p.relative_to(directory)): p.read_bytes()
                for p in sorted(directory.rglob("*"))
                if p.is_file()
            }
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return cls(files)

    def __call__(self) -> Any:
        from tooltune.training.run_dir import load_policy

        directory = Path(tempfile.mkdtemp(prefix="tooltune-snapshot-"))
        try:
            for name, data in self.files.items():
                path = directory / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            return load_policy(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


@dataclass
class EnvironmentTools:
    """Builds the built-in `Environment` (the world's tools and its checker) in the worker.
    The world directory must be reachable from the worker (built on first use otherwise)."""

    world_dir: str | None = None
    seed: int = 0
    config: AgentConfig | None = None

    def __call__(self) -> Any:
        from tooltune.environment import Environment

        return Environment(world_dir=self.world_dir, seed=self.seed, config=self.config)


# --------------------------------------------------------------------------------------------
# The actor and the backend
# --------------------------------------------------------------------------------------------


class RolloutWorker:
    """Body of one Ray actor: a policy copy, a tool source, and `run_batch`. With
    ``tool_style=None`` it prompts in the style the policy was trained with (its saved
    prompt format), as every consumer of a saved model does."""

    def __init__(
        self,
        policy_factory: Callable[[], Any],
        tools_factory: Callable[[], ToolSource],
        config: AgentConfig,
        sampling: SamplingParams,
        tool_style: str | None,
        verifier: Verifier | str | None,
        reward_fn: RewardFn | None,
        threads: int,
    ) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.policy = policy_factory()
        self.tools = tools_factory()
        if verifier == "tools":
            verify = getattr(self.tools, "verify", None)
            if not callable(verify):
                raise TypeError(
                    'verifier="tools" needs a tool source with verify(task, trajectory)'
                )
            verifier = verify
        self.verifier = verifier
        self.config = config
        self.sampling = sampling
        self.tool_style = tool_style or tool_style_of(self.policy)
        self.reward_fn = reward_fn
        self.version = 0

    def ready(self) -> int:
        import os

        return os.getpid()

    def set_weights(self, state_dict: dict[str, Any], version: int) -> int:
        self.policy.model.load_state_dict(state_dict)
        self.version = version
        return version

    def run(self, batch: EpisodeBatch, tier: TaskTier) -> list[AgentTrajectory]:
        return run_batch(
            self.policy, self.tools, self.config, batch, sampling=self.sampling,
            tool_style=self.tool_style, verifier=self.verifier, reward_fn=self.reward_fn,
            tier=tier,
        )  # fmt: skip

    def close(self) -> None:
        close = getattr(self.tools, "close", None)
        if callable(close):
            close()


class RayRolloutBackend:
    """Trajectory collection spread over Ray actors (see the module docstring).

    `address=None` starts a private local Ray with `num_cpus` CPUs (default: one per worker
    thread); otherwise it connects to the cluster at `address` ("auto", "ray://host:10001"...).
    A Ray that is already initialised in this process is reused and left running.
    ``tool_style=None`` (the default): each worker prompts as its policy was trained.
    """

    def __init__(
        self,
        policy_factory: Callable[[], Any],
        tools_factory: Callable[[], ToolSource],
        config: AgentConfig | None = None,
        num_workers: int = 2,
        address: str | None = None,
        *,
        sampling: SamplingParams | None = None,
        tool_style: str | None = None,
        verifier: Verifier | str | None = None,
        reward_fn: RewardFn | None = None,
        num_cpus: int | None = None,
        threads_per_worker: int = 1,
        ray_init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        ray = _ray()
        self.config = config or AgentConfig()
        self.sampling = sampling or _default_sampling(self.config)
        self._started_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            kwargs.update(ray_init_kwargs or {})
            if address is None:
                kwargs.setdefault("num_cpus", num_cpus or num_workers * threads_per_worker)
                ray.init(**kwargs)
            else:
                kwargs.pop("include_dashboard", None)  # only meaningful for a new cluster
                ray.init(address=address, **kwargs)
            self._started_ray = True
        actor = ray.remote(num_cpus=threads_per_worker)(RolloutWorker)
        self.workers = [
            actor.remote(
                policy_factory,
                tools_factory,
                self.config,
                self.sampling,
                tool_style,
                verifier,
                reward_fn,
                threads_per_worker,
            )  # fmt: skip
            for _ in range(num_workers)
        ]
        self.version = 0
        try:
            ray.get([w.ready.remote() for w in self.workers])  # construction errors surface here
        except BaseException:
            self.shutdown()
            raise

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    def collect(
        self,
        tasks: Iterable[Any],
        num_samples: int = 1,
        tier: TaskTier = TaskTier.SIMPLE,
    ) -> list[AgentTrajectory]:
        """`num_samples` episodes per task, grouped task by task in task order; each worker
        plays its share as one batch, seeded from `self.sampling.seed` (set it per step, as
        the GRPO loop does, for fresh samples)."""
        ray = _ray()
        batches = plan_batches(list(tasks), num_samples, self.sampling.seed, self.num_workers)
        futures = [w.run.remote(b, tier) for w, b in zip(self.workers, batches, strict=False)]
        return [t for part in ray.get(futures) for t in part]

    def set_weights(self, state_dict: dict[str, Any]) -> int:
        """Load new policy weights into every worker: the tensors go into Ray's object store
        once and every actor reads the same object. Returns the new weights version."""
        ray = _ray()
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        ref = ray.put(cpu)
        self.version += 1
        ray.get([w.set_weights.remote(ref, self.version) for w in self.workers])
        return self.version

    def push_policy(self, policy: Any) -> int:
        """`set_weights(policy.model.state_dict())`: call after every optimiser step."""
        return self.set_weights(policy.model.state_dict())

    def shutdown(self) -> None:
        """Close the workers' tools, end the actors, and stop Ray if this backend started it."""
        ray = _ray()
        workers, self.workers = getattr(self, "workers", []), []
        if workers:
            with contextlib.suppress(Exception):  # a dead worker has nothing left to close
                ray.get([w.close.remote() for w in workers], timeout=30)
            for w in workers:
                ray.kill(w)
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> RayRolloutBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def make_ray_backend(
    policy: Any,
    config: AgentConfig,
    *,
    num_workers: int = 2,
    address: str | None = None,
    world_dir: str | Path | None = None,
    tools_factory: Callable[[], ToolSource] | None = None,
    sampling: SamplingParams | None = None,
    tool_style: str | None = None,
    verifier: Verifier | str | None = None,
    reward_fn: RewardFn | None = None,
    threads_per_worker: int = 1,
) -> RayRolloutBackend:
    """What `tooltune ... --backend ray [--ray-address ADDR]` calls: a backend whose workers
    hold a snapshot of `policy` and the built-in environment of `world_dir` (or the tools of
    `tools_factory`). With the built-in environment the default verifier is its own checker
    (`verifier="tools"`). The workers prompt in the tool style saved with `policy` (its
    prompt format) unless `tool_style` says otherwise. After each update, call
    `backend.push_policy(policy)`."""
    if tools_factory is None:
        tools_factory = EnvironmentTools(
            None if world_dir is None else str(world_dir), config.seed, config
        )
        verifier = "tools" if verifier is None else verifier
    return RayRolloutBackend(
        PolicySnapshot.from_policy(policy), tools_factory, config, num_workers, address,
        sampling=sampling, tool_style=tool_style, verifier=verifier, reward_fn=reward_fn,
        threads_per_worker=threads_per_worker,
    )  # fmt: skip
