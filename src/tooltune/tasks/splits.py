"""Splits and sampling: train / validation / test / heldout_tools.

Entities (places, companies, people, products, orders, files, images, routes) are divided into
pools of 60/20/20 when the world is built; each split draws its entities from its own pool, so
the test set asks about companies and cities the training set never mentions. Some templates are
held out as well: they appear only in test, so test also measures transfer to new task shapes;
others (`train_only`) only in train and validation, and only when asked for
(`composition_tasks`): variety for training that leaves the test mix as it was.
`heldout_tools` tasks need `geo_lookup` / `corp_registry`, tools never offered in training; that
split has no no-tool tasks, and a mix of tiers drawn for it leaves that tier out.

Every sample is reproducible: task `i` of `sample_tasks(split, n, seed)` is generated from its
own random stream, so it does not depend on `n` or on the other tasks.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tooltune.config import DEFAULT_TIER_WEIGHTS, TaskTier
from tooltune.tasks.abstention import NO_TOOL_TEMPLATES
from tooltune.tasks.expert import remember
from tooltune.tasks.schema_tasks import SCHEMA_SPLITS, SCHEMA_TIERS, make_schema_task
from tooltune.tasks.slips import listable_folders, with_slip
from tooltune.tasks.task import Task
from tooltune.tasks.templates.catalogue import TEMPLATES
from tooltune.tasks.templates.draft import Ctx, Draft, Template
from tooltune.tasks.templates.plan import minimal_calls
from tooltune.tasks.world import ensure_world
from tooltune.tasks.world_data import World
from tooltune.tools.catalogue import BUILTIN_FAMILIES, FAMILIES

SPLITS = ("train", "validation", "test", "heldout_tools")
CONFIG_SPLITS = ("train", "validation")  # where the config's task settings apply
POOL_OF_SPLIT = {
    "train": "train",
    "validation": "validation",
    "test": "test",
    "heldout_tools": "test",
}
ALL_TEMPLATES = [*TEMPLATES, *NO_TOOL_TEMPLATES]  # the tool tiers' and the no-tool tier's
_MAX_TRIES = 50


def default_world_dir(seed: int = 0, size: str = "default") -> Path:
    """The cache directory of the world of `seed` and `size` (one directory per pair, so
    tests on a small world never evict the default one)."""
    suffix = "" if size == "default" else f"-{size}"
    return Path.home() / ".cache" / "tooltune" / f"world-{seed}{suffix}"


def get_world(world: World | str | Path | None = None, seed: int = 0) -> World:
    """A `World`, loading (or building) it from a directory; None means the default cache dir."""
    if isinstance(world, World):
        return world
    if hasattr(world, "world") and isinstance(world.world, World):  # an Environment
        return world.world
    if world is None:
        return ensure_world(default_world_dir(seed), seed)
    return ensure_world(world)


def templates_for(
    split: str, tier: TaskTier | None = None, compositions: bool = False
) -> list[Template]:
    """Templates a split may use: train/validation never see held-out templates or tools, and
    see the training-only ones with `compositions`; test never sees those."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    if split == "heldout_tools":
        chosen = [t for t in ALL_TEMPLATES if t.heldout_tools]
    elif split == "test":
        chosen = [t for t in ALL_TEMPLATES if not t.heldout_tools and not t.train_only]
    else:
        chosen = [t for t in ALL_TEMPLATES if not t.heldout_tools and not t.heldout
                  and (compositions or not t.train_only)]  # fmt: skip
    return [t for t in chosen if tier is None or t.tier == tier]


def _tool_names(draft: Draft, rng: random.Random) -> list[str]:
    """The families the task needs plus one distractor family, in a fixed order."""
    needed = list(dict.fromkeys(draft.families))
    spare = [f for f in BUILTIN_FAMILIES if f not in needed and f != "flights"]
    families = set(needed) | {rng.choice(spare)}
    order = [*BUILTIN_FAMILIES, "registry"]
    return [name for fam in order if fam in families for name in FAMILIES[fam]]


def make_task(
    template: Template, world: World, split: str, rng: random.Random, task_id: str
) -> Task:
    """One task from `template`; raises LookupError when the pool cannot support it."""
    ctx = Ctx(world=world, rng=rng, pool=POOL_OF_SPLIT[split])
    draft = template.make(ctx)
    return Task(
        id=task_id,
        prompt=draft.prompt,
        tier=template.tier,
        tools=_tool_names(draft, rng),
        answer=draft.answer,
        check=draft.check,
        minimal_calls=minimal_calls(draft),
        split=split,
        metadata={
            "template": template.id,
            "new_shape": template.heldout,  # a template only the test split uses
            "plan": draft.plan,
            "parallel": draft.parallel,
            "planted_failures": draft.planted,
            "world_seed": world.seed,
        },
    )


