"""`tooltune demo`/`train` restart once with jemalloc preloaded where the system has it."""

import os
import subprocess
import sys
from importlib.machinery import ModuleSpec

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
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)  # a script: `tooltune demo`
    allocator.restart_with_jemalloc()
    ((executable, argv, env),) = made
    assert executable == sys.executable and argv == [sys.executable, *sys.argv]
    assert env["LD_PRELOAD"] == f"{library} /opt/other.so"
    assert env[allocator.ENV] == "jemalloc"  # the restarted process does not restart again


def test_a_module_run_restarts_as_a_module(calls, monkeypatch):
    """`python -m tooltune demo` restarts as `python -m tooltune demo`: run as a script,
    tooltune/__main__.py would put src/tooltune first on sys.path, where its types.py hides
    the standard library's."""
    made, _ = calls
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", ModuleSpec("tooltune.__main__", None))
    monkeypatch.setattr(sys, "argv", ["/src/tooltune/__main__.py", "demo", "--fresh"])
    allocator.restart_with_jemalloc()
    ((_, argv, _),) = made
    assert argv == [sys.executable, "-m", "tooltune", "demo", "--fresh"]


def test_python_m_tooltune_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "tooltune", "--help"], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(__file__))  # fmt: skip
    assert done.returncode == 0 and "demo" in done.stdout


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


def test_the_restart_passes_the_users_malloc_conf_on(calls, monkeypatch):
    made, _ = calls
    monkeypatch.setenv("MALLOC_CONF", allocator.KEEP_PAGES_CONF)
    allocator.restart_with_jemalloc()
    assert made[-1][2]["MALLOC_CONF"] == allocator.KEEP_PAGES_CONF


RELEASE = """
from tooltune.allocator import release_free_memory
def resident_mb(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
block = bytearray(300 * 2**20)
held = resident_mb()
del block
kept = resident_mb()
print(release_free_memory(1 << 30), kept - resident_mb())  # under the allowance: kept
print(release_free_memory(100 << 20), held - kept, kept - resident_mb())  # over it: released
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or allocator.find_jemalloc() is None,
    reason="needs Linux with jemalloc",
)
def test_freed_pages_stay_until_released():
    """Under KEEP_PAGES_CONF a freed block stays resident (no page faults to get it back)
    until what is kept passes the allowance given to release_free_memory."""
    env = {**os.environ, "LD_PRELOAD": allocator.find_jemalloc(),
           "MALLOC_CONF": allocator.KEEP_PAGES_CONF}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", RELEASE], env=env, capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    assert out[0] == "True" and abs(float(out[1])) < 50
    assert out[2] == "True"
    assert float(out[3]) < 50 and float(out[4]) > 250  # MB: kept when freed, gone when released


@pytest.mark.parametrize("allocator_in_use", ["system malloc", "jemalloc's defaults"])
def test_release_is_a_no_op_where_pages_are_not_kept(allocator_in_use):
    """Under glibc there is nothing to release; under jemalloc's own settings it hands pages
    back by itself, and purging on top would only fault them in again."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    if allocator_in_use == "jemalloc's defaults":
        if not sys.platform.startswith("linux") or allocator.find_jemalloc() is None:
            pytest.skip("needs Linux with jemalloc")
        env["LD_PRELOAD"] = allocator.find_jemalloc()
    code = "from tooltune.allocator import release_free_memory; print(release_free_memory())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.strip() == "False"


KEEP_DURING = """
import ctypes
from tooltune import allocator
def resident_mb(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
def decays():
    n = allocator._read(allocator._mallctl(), "arenas.narenas", ctypes.c_uint)
    return [allocator._read(allocator._mallctl(), f"arena.{i}.dirty_decay_ms", ctypes.c_ssize_t)
            for i in range(n)]
before = decays()
with allocator.keep_freed_pages():
    block = bytearray(300 * 2**20)
    held = resident_mb()
    del block
    kept = held - resident_mb()
    print(allocator.release_free_memory(1 << 30), kept)
after = decays()
same = all(a == b for a, b in zip(before, after, strict=True) if a is not None)
print(held - resident_mb(), allocator.release_free_memory(), same and -1 not in after)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or allocator.find_jemalloc() is None,
    reason="needs Linux with jemalloc",
)
def test_pages_are_kept_within_a_training_block_only():
    """Under jemalloc's defaults a freed block of 300 MB leaves at once; inside
    `keep_freed_pages` it stays for reuse, and leaving the block hands it back and restores
    each arena's own decay (the arena for large blocks included, which jemalloc makes on
    first use: here inside the block)."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_CONF"}
    env["LD_PRELOAD"] = allocator.find_jemalloc()
    out = subprocess.run([sys.executable, "-c", KEEP_DURING], env=env, capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    assert out[0] == "True" and float(out[1]) < 50  # MB moved while kept: ~0
    assert float(out[2]) > 250 and out[3] == "False" and out[4] == "True"
