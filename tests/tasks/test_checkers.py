import pytest

from tooltune.config import TaskTier
from tooltune.tasks import Task, verify
from tooltune.tasks.checkers import check_answer, contains_name, extract_numbers, normalize_text
from tooltune.types import AgentTrajectory


def _traj(answer, episode_id=None):
    t = AgentTrajectory(prompt="q", task_tier=TaskTier.SIMPLE, final_answer=answer)
    if episode_id:
        t.metadata["episode_id"] = episode_id
    return t


def _task(check):
    return Task("t", "q", TaskTier.SIMPLE, [], None, check, [])


def test_extract_numbers():
    # the 2 of "km2" is part of a word, not a number
    assert extract_numbers("Population: 1,234,567 (2024), area 12.5 km2, -3 and .5") == [
        1234567, 2024, 12.5, -3, 0.5]  # fmt: skip
    assert extract_numbers("on 2025-05-31") == [2025, 5, 31]  # dates do not read as negatives
    assert extract_numbers("$8,558.5 million") == [8558.5]
    assert extract_numbers("no digits") == []


@pytest.mark.parametrize(
    ("spec", "text", "ok"),
    [
        ({"type": "number", "value": 391}, "17*23 = 391.", True),
        ({"type": "number", "value": 391}, "It is 390.", False),
        ({"type": "number", "value": 1234567}, "about 1,234,567 people", True),
        ({"type": "number", "value": 491.81, "rel_tol": 1e-3}, "491.8058", True),
        ({"type": "number", "value": 491.81, "rel_tol": 1e-3}, "492.5", False),
        ({"type": "number", "value": 0.5, "abs_tol": 0.05}, "0.54", True),
        ({"type": "numbers", "values": [3, 4]}, "3 and 4", True),
        ({"type": "numbers", "values": [3, 4]}, "3 and 5", False),
        ({"type": "text", "value": "Dara Velmont"}, "The CEO is DARA  velmont.", True),
        ({"type": "text", "value": "Dara Velmont"}, "The CEO is Dara Velmonte.", False),
        ({"type": "text", "value": "Zoë"}, "zoe", True),
        ({"type": "choice", "value": "Aaa", "options": ["Aaa", "Bbb"]}, "Aaa", True),
        ({"type": "choice", "value": "Aaa", "options": ["Aaa", "Bbb"]}, "Aaa, not Bbb", False),
        ({"type": "set", "items": ["Aaa", "Bbb"]}, "Bbb and Aaa", True),
        ({"type": "set", "items": ["Aaa", "Bbb"]}, "Bbb only", False),
        (
            {
                "type": "all",
                "checks": [{"type": "number", "value": 2}, {"type": "text", "value": "x"}],
            },
            "x is 2",
            True,
        ),
    ],
)
def test_answer_checks(spec, text, ok):
    assert check_answer(spec, text) is ok
    assert verify(_task(spec), _traj(text)) is ok


def test_no_answer_fails_and_unknown_spec_raises():
    assert verify(_task({"type": "number", "value": 1}), _traj(None)) is False
    with pytest.raises(ValueError):
        check_answer({"type": "nonsense"}, "1")


def test_normalisation():
    assert normalize_text("  Crème-Brûlée, Inc. ") == "creme brulee inc"
    assert contains_name("Visit Laara today", "laara")
    assert not contains_name("Visit Laarab today", "Laara")


def test_booking_check_reads_the_flight_service(env):
    from tooltune.types import ToolCall

    flight = next(f for f in env.world.flights if not f["sells_out"])
    other = next(f for f in env.world.flights if not f["sells_out"] and f["id"] != flight["id"])
    spec = {"type": "booking", "flight_id": flight["id"], "passenger": "Ada Lovel"}
    registry = env.registry("checkbook1", ["book_flight", "confirm_booking"])
    booked = registry.execute(
        ToolCall("1", "book_flight", {"flight_id": flight["id"], "passenger": "ada lovel"})
    )
    assert booked.success
    assert not verify(_task(spec), _traj("done", "checkbook1"), env)  # pending is not enough
    registry.execute(ToolCall("2", "confirm_booking", {"booking_id": booked.result["booking_id"]}))
    assert verify(_task(spec), _traj("done", "checkbook1"), env)
    assert not verify(_task(spec), _traj("done", "another-episode"), env)
    assert not verify(_task(spec), _traj("done"), env)  # no episode id
    assert not verify(
        _task({**spec, "passenger": "Someone Else"}), _traj("done", "checkbook1"), env
    )
    # a second confirmed booking (two trips instead of one) fails the check
    second = registry.execute(
        ToolCall("3", "book_flight", {"flight_id": other["id"], "passenger": "Ada Lovel"})
    )
    registry.execute(ToolCall("4", "confirm_booking", {"booking_id": second.result["booking_id"]}))
    assert not verify(_task(spec), _traj("done", "checkbook1"), env)
    registry.close()


def test_file_check_reads_the_episode_overlay(env):
    from tooltune.types import ToolCall

    spec = {"type": "file", "path": "results/n.txt", "check": {"type": "number", "value": 7}}
    registry = env.registry("checkfile1", ["write_file"])
    assert not verify(_task(spec), _traj("7", "checkfile1"), env)
    registry.execute(ToolCall("1", "write_file", {"path": "results/n.txt", "content": "7\n"}))
    assert verify(_task(spec), _traj("7", "checkfile1"), env)
    assert not verify(_task(spec), _traj("7", "checkfile2"), env)
    assert not (env.world.sandbox_dir / "results").exists()  # the shared sandbox is untouched
    registry.close()
