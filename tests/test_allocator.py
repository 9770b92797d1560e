"""`tooltune demo`/`train` restart once with jemalloc preloaded where the system has it."""

import sys

import pytest

from tooltune import allocator


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """os.execve recorded instead of run; a fake jemalloc library; a clean environment."""
    made = []
    monkeypatch.setattr(allocator.os, "execve", lambda *args: made.append(args))
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    monkeypatch.setattr(allocator, "JEMALLOC_PATHS", (str(tmp_path / "absent.so"), str(library)))
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    return made, str(library)


def test_restarts_the_same_command_with_jemalloc_preloaded(calls, monkeypatch):
    made, library = calls
    monkeypatch.setenv("LD_PRELOAD", "/opt/other.so")
    allocator.restart_with_jemalloc()
    ((executable, argv, env),) = made
    assert executable == sys.executable and argv == [sys.executable, *sys.argv]
    assert env["LD_PRELOAD"] == f"{library} /opt/other.so"
    assert env[allocator.ENV] == "jemalloc"  # the restarted process does not restart again


@pytest.mark.parametrize("case", ["turned off", "restarted", "preloaded", "absent", "macOS"])
def test_no_restart(calls, monkeypatch, case):
    made, library = calls
    if case == "turned off":
        monkeypatch.setenv(allocator.ENV, "system")
    elif case == "restarted":
        monkeypatch.setenv(allocator.ENV, "jemalloc")
    elif case == "preloaded":
        monkeypatch.setenv("LD_PRELOAD", library)
    elif case == "absent":
        monkeypatch.setattr(allocator, "JEMALLOC_PATHS", ("/nonexistent/libjemalloc.so.2",))
    else:
        monkeypatch.setattr(allocator.sys, "platform", "darwin")
    allocator.restart_with_jemalloc()
    assert made == []


def test_the_run_log_names_the_allocator(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert allocator.allocator_name() == "jemalloc"
    monkeypatch.delenv("LD_PRELOAD")
    assert allocator.allocator_name() == "system malloc"
