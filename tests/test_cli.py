"""The command line: each subcommand once, and clear exit codes on bad input."""

import json
from pathlib import Path

import pytest

from tooltune import bfcl_run
from tooltune.cli import build_parser, main

SHARED_BFCL = Path(__file__).resolve().parents[2] / "shared" / "bfcl"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli") / "world")


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "tools", "eval", "tasks", "bfcl"):
        assert command in out


def test_tools_list_and_call(capsys, world):
    code, out, _ = run(capsys, "tools", "list", "--json", "--world", world)
    tools = json.loads(out)
    names = {t["function"]["name"] for t in tools}
    assert (
        code == 0
        and {
            "search",
            "run_python",
            "calculate",
            "read_file",
            "sql_query",
            "search_flights",
            "browser_open",
            "detect_shapes",
        }
        <= names
    )
    code, out, _ = run(capsys, "tools", "list", "--world", world)
    assert code == 0 and "Tool: calculate" in out and "schema:" in out

    code, out, _ = run(
        capsys, "tools", "call", "calculate", "--args", '{"expression": "17*23"}', "--world", world
    )
    assert code == 0 and json.loads(out)["result"]["result"] == "391"
    code, out, _ = run(
        capsys,
        "tools",
        "call",
        "read_file",
        "--args",
        '{"path": "../../etc/passwd"}',
        "--world",
        world,
    )
    response = json.loads(out)
    assert code == 1 and response["success"] is False and ".." in response["error"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["tools", "call", "calculate", "--args", "{not json"], "--args is not valid JSON"),
        (["tools", "call", "calculate", "--args", "[1, 2]"], "--args must be a JSON object"),
        (["tools", "call", "no_such_tool", "--args", "{}"], "unknown tool 'no_such_tool'"),
        (["tools", "list", "--set", "max_turns=-1"], "max_turns"),
        (["tasks", "sample", "-n", "0"], "-n must be at least 1"),
        (["eval", "--policy", "/nonexistent/model", "-n", "1"], "does not exist"),
        (["eval", "--policy", "expert", "-n", "1", "--constrained"], "needs a token policy"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(capsys, world, argv, fragment):
    code, _, err = run(capsys, *argv, "--world", world)
    assert code == 2 and fragment in err and "Traceback" not in err


def test_tasks_sample_and_expert_eval(capsys, world):
    code, out, _ = run(capsys, "tasks", "sample", "--tier", "complex", "-n", "2", "--world", world)
    assert code == 0 and out.count("tier=complex") == 2
    code, out, _ = run(
        capsys,
        "eval",
        "--policy",
        "expert",
        "--split",
        "test",
        "-n",
        "3",
        "--json",
        "--world",
        world,
    )
    metrics = json.loads(out)
    assert code == 0
    assert metrics["accuracy"] == {
        **metrics["accuracy"],
        "simple": 1.0,
        "multi_tool_seq": 1.0,
        "multi_tool_par": 1.0,
        "complex": 1.0,
    }
    for key in (
        "avg_steps",
        "tool_call_failure_rate",
        "unnecessary_call_rate",
        "parallel_call_rate",
    ):
        assert key in metrics


@pytest.mark.skipif(not SHARED_BFCL.is_dir(), reason="../shared/bfcl is not present")
def test_bfcl_check_on_the_shared_samples(capsys, tmp_path):
    questions = SHARED_BFCL / "BFCL_v4_parallel.json"
    answers = SHARED_BFCL / "possible_answer" / "BFCL_v4_parallel.json"
    from tooltune.tasks import bfcl

    reference = bfcl.reference_predictions(bfcl.load_questions(questions, answers))
    rows = [dict(r, calls=r["calls"][:1]) if i == 0 else r for i, r in enumerate(reference)]
    predictions = (
        tmp_path / "p.jsonl"
    )  # the possible answers themselves, one call dropped from the first
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = run(
        capsys,
        "bfcl",
        "check",
        "--questions",
        str(questions),
        "--answers",
        str(answers),
        "--predictions",
        str(predictions),
        "--json",
    )
    report = json.loads(out)
    assert code == 0 and report["n"] == len(rows)
    assert report["accuracy"] == pytest.approx((len(rows) - 1) / len(rows))
    (bad,) = [e for e in report["entries"] if not e["valid"]]
    assert bad["id"] == rows[0]["id"] and bad["reasons"]


def test_bfcl_run_refuses_a_batch_of_no_questions(capsys):
    code, _, err = run(capsys, "bfcl", "run", "--category", "simple", "--batch-size", "0")
    assert code == 2 and "--batch-size must be at least 1" in err
    args = build_parser().parse_args(["bfcl", "run", "--category", "simple"])
    assert args.batch_size == bfcl_run.BATCH_SIZE  # the CLI's default is the API's


@pytest.mark.parametrize(
    ("argv", "restarts"),
    [
        (["eval", "--policy", "/nonexistent/model", "-n", "1"], True),
        (["demo", "--preset", "no_such_preset"], True),
        (["tasks", "sample", "-n", "0"], False),
        (["tools", "list", "--set", "max_turns=-1"], False),
    ],
)
def test_commands_that_train_or_roll_out_restart_with_jemalloc(monkeypatch, argv, restarts):
    """Run as a command (not through `main(argv)`), demo, train and eval restart with jemalloc
    first (`tooltune.allocator`: evaluation's generate calls reuse freed pages); the others do
    not. (Each argv here is refused once it runs, so nothing else happens.)"""
    import sys

    from tooltune import allocator

    calls = []
    monkeypatch.setattr(allocator, "restart_with_jemalloc", lambda: calls.append(1))
    monkeypatch.setattr(sys, "argv", ["tooltune", *argv])
    assert main() == 2 and calls == ([1] if restarts else [])
