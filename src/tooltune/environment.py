"""The built-in world: a world on disk, its services, and one tool registry per episode.

`BuiltinWorld` (also importable as `Environment`, its earlier name) has the interface of
`tooltune.ToolEnv` (tasks by split and group, per-episode registries, verification, rubric,
expert), so the pipeline and evaluation treat it like any user environment. It builds the world when it is missing, loads (or builds) the search index, and
starts the flight service and the web server only when a registry first needs them. Each call to
`registry(episode_id)` returns a fresh `ToolRegistry` whose stateful tools are isolated to that
episode: file writes and image crops go to the episode's overlay directory, flight bookings carry
the episode id header, and the browser has its own history. Stateless tools (search, maths,
Python, SQL) are built once and shared.

The flight database is copied into the environment's private temporary directory, so bookings of
one environment never leak into another or into the cached world.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from tooltune.config import AgentConfig, TaskTier
from tooltune.registry import ToolDefinition, ToolRegistry, ToolRegistryError
from tooltune.tasks.schema_tasks import schema_tools
from tooltune.tasks.splits import default_world_dir
from tooltune.tasks.world import ensure_world
from tooltune.tasks.world_data import World
from tooltune.tools.catalogue import BUILTIN_TOOLS, HELDOUT_TOOLS, TOOL_FAMILY

_EPISODE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


class BuiltinWorld:
    """The world, its services and per-episode tool registries; use as a context manager."""

    groups = [t.value for t in TaskTier]  # reports group by tier
    name = "builtin"

    def __init__(
        self,
        world_dir: str | Path | None = None,
        seed: int | None = None,
        config: AgentConfig | None = None,
        size: str | None = None,
    ) -> None:
        """`world_dir` defaults to `~/.cache/tooltune/world-<seed>` (`world-<seed>-<size>` for
        sizes other than the default). A world already in `world_dir` is used as it is unless
        `seed` or `size` (a `WORLD_SIZES` name) asks for another one (then it is rebuilt); a
        missing or stale world is built (seed 0, size default)."""
        self.config = config or AgentConfig()
        if world_dir is None:
            world_dir = default_world_dir(seed or 0, size or "default")
        self.world_dir = Path(world_dir)
        self.world: World = ensure_world(self.world_dir, seed, size)
        self.seed = self.world.seed
        self._tmp = Path(tempfile.mkdtemp(prefix="tooltune-env-"))
        self.flights_db = self._tmp / "flights.db"
        shutil.copyfile(self.world.flights_db, self.flights_db)
        self.episodes_dir = self._tmp / "episodes"
        self.episodes_dir.mkdir()
        self._lock = threading.RLock()
        self._shared: dict[str, list[ToolDefinition]] = {}
        self._index: Any = None
        self._flights: Any = None
        self._web: Any = None
        self._spec: dict | None = None
        self.closed = False

    # -- services -----------------------------------------------------------------------------
    @property
    def index(self) -> Any:
        """The BM25 index of the corpus (read from disk when the corpus is unchanged)."""
        with self._lock:
            if self._index is None:
                from tooltune.tools.search import SearchIndex

                self._index = SearchIndex.build(self.world.corpus_dir, self.world.index_dir)
            return self._index

    def flight_url(self) -> str:
        with self._lock:
            if self._flights is None:
                from tooltune.tools.flights import FlightService, flight_openapi_spec

                service = FlightService(self.flights_db)
                url = service.start()
                self._flights, self._spec = service, flight_openapi_spec(url)
            return self._flights.base_url

    def web_url(self) -> str:
        with self._lock:
            if self._web is None:
                from tooltune.tools.browser import WebServer

                server = WebServer(self.world.web_dir)
                server.start()
                self._web = server
            return self._web.base_url

    def overlay_dir(self, episode_id: str) -> Path:
        """Where the episode's file writes go (reads look here first)."""
        if not _EPISODE.match(episode_id):
            raise ValueError(f"bad episode id {episode_id!r}")
        return self.episodes_dir / episode_id

    # -- tools --------------------------------------------------------------------------------
    def _shared_family(self, family: str) -> list[ToolDefinition]:
        with self._lock:
            return self._build_shared(family)

    def _build_shared(self, family: str) -> list[ToolDefinition]:
        if family not in self._shared:
            if family == "search":
                from tooltune.tools.search import make_search_tools

                tools = make_search_tools(self.index)
            elif family == "python":
                from tooltune.tools.code_runner import make_code_tools

                tools = make_code_tools()
            elif family == "math":
                from tooltune.tools.math_solver import make_math_tools

                tools = make_math_tools()
            elif family == "database":
                from tooltune.tools.database import make_database_tools

                tools = make_database_tools(self.world.db_path)
            elif family == "registry":
                from tooltune.tools.heldout import make_registry_tools

                tools = make_registry_tools(self.world.db_path)
            else:
                raise KeyError(family)
            self._shared[family] = tools
        return self._shared[family]

    def _episode_family(self, family: str, episode_id: str) -> list[ToolDefinition]:
        if family == "files":
            from tooltune.tools.files import make_file_tools

            return make_file_tools(self.world.sandbox_dir, overlay=self.overlay_dir(episode_id))
        if family == "images":  # crops are saved into the episode's overlay, like file writes
            from tooltune.tools.images import make_image_tools

            return make_image_tools(self.world.sandbox_dir, overlay=self.overlay_dir(episode_id))
        if family == "flights":
            from tooltune.tools.openapi import make_openapi_tools

            url = self.flight_url()
            return make_openapi_tools(
                self._spec, base_url=url, headers={"X-Episode-Id": episode_id}
            )
        if family == "browser":
            from tooltune.tools.browser import make_browser_tools

            url = self.web_url()
            return make_browser_tools([url], start_url=url + "/index.html")
        return self._shared_family(family)

    def tool_names(self, include_heldout: bool = False) -> list[str]:
        return BUILTIN_TOOLS + (HELDOUT_TOOLS if include_heldout else [])

    def registry(
        self, episode_id: str | None = None, tools: list[str] | None = None
    ) -> ToolRegistry:
        """A fresh registry for one episode: every built-in tool, or only the named ones (which
        may include the held-out tools `geo_lookup` and `corp_registry`, and the generated
        functions of schema tasks, `tasks.schema_gen`)."""
        if self.closed:
            raise RuntimeError("the environment is closed")
        episode_id = episode_id or uuid.uuid4().hex[:12]
        names = list(BUILTIN_TOOLS if tools is None else tools)
        generated = schema_tools([n for n in names if n not in TOOL_FAMILY], self.seed)
        unknown = [n for n in names if n not in TOOL_FAMILY and n not in generated]
        if unknown:
            known = ", ".join(self.tool_names(include_heldout=True))
            raise ToolRegistryError(f"unknown tools: {', '.join(unknown)} (known: {known})")
        by_name: dict[str, ToolDefinition] = dict(generated)
        for family in dict.fromkeys(TOOL_FAMILY[n] for n in names if n in TOOL_FAMILY):
            for definition in self._episode_family(family, episode_id):
                by_name[definition.name] = definition
        registry = ToolRegistry(config=self.config)
        for name in dict.fromkeys(names):
            registry.register(by_name[name])
        if {"files", "images"} & {TOOL_FAMILY.get(n) for n in names}:
            overlay = self.overlay_dir(episode_id)
            registry.on_close(lambda: _remove_if_empty(overlay))
        return registry

    def __call__(
        self, episode_id: str | None = None, tools: list[str] | None = None
    ) -> ToolRegistry:
        """An environment is a tool source for `TrajectoryCollector` (episode_id, names)."""
        return self.registry(episode_id, tools)

    # -- tasks, verification, rewards, SFT data: the interface of `tooltune.ToolEnv` ------------
    def sample_tasks(
        self,
        split: str,
        n: int,
        seed: int = 0,
        per_group: bool = False,
        weights: dict[Any, float] | None = None,
    ) -> list[Any]:
        """Generated tasks of `split`: `n` of each tier (`per_group`), or `n` drawn by tier
        `weights` (default: `config.task_tier_weights`)."""
        from tooltune.tasks import sample_tasks

        if per_group:
            return [t for tier in TaskTier
                    for t in sample_tasks(split, n, seed=seed, tiers=[tier], world=self)]  # fmt: skip
        weights = weights or {t.value: w for t, w in self.config.task_tier_weights.items()}
        return sample_tasks(split, n, seed=seed, tier_weights=weights, world=self)

    def verify(self, task: Any, trajectory: Any) -> bool:
        from tooltune.tasks.checkers import verify

        return verify(task, trajectory, self)

    def rubric(self, config: AgentConfig) -> Any:
        from tooltune.training.rewards import rubric_from_config

        return rubric_from_config(config, outcome=lambda t, task: self.verify(task, t))

    def expert(self) -> Any:
        """The scripted expert (solves every built-in task through the real tools)."""
        from tooltune.tasks.expert import ExpertPolicy

        return ExpertPolicy(self)

    def demonstrations(self) -> None:
        return None  # the expert plays the training tasks instead

    def augmenter(self, rng: Any) -> Any:
        """Renames a demonstration's entities afresh (see `tasks.augment`)."""
        from tooltune.tasks.augment import rename_entities

        return lambda demo: rename_entities(demo, self.world, rng)

    def describe(self) -> str:
        return f"the built-in world (seed {self.seed})"

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the services and delete the environment's temporary files."""
        if self.closed:
            return
        self.closed = True
        with self._lock:
            if self._flights is not None:
                self._flights.stop()
            if self._web is not None:
                self._web.stop()
            self._flights = self._web = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> BuiltinWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close must not leave servers behind
        with contextlib.suppress(Exception):
            self.close()


Environment = BuiltinWorld  # the earlier name


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)
