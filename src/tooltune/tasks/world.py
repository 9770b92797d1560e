"""The built-in task world: an invented, seeded set of places, companies, people, products,
orders, flights, files, images and web pages, written to every source the tools read.

Names come from a syllable generator, so no fact can be answered from a model's memory: the only
way to know Zentrix's chief executive is to look it up. Every fact is consistent across sources
(the quarterly sales files sum to the revenue in the database, the articles quote the same
numbers as the tables), and `world.json` keeps the ground truth the task templates and checkers
read. Building is deterministic: the same seed gives byte-identical text files and the same rows.

This module gets a world into a directory and back: `build_world` draws one
(`world_generation`, with `world_names` and `world_atlas`) and writes its sources
(`world_files`); `load_world` reads the `world_data.World` back; `ensure_world` loads the
cached world, building it first when it is missing or stale.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tooltune.tasks.world_data import GENERATOR, WORLD_VERSION, World
from tooltune.tasks.world_files import write_sources
from tooltune.tasks.world_generation import generate_world, world_counts


def build_world(
    world_dir: str | Path, seed: int = 0, size: str = "default", **counts: Any
) -> World:
    """Generate the world of `seed` and `size` (a `WORLD_SIZES` name; keyword counts override
    single entries), write every source under `world_dir` (replacing generated ones) and its
    ground truth to `world.json`."""
    root = Path(world_dir)
    root.mkdir(parents=True, exist_ok=True)
    world = generate_world(root, seed, size, **counts)
    write_sources(world)
    world.json_path.write_text(
        json.dumps(world.to_dict(), indent=1, sort_keys=True), encoding="utf-8"
    )
    return world


def load_world(world_dir: str | Path) -> World:
    """Read `world.json` of a built world."""
    world_dir = Path(world_dir)
    data = json.loads((world_dir / "world.json").read_text(encoding="utf-8"))
    if data.get("version") != WORLD_VERSION:
        raise ValueError(f"{world_dir} holds a world of another version; rebuild it")
    return World.from_dict(data, world_dir)


def world_is_built(world_dir: str | Path, seed: int | None = None, size: str | None = None) -> bool:
    """True when `world_dir` holds a complete world of this generator (of `seed` and `size`,
    when given)."""
    path = Path(world_dir) / "world.json"
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if data.get("version") != WORLD_VERSION or data.get("generator") != GENERATOR:
        return False
    if seed is not None and data.get("seed") != seed:
        return False
    if size is not None and data.get("size") != size:
        return False
    return all(
        (Path(world_dir) / p).exists()
        for p in ("corpus", "sandbox", "world.db", "web", "flights.db")
    )


def ensure_world(world_dir: str | Path, seed: int | None = None, size: str | None = None) -> World:
    """Load the world in `world_dir`, building it first when it is missing or stale.

    A new world is built in a temporary sibling directory and renamed into place, so two
    processes that start at once never see (or write) a half-built world. `seed` and `size`
    None mean "whatever world is there" (seed 0, size default when one has to be built)."""
    root = Path(world_dir)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        # e.g. a config passed where the seed goes: it would rebuild the world in place under
        # every process that uses it
        raise TypeError(f"the world's seed must be an int or None, got {type(seed).__name__}")
    if size is not None:
        world_counts(size)  # an unknown size fails here, before anything is built
    if world_is_built(root, seed, size):
        return load_world(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    build_world(tmp, 0 if seed is None else seed, size or "default")
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        try:
            os.replace(root, old)
        except OSError:
            old = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another process put a world there first
        shutil.rmtree(tmp, ignore_errors=True)
        if not world_is_built(root, seed, size):
            raise
    return load_world(root)
