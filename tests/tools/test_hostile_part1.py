"""A catalogue of hostile tool calls against the search, python, math, files and database tools.

Every call must come back as a clear failed response within its time limit, the host process
must stay healthy (a benign call of the same family still works), and no file outside the
sandbox may change (a sentinel file and the database sit beside the sandbox).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import stat
import time
from dataclasses import dataclass, field

import pytest

from tooltune.registry import ToolRegistry
from tooltune.tools.code_runner import make_code_tools, sandbox_info
from tooltune.tools.database import make_database_tools
from tooltune.tools.files import make_file_tools
from tooltune.tools.math_solver import WorkerPool, make_math_tools
from tooltune.tools.search import SearchIndex, make_search_tools
from tooltune.types import ToolCall

CODE_TIMEOUT = 2.0
MATH_TIME_LIMIT = 2.0
SQL_TIME_LIMIT = 1.0
SENTINEL_TEXT = "sentinel: must never change\n"


@dataclass
class World:
    base: str
    sandbox: str
    sentinel: str
    registry: ToolRegistry
    server: socket.socket
    pool: WorkerPool
    has_device: bool = False
    extra: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    sandbox = base / "sandbox"
    outside = base / "outside"
    (sandbox / "docs").mkdir(parents=True)
    outside.mkdir()
    (sandbox / "docs" / "a.txt").write_text("hello from the sandbox\n")
    sentinel = base / "sentinel.txt"
    sentinel.write_text(SENTINEL_TEXT)
    (outside / "secret.txt").write_text("top secret\n")
    os.symlink(outside / "secret.txt", sandbox / "escape-link")
    os.symlink(outside, sandbox / "escape-dir")
    os.symlink("/dev/zero", sandbox / "zero-link")
    os.symlink("/etc", sandbox / "etc-link")
    os.mkfifo(sandbox / "fifo")
    has_device = True
    try:
        os.mknod(sandbox / "zero-device", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    except (PermissionError, OSError):
        has_device = False

    db = base / "world.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE n (i INTEGER)")
    conn.executemany("INSERT INTO n VALUES (?)", [(i,) for i in range(1000)])
    conn.commit()
    conn.close()

    corpus = base / "corpus"
    corpus.mkdir()
    (corpus / "doc.md").write_text("# Doc\nSome text about oceans.\n")

    pool = WorkerPool(size=1)
    registry = ToolRegistry()
    tools = [
        *make_file_tools(sandbox),
        *make_code_tools(timeout=CODE_TIMEOUT),
        *make_math_tools(time_limit=MATH_TIME_LIMIT, pool=pool),
        *make_database_tools(db, time_limit=SQL_TIME_LIMIT),
        *make_search_tools(SearchIndex.build(corpus, base / "index")),
    ]
    for t in tools:
        registry.register(t)

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.setblocking(False)
    yield World(str(base), str(sandbox), str(sentinel), registry, server, pool, has_device)
    server.close()
    pool.close()


def snapshot(world: World) -> dict[str, str]:
    """Hash of every file outside the sandbox under the world's base, and of the names there."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(world.base):
        if os.path.commonpath([dirpath, world.sandbox]) == world.sandbox:
            continue
        out[dirpath] = ",".join(sorted(dirnames + filenames))
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


@dataclass
class Hostile:
    id: str
    tool: str
    arguments: dict
    expect: str  # a substring of the error message
    seconds: float = 5.0
    needs_isolation: bool = False  # only meaningful when the code runs as another user
    needs_device: bool = False


HOST_PID = "{host_pid}"
SENTINEL = "{sentinel}"
PORT = "{port}"

