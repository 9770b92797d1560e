"""Entity renaming: every invented name changes, consistently, and nothing else does."""

import random
import re

from tooltune.environment import Environment
from tooltune.rollout import TrajectoryCollector, trajectory_segments
from tooltune.tasks import verify
from tooltune.tasks.augment import copy_drills, name_words, rename_entities
from tooltune.tasks.expert import ExpertPolicy
from tooltune.tasks.splits import sample_tasks


def _demos(env: Environment, world, n: int = 24):
    tasks = sample_tasks("train", n, seed=11, world=world)
    expert = ExpertPolicy(env)
    expert.prepare(tasks)
    collector = TrajectoryCollector(
        expert, env, env.config, verifier=lambda task, t: verify(task, t, env)
    )
    return collector.collect(tasks)


def _text(trajectory) -> str:
    return "".join(piece for piece, _ in trajectory_segments(trajectory, "compact"))


def test_names_change_consistently_and_the_rest_stays(env, world):
    words = name_words(world)
    demos = _demos(env, world)
    renamed = [rename_entities(d, world, random.Random(i)) for i, d in enumerate(demos)]
    changed = 0
    for before, after in zip(demos, renamed, strict=True):
        old, new = _text(before), _text(after)
        old_runs, new_runs = re.split(r"[A-Za-z]+", old), re.split(r"[A-Za-z]+", new)
        assert old_runs == new_runs  # only letter runs may change: digits, JSON, markup stay
        pairs: dict[str, str] = {}
        for a, b in zip(re.findall(r"[A-Za-z]+", old), re.findall(r"[A-Za-z]+", new), strict=True):
            if a.lower() not in words:
                assert a == b
                continue
            changed += 1
            assert b.lower() not in words  # never a real name (of any pool)
            assert b[0].lower() == a[0].lower() and b[:1].isupper() == a[:1].isupper()
            assert pairs.setdefault(a.lower(), b.lower()) == b.lower()  # same name, same word
        assert len(set(pairs.values())) == len(pairs)  # different names stay different
        assert after.tools == before.tools and after.success == before.success
        calls = [[c.name for c in s.action.tool_calls] for s in after.steps]
        assert calls == [[c.name for c in s.action.tool_calls] for s in before.steps]
    assert changed > len(demos)  # the demos do mention names


def test_renaming_is_reproducible_and_varies_with_the_stream(env, world):
    demo = next(d for d in _demos(env, world, 8) if any(w in _text(d).lower()
                for w in name_words(world)))  # fmt: skip
    a = rename_entities(demo, world, random.Random(3))
    b = rename_entities(demo, world, random.Random(3))
    c = rename_entities(demo, world, random.Random(4))
    assert _text(a) == _text(b) != _text(c)
    assert _text(demo) != _text(a)


def test_copy_drills_quote_an_item_of_their_message():
    drills = copy_drills(200, random.Random(0))
    assert drills == copy_drills(200, random.Random(0))
    assert len({reply for _, reply in drills}) > 190  # fresh items, nothing to memorise
    for message, reply in drills:
        target = reply.strip('"')
        assert reply == f'"{target}"' and message.startswith(f"Copy {target}. Not: ")
    assert any(r.strip('"').isdigit() for _, r in drills)
    assert any(" " in r for _, r in drills)  # multi-word names too
