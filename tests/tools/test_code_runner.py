"""The sandboxed Python runner and the run_python tool."""

from __future__ import annotations

import os
import time

import pytest

from tooltune.registry import ToolRegistry
from tooltune.tools.code_runner import make_code_tools, run_code, sandbox_info
from tooltune.types import ToolCall


@pytest.fixture(scope="module")
def registry():
    reg = ToolRegistry()
    for t in make_code_tools(timeout=2.0):
        reg.register(t)
    return reg


def run_python(registry, code):
    return registry.execute(ToolCall(id="1", name="run_python", arguments={"code": code}))


def test_stdout_and_last_expression_result():
    out = run_code("x = 6 * 7\nprint('hello', x)\nx + 1")
    assert out["stdout"] == "hello 42\n"
    assert out["result"] == "43"
    assert out["exit_code"] == 0 and out["timed_out"] is False
    assert out["sandbox"]["level"] in {"nobody", "namespaces", "userns", "plain"}


def test_result_is_none_without_final_expression():
    assert run_code("y = [1, 2]")["result"] is None
    assert run_code("None")["result"] is None
    assert run_code("'a' * 3")["result"] == "'aaa'"


def test_runs_in_another_process_with_scrubbed_environment(monkeypatch):
    monkeypatch.setenv("TOOLTUNE_TEST_SECRET", "s3cret")
    out = run_code("import os\nprint(os.getpid())\nsorted(os.environ)")
    assert int(out["stdout"]) != os.getpid()
    assert "TOOLTUNE_TEST_SECRET" not in out["result"]
    assert "HOME" in out["result"]


def test_fresh_working_directory_is_deleted_afterwards():
    out = run_code(
        "import os\nopen('data.txt', 'w').write('hi')\nprint(os.getcwd())\nsorted(os.listdir('.'))"
    )
    assert out["exit_code"] == 0, out["stderr"]
    workdir = out["stdout"].strip()
    assert out["result"] == "['data.txt']"  # the code file itself is gone before the code runs
    assert not os.path.exists(workdir)
    assert "data.txt" not in run_code("import os\nos.listdir('.')")["result"]


def test_error_reports_traceback_of_user_code_only():
    out = run_code("def f():\n    return 1 / 0\nf()")
    assert out["exit_code"] == 1
    assert 'File "<code>", line 2, in f' in out["stderr"]
    assert "ZeroDivisionError: division by zero" in out["stderr"]
    assert "BOOTSTRAP" not in out["stderr"] and "_main" not in out["stderr"]


def test_syntax_error_and_exit_codes():
    out = run_code("def (:\n")
    assert out["exit_code"] == 1 and "SyntaxError" in out["stderr"]
    assert run_code("import sys\nsys.exit(3)")["exit_code"] == 3
    assert run_code("import sys\nsys.exit(0)")["exit_code"] == 0
    out = run_code("import sys\nsys.exit('bad input')")
    assert out["exit_code"] == 1 and "bad input" in out["stderr"]


def test_timeout_kills_the_process_group():
    start = time.monotonic()
    out = run_code(
        "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nwhile True:\n    pass",
        timeout=1.0,
    )
    assert time.monotonic() - start < 5.0
    assert out["timed_out"] is True
    assert out["exit_code"] != 0


def test_output_is_truncated_with_a_note():
    out = run_code("print('y' * 5000)", max_output=1000)
    assert out["exit_code"] == 0
    assert out["stdout"].split("\n[output")[0] == "y" * 1000
    assert "[output truncated: 4001 more bytes not shown]" in out["stdout"]


def test_output_flood_is_stopped():
    start = time.monotonic()
    out = run_code("while True:\n    print('z' * 10000)", timeout=10.0, max_output=1000)
    assert time.monotonic() - start < 5.0
    assert out["output_limit_exceeded"] is True and out["timed_out"] is False


def test_stdin_is_empty():
    out = run_code("import sys\nsys.stdin.read()")
    assert out["result"] == "''"


def test_code_too_long_is_refused():
    with pytest.raises(ValueError, match="limit"):
        run_code("#" * 200_000)


def test_no_network_in_the_child():
    out = run_code(
        "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 80))", timeout=3
    )
    assert out["exit_code"] != 0
    assert "Error" in out["stderr"]


def test_run_python_tool_success_and_failure(registry):
    ok = run_python(registry, "import math\nprint(math.factorial(20))\nmath.pi > 3")
    assert ok.success, ok.error
    assert ok.result == {"stdout": "2432902008176640000\n", "stderr": "", "result": "True"}

    failed = run_python(registry, "raise ValueError('bad value 17')")
    assert not failed.success
    assert "exit code 1" in failed.error
    assert "ValueError: bad value 17" in failed.error

    slow = run_python(registry, "import time\ntime.sleep(30)")
    assert not slow.success and "did not finish within 2 s" in slow.error

    empty = run_python(registry, "   ")
    assert not empty.success and "non-empty" in empty.error


def test_failure_message_keeps_stdout(registry):
    failed = run_python(registry, "print('partial result 5')\nundefined_name")
    assert not failed.success
    assert "partial result 5" in failed.error
    assert "NameError" in failed.error


def test_each_call_starts_fresh(registry):
    assert run_python(registry, "counter = 1").success
    again = run_python(registry, "counter")
    assert not again.success and "NameError" in again.error


def test_sandbox_probe_is_cached():
    assert sandbox_info() is sandbox_info()


def test_leftover_background_processes_are_killed():
    import shutil
    import tempfile

    shared = tempfile.mkdtemp(prefix="tooltune-test-")
    os.chmod(shared, 0o777)
    marker = os.path.join(shared, "still-alive")
    try:
        code = (
            "import os, time\n"
            "if os.fork() == 0:\n"
            "    time.sleep(1.0)\n"
            f"    open({marker!r}, 'w').write('x')\n"
            "    os._exit(0)\n"
            "print('parent done')"
        )
        out = run_code(code, timeout=5.0)
        assert out["exit_code"] == 0 and out["stdout"] == "parent done\n"
        time.sleep(1.5)
        assert not os.path.exists(marker)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_unreadable_leftovers_are_still_removed():
    out = run_code(
        "import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a', 0)\n"
        "os.chmod('.', 0o500)\nprint(os.getcwd())"
    )
    assert out["exit_code"] == 0, out["stderr"]
    assert not os.path.exists(out["stdout"].strip())


def test_plain_fallback_disables_sockets(monkeypatch):
    from tooltune.tools import code_runner

    plain = code_runner._candidates()[-1]
    assert plain.level == "plain" and plain.prefix == ()
    monkeypatch.setattr(code_runner, "sandbox_info", lambda: plain)
    out = run_code("import socket\nsocket.socket()")
    assert out["sandbox"]["level"] == "plain"
    assert "network access is disabled in this sandbox" in out["stderr"]
    ok = run_code("print(sum(range(10)))")
    assert ok["stdout"] == "45\n" and ok["exit_code"] == 0


def test_code_cannot_read_files_the_host_keeps_private(tmp_path):
    if sandbox_info().user != "nobody":
        pytest.skip(f"this platform's sandbox runs code as {sandbox_info().user!r}")
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    result = run_code(f"print(open({str(secret)!r}).read())")
    assert result["exit_code"] != 0 and "Permission denied" in result["stderr"]
    assert "password" not in result["stdout"]