CATALOGUE = [
    # -- files ------------------------------------------------------------------------------
    Hostile("parent-traversal", "read_file", {"path": "../sentinel.txt"}, "'..' is not allowed"),
    Hostile("absolute-path", "read_file", {"path": "/etc/passwd"}, "absolute paths are not allowed"),
    Hostile("nested-traversal", "read_file", {"path": "a/../../x"}, "'..' is not allowed"),
    Hostile("symlink-escape", "read_file", {"path": "escape-link"}, "leads outside the sandbox"),
    Hostile("symlink-dir-escape", "read_file", {"path": "escape-dir/secret.txt"}, "leads outside"),
    Hostile("symlink-dev-zero", "read_file", {"path": "zero-link"}, "leads outside the sandbox"),
    Hostile("fifo", "read_file", {"path": "fifo"}, "not a regular file", seconds=2.0),
    Hostile("device-file", "read_file", {"path": "zero-device"}, "not a regular file", needs_device=True),
    Hostile("nul-byte", "read_file", {"path": "docs/a.txt\0.png"}, "NUL"),
    Hostile("write-traversal", "write_file", {"path": "../pwned.txt", "content": "x"}, "'..' is not allowed"),
    Hostile("write-absolute", "write_file", {"path": SENTINEL, "content": "x"}, "absolute paths"),
    Hostile("write-through-dir-link", "write_file", {"path": "escape-dir/new.txt", "content": "x"}, "leads outside"),
    Hostile("append-through-link", "append_file", {"path": "escape-link", "content": "x"}, "symbolic link"),
    Hostile("write-oversize", "write_file", {"path": "big.txt", "content": "x" * 1_000_001}, "limit"),
    Hostile("list-parent", "list_files", {"path": ".."}, "'..' is not allowed"),
    Hostile("list-etc-link", "list_files", {"path": "etc-link"}, "leads outside the sandbox"),
    Hostile("search-etc", "search_files", {"pattern": "root", "path": "/etc"}, "absolute paths"),
    # -- math -------------------------------------------------------------------------------
    Hostile("math-import-os", "calculate", {"expression": f"__import__('os').system('touch {SENTINEL}')"}, "not allowed"),
    Hostile("math-subclasses", "calculate", {"expression": "().__class__.__bases__[0].__subclasses__()"}, "not allowed"),
    Hostile("math-attribute", "calculate", {"expression": "(1).real"}, "attribute access"),
    Hostile("math-call-eval", "simplify_expression", {"expression": "eval('1')"}, "not allowed"),
    Hostile("math-lambda", "differentiate", {"expression": "lambda x: x"}, "lambda"),
    Hostile("math-tower", "calculate", {"expression": "9**9**9**9"}, "refusing to compute"),
    Hostile("math-factorial", "calculate", {"expression": "factorial(10**9)"}, "refusing to compute"),
    Hostile("math-huge-power", "solve_equation", {"equations": "x = 7**(10**8)"}, "refusing to compute"),
    Hostile("math-dunder-variable", "integrate", {"expression": "x", "variable": "__class__"}, "not a valid variable"),
    Hostile("math-runaway", "integrate", {"expression": "exp(x**x)*sin(x)/log(x+1)"}, "was stopped", seconds=MATH_TIME_LIMIT + 2),
    # -- python -----------------------------------------------------------------------------
    Hostile("fork-bomb", "run_python", {"code": "import os\nwhile True:\n    os.fork()"}, "", seconds=CODE_TIMEOUT + 3),
    Hostile("busy-loop", "run_python", {"code": "while True:\n    pass"}, "did not finish within", seconds=CODE_TIMEOUT + 3),
    Hostile("memory-hog", "run_python", {"code": "x = 'x' * 10**10"}, "MemoryError", seconds=CODE_TIMEOUT + 3),
    Hostile("print-100mb", "run_python", {"code": "print('x' * 10**8)"}, "", seconds=CODE_TIMEOUT + 3),
    Hostile("kill-parent", "run_python", {"code": f"import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill({HOST_PID}, signal.SIGKILL)"}, "ProcessLookupError", needs_isolation=True),
    Hostile("kill-everything", "run_python", {"code": "import os\nos.kill(-1, 9)\nraise SystemExit('survived')"}, "", needs_isolation=True),
    Hostile("write-outside-cwd", "run_python", {"code": f"open({SENTINEL!r}, 'w').write('pwned')"}, "PermissionError", needs_isolation=True),
    Hostile("open-socket", "run_python", {"code": f"import socket\ns = socket.create_connection(('127.0.0.1', {PORT}), timeout=1)"}, "Error"),
    Hostile("segfault", "run_python", {"code": "import ctypes\nctypes.string_at(0)"}, "exit code"),
    # -- database ---------------------------------------------------------------------------
    Hostile("sql-drop", "sql_query", {"query": "DROP TABLE n"}, "not permitted"),
    Hostile("sql-insert", "sql_query", {"query": "INSERT INTO n VALUES (1)"}, "INSERT is not permitted"),
    Hostile("sql-delete", "sql_query", {"query": "DELETE FROM n"}, "DELETE is not permitted"),
    Hostile("sql-attach", "sql_query", {"query": "ATTACH DATABASE '/tmp/evil.db' AS evil"}, "ATTACH is not permitted"),
    Hostile("sql-writable-schema", "sql_query", {"query": "PRAGMA writable_schema=1"}, "PRAGMA writable_schema is not permitted"),
    Hostile("sql-create", "sql_query", {"query": "CREATE TABLE t (a)"}, "not permitted"),
    Hostile("sql-cross-join", "sql_query", {"query": "SELECT count(*) FROM n a, n b, n c"}, "took longer than", seconds=SQL_TIME_LIMIT + 2),
    Hostile("sql-infinite-cte", "sql_query", {"query": "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT max(i) FROM r"}, "took longer than", seconds=SQL_TIME_LIMIT + 2),
    Hostile("sql-load-extension", "sql_query", {"query": "SELECT load_extension('/tmp/evil.so')"}, "load_extension() is not permitted"),
    Hostile("sql-piggyback", "sql_query", {"query": "SELECT 1; DROP TABLE n"}, "one SQL statement"),
    Hostile("sql-vacuum-into", "sql_query", {"query": "VACUUM INTO '/tmp/stolen.db'"}, "not permitted"),
    Hostile("sql-zeroblob", "sql_query", {"query": "SELECT zeroblob(2000000000)"}, "too big"),
    # -- search -----------------------------------------------------------------------------
    Hostile("open-document-path", "open_document", {"doc_id": "../../etc/passwd"}, "no document with id"),
]  # fmt: skip

