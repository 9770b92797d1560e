from collections import Counter

import pytest

from tooltune.config import AgentConfig, TaskTier
from tooltune.environment import Environment
from tooltune.tasks import Task, format_task, load_tasks, sample_tasks, save_tasks
from tooltune.tasks.splits import ALL_TEMPLATES, templates_for
from tooltune.tasks.templates.catalogue import TEMPLATES
from tooltune.tools.catalogue import HELDOUT_TOOLS


def _entity_names(world, pool):
    return {
        e["name"] for kind in ("places", "companies", "people") for e in world.in_pool(kind, pool)
    }


def test_task_json_round_trip(world, tmp_path):
    tasks = sample_tasks("train", 40, seed=3, world=world)
    for task in tasks:
        again = Task.from_json(task.to_json())
        assert again == task and again.tier is task.tier
    save_tasks(tmp_path / "t.jsonl", tasks)
    assert load_tasks(tmp_path / "t.jsonl") == tasks
    with pytest.raises(ValueError, match="unknown task fields"):
        Task.from_dict({**tasks[0].to_dict(), "bogus": 1})


def test_sampling_is_reproducible_and_prefix_stable(world):
    a = sample_tasks("test", 30, seed=11, world=world)
    b = sample_tasks("test", 30, seed=11, world=world)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    longer = sample_tasks("test", 45, seed=11, world=world)
    assert [t.prompt for t in longer[:30]] == [t.prompt for t in a]
    other = sample_tasks("test", 30, seed=12, world=world)
    assert [t.prompt for t in other] != [t.prompt for t in a]


def test_task_ids_are_unique_across_samples_of_each_tier(world):
    """A test set is one sample per tier (`per_group`); task-by-task comparisons, reports and
    the reward model's split by task need ids no two of its tasks share."""
    by_tier = [t for tier in TaskTier for t in sample_tasks("test", 5, seed=1, world=world,
                                                            tiers=[tier])]  # fmt: skip
    assert len({t.id for t in by_tier}) == len(by_tier) == 25


def test_tier_weights_and_filter(world):
    tasks = sample_tasks("train", 400, seed=0, world=world)
    counts = Counter(t.tier for t in tasks)
    for tier, weight in [(TaskTier.SIMPLE, 0.27), (TaskTier.MULTI_TOOL_SEQ, 0.27),
                         (TaskTier.MULTI_TOOL_PAR, 0.18), (TaskTier.COMPLEX, 0.18),
                         (TaskTier.NO_TOOL, 0.1)]:  # fmt: skip
        assert abs(counts[tier] / 400 - weight) < 0.07
    only = sample_tasks("train", 50, seed=0, world=world, tiers=["complex"])
    assert {t.tier for t in only} == {TaskTier.COMPLEX}
    skewed = sample_tasks(
        "train", 100, seed=0, world=world, tier_weights={"simple": 1.0, "complex": 0.0}
    )
    assert {t.tier for t in skewed} == {TaskTier.SIMPLE}


def test_test_split_holds_out_entities_and_templates(world):
    train = sample_tasks("train", 300, seed=0, world=world)
    test = sample_tasks("test", 300, seed=0, world=world)
    test_only = _entity_names(world, "test")
    train_only = _entity_names(world, "train")
    # every entity named in a train prompt is a train entity, never a test one
    assert not [t.prompt for t in train if any(n in t.prompt for n in test_only)]
    assert not [t.prompt for t in test if any(n in t.prompt for n in train_only)]
    heldout = {t.id for t in TEMPLATES if t.heldout}
    assert heldout and not heldout & {t.metadata["template"] for t in train}
    assert heldout & {t.metadata["template"] for t in test}
    assert {t.id for t in templates_for("validation")} == {t.id for t in templates_for("train")}


def test_training_only_templates_only_when_asked_for(world):
    """`compositions` (the config's `composition_tasks`) adds the training-only templates to
    train and validation; the test split is the same with it or without."""
    train_only = {t.id for t in ALL_TEMPLATES if t.train_only}
    assert train_only
    templates = {t.metadata["template"] for t in sample_tasks("train", 300, seed=0, world=world)}
    assert not train_only & templates
    mixed = sample_tasks("train", 300, seed=0, world=world, compositions=True)
    assert train_only <= {t.metadata["template"] for t in mixed}
    test = sample_tasks("test", 100, seed=0, world=world)
    assert sample_tasks("test", 100, seed=0, world=world, compositions=True) == test
    assert not train_only & {t.id for t in templates_for("test", compositions=True)}