def _weights(
    tier_weights: dict[Any, float] | None, tiers: list[Any] | None
) -> dict[TaskTier, float]:
    weights = {TaskTier(k): float(v) for k, v in (tier_weights or DEFAULT_TIER_WEIGHTS).items()}
    if tiers is not None:
        allowed = dict.fromkeys(TaskTier(t) for t in tiers)  # in the caller's order, not a set's
        weights = {t: (weights.get(t, 0.0) or 1.0) for t in allowed}
    weights = {t: w for t, w in weights.items() if w > 0}
    if not weights:
        raise ValueError("no tier has a positive weight")
    return weights


def sample_tasks(
    split: str,
    n: int,
    seed: int = 0,
    tier_weights: dict[Any, float] | None = None,
    tiers: list[Any] | None = None,
    world: World | str | Path | None = None,
    unique: bool = True,
    schema_share: float | None = None,
    compositions: bool | None = None,
    recovery_share: float | None = None,
) -> list[Task]:
    """`n` tasks of `split`, tiers drawn by `tier_weights` (default `DEFAULT_TIER_WEIGHTS`),
    optionally only `tiers`. A weighted tier the split has no templates of is left out of the
    mix; one asked for in `tiers` is an error. With `unique`, prompts do not repeat within the
    sample (when the pool allows).

    `schema_share` of the simple, parallel and no-tool tasks are schema tasks (`schema_tasks`:
    random function schemas, checked by BFCL's rules); None reads `schema_task_share` from the config
    of the environment given as `world` for the training splits only (the test split stays the
    same whatever a run trains on), else 0. At 0 the sample is what it always was.
    `compositions` adds the training-only templates to the train and validation splits; None
    reads `composition_tasks` from that config, else False. `recovery_share` of the tasks that
    look something up are demonstrated with a slip and its repair (`slips`); None reads it from
    that config for the training splits, else 0."""
    if n < 0:
        raise ValueError("n must be >= 0")
    share = _schema_share(schema_share, world if split in CONFIG_SPLITS else None)
    weights = _weights(tier_weights, tiers)
    if compositions is None:
        compositions = _config_of(world, "composition_tasks", False)
    compositions = split in CONFIG_SPLITS and compositions
    if recovery_share is None:
        recovery_share = _config_of(world, "recovery_share", 0.0) if split in CONFIG_SPLITS else 0.0
    by_tier = {t: templates_for(split, t, compositions) for t in weights}  # checks the split name
    if tiers is None:
        weights = {t: w for t, w in weights.items() if by_tier[t]}
    tier_list, tier_w = list(weights), list(weights.values())
    if not tier_list:
        raise ValueError(f"split {split!r} has no templates of the tiers weighted")
    w = get_world(world)
    listable = listable_folders(w.sandbox_dir) if recovery_share else set()
    tasks: list[Task] = []
    seen: set[str] = set()
    for i in range(n):
        rng = random.Random(f"{split}:{seed}:{i}")
        tier = rng.choices(tier_list, tier_w)[0]
        if not by_tier[tier]:
            raise ValueError(f"split {split!r} has no templates of tier {tier.value}")
        task = None
        task_id = f"{split}-{seed}-{tier.value}-{i:05d}"  # the tier: unique across tiers' samples
        schema = share > 0 and tier in SCHEMA_TIERS and split in SCHEMA_SPLITS
        if schema and rng.random() < share:  # drawn only when asked for: samples stay the same
            task = _schema_task(tier, w, split, rng, task_id, seen, unique)
        for _attempt in range(0 if task else _MAX_TRIES):
            template = rng.choice(by_tier[tier])
            try:
                candidate = make_task(template, w, split, rng, task_id)
            except LookupError:  # the pool cannot support this template (e.g. a tie)
                continue
            task = candidate
            if not (unique and candidate.prompt in seen):
                break
        if task is None:
            raise RuntimeError(
                f"could not generate task {i} of split {split!r} (tier {tier.value})"
            )
        seen.add(task.prompt)
        task = with_slip(task, recovery_share, listable, _config_of(world, "max_turns", 6))
        remember(task)
        tasks.append(task)
    return tasks


def _config_of(world: Any, name: str, default: Any) -> Any:
    """A setting of the config of the environment given as `world` (a bare world has none)."""
    return getattr(getattr(world, "config", None), name, default)


def _schema_share(share: float | None, world: Any) -> float:
    if share is None:
        share = _config_of(world, "schema_task_share", 0.0)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"schema_share must be in [0, 1], got {share!r}")
    return float(share)


def _schema_task(tier: TaskTier, world: World, split: str, rng: random.Random, task_id: str,
                 seen: set[str], unique: bool) -> Task:  # fmt: skip
    task = make_schema_task(tier, split, rng, task_id, world.seed)
    for _attempt in range(_MAX_TRIES):
        if not (unique and task.prompt in seen):
            break
        task = make_schema_task(tier, split, rng, task_id, world.seed)
    return task