BENIGN = {
    "read_file": ("read_file", {"path": "docs/a.txt"}),
    "write_file": ("list_files", {"path": "."}),
    "append_file": ("list_files", {"path": "."}),
    "list_files": ("list_files", {"path": "docs"}),
    "search_files": ("search_files", {"pattern": "hello"}),
    "calculate": ("calculate", {"expression": "2 + 2"}),
    "simplify_expression": ("calculate", {"expression": "2 + 2"}),
    "differentiate": ("calculate", {"expression": "2 + 2"}),
    "integrate": ("calculate", {"expression": "2 + 2"}),
    "solve_equation": ("calculate", {"expression": "2 + 2"}),
    "run_python": ("run_python", {"code": "print(2 + 2)"}),
    "sql_query": ("sql_query", {"query": "SELECT count(*) FROM n"}),
    "open_document": ("search", {"query": "oceans"}),
}


def _fill(value, world: World):
    if isinstance(value, str):
        return (
            value.replace(HOST_PID, str(os.getpid()))
            .replace(SENTINEL, world.sentinel)
            .replace(PORT, str(world.server.getsockname()[1]))
        )
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    return value


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 25
    assert len({h.id for h in CATALOGUE}) == len(CATALOGUE)
    assert {h.tool for h in CATALOGUE} <= set(BENIGN)


@pytest.mark.parametrize("case", CATALOGUE, ids=[h.id for h in CATALOGUE])
def test_hostile_call_fails_cleanly(world, case):
    if case.needs_device and not world.has_device:
        pytest.skip("cannot create a device node here")
    if case.needs_isolation and sandbox_info().level != "nobody":
        pytest.skip(f"code runs as this user here (sandbox level {sandbox_info().level!r})")
    before = snapshot(world)
    pid = os.getpid()

    start = time.monotonic()
    response = world.registry.execute(
        ToolCall(id="h", name=case.tool, arguments=_fill(case.arguments, world))
    )
    elapsed = time.monotonic() - start

    assert not response.success, f"hostile call succeeded: {response.result!r}"[:500]
    assert response.error and response.error.strip()
    assert case.expect in response.error, response.error[:1000]
    assert elapsed < case.seconds, f"took {elapsed:.1f} s"

    # The host is healthy: same process, and the family still answers a benign call.
    assert os.getpid() == pid
    name, arguments = BENIGN[case.tool]
    benign = world.registry.execute(ToolCall(id="b", name=name, arguments=arguments))
    assert benign.success, benign.error

    # Nothing outside the sandbox changed.
    assert snapshot(world) == before
    with open(world.sentinel) as f:
        assert f.read() == SENTINEL_TEXT
    try:
        conn, _ = world.server.accept()
        conn.close()
        raise AssertionError("the sandboxed code reached a socket on the host")
    except BlockingIOError:
        pass