def test_heldout_tools_split(world):
    tasks = sample_tasks("heldout_tools", 80, seed=0, world=world)
    new_tools = set(HELDOUT_TOOLS)
    assert all(new_tools & set(t.tools) for t in tasks)
    assert {t.tier for t in tasks} == set(TaskTier) - {TaskTier.NO_TOOL}  # every tool tier
    for split in ("train", "validation", "test"):
        assert not any(
            new_tools & set(t.tools) for t in sample_tasks(split, 150, seed=1, world=world)
        )


def test_tasks_offer_the_tools_their_solution_needs(world):
    for split in ("train", "test", "heldout_tools"):
        for task in sample_tasks(split, 150, seed=5, world=world):
            assert bool(task.minimal_calls) == (task.tier is not TaskTier.NO_TOOL)
            assert {c["name"] for c in task.minimal_calls} <= set(task.tools), format_task(task)
            if task.tier is TaskTier.SIMPLE:
                assert len(task.minimal_calls) == 1
            if task.tier is TaskTier.MULTI_TOOL_PAR:
                assert task.metadata["parallel"] >= 2
            if task.tier is TaskTier.MULTI_TOOL_SEQ:
                assert len(task.minimal_calls) >= 2


def test_prompts_vary_within_a_template(world):
    tasks = sample_tasks("train", 400, seed=2, world=world)
    by_template = Counter(t.metadata["template"] for t in tasks)
    assert len(by_template) >= 30
    calc = [t.prompt.split()[0] for t in tasks if t.metadata["template"] == "calc"]
    assert len(set(calc)) >= 3


def test_booking_tasks_plant_the_sold_out_flight(world):
    tasks = [t for t in sample_tasks("train", 300, seed=4, world=world, tiers=["complex"])
             if t.metadata["template"] == "book"]  # fmt: skip
    assert tasks
    for task in tasks:
        booked = task.check["flight_id"]
        books = [c for c in task.minimal_calls if c["name"] == "book_flight"]
        assert books[-1]["arguments"]["flight_id"] == booked
        assert all(world.flight(c["arguments"]["flight_id"])["sells_out"] for c in books[:-1])
        assert task.prompt.startswith("Today is ")


def test_planted_failures_are_marked_in_metadata(world):
    tasks = sample_tasks("train", 300, seed=6, world=world, tiers=["complex"])
    marked = set()
    for task in tasks:
        planted = task.metadata["planted_failures"]
        for spec in planted:  # each planted call is one of the minimal solution's calls
            assert any(c["name"] == spec["name"] and spec["arguments"].items() <= c["arguments"].items()
                       for c in task.minimal_calls), format_task(task)  # fmt: skip
        if planted:
            marked.add(task.metadata["template"])
        if task.metadata["template"] in ("moved_budget", "broken_sql"):
            assert len(planted) == 1
    assert {"book", "moved_budget", "broken_sql", "budget_share"} <= marked
    simple = sample_tasks("train", 40, seed=6, world=world, tiers=["simple"])
    assert not any(t.metadata["planted_failures"] for t in simple)


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        sample_tasks("nope", 1)


def test_config_turns_composition_tasks_on(world_dir):
    """An environment's `composition_tasks` reaches its training tasks, not its test tasks."""
    train_only = {t.id for t in ALL_TEMPLATES if t.train_only}
    with Environment(world_dir, config=AgentConfig(composition_tasks=True)) as env:
        train = env.sample_tasks("train", 200, seed=0)
        test = env.sample_tasks("test", 5, seed=0, per_group=True)
    assert train_only & {t.metadata["template"] for t in train}
    with Environment(world_dir) as plain:
        assert not train_only & {t.metadata["template"] for t in plain.sample_tasks("train", 200)}
        assert test == plain.sample_tasks("test", 5, seed=0, per_group=True)
