"""Run model-written Python in a separate, resource-limited process.

The code never runs in this process. Each call gets a fresh temporary working directory (deleted
afterwards), a scrubbed environment and `python -I`, and a small bootstrap inside the child sets
`setrlimit` limits (CPU seconds, address space, open files, file size, processes) before it runs the
user code. The child starts its own session so the whole process group can be killed on timeout.

Isolation is as strong as the platform allows; the first call probes, from strongest to weakest:

- "nobody": as root, `unshare --net --pid` (no network, own PID namespace, so the host's
  processes cannot be signalled and every leftover process dies with the namespace) and `setpriv`
  to the unprivileged `nobody` user (no writes outside the working directory, the process limit
  is enforced), with no capabilities. Where `nobody` cannot reach the Python installation (one
  under /root), a private mount namespace binds it onto an open directory first; only if that
  fails too does the child keep the capability to read files (CAP_DAC_READ_SEARCH), never to
  write them.
- "namespaces": as root without `setpriv`: network and PID namespaces, but still root.
- "userns": not root: an unprivileged user namespace with its own network and PID namespaces.
- "plain": none of the above works: rlimits only, and `socket` is disabled inside the child's
  Python (best effort; C extensions could still open sockets). The result says so.

The result's `sandbox` entry names the level that was used.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import pwd
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from tooltune.registry import ToolDefinition, ToolError, tool

MAX_CODE_CHARS = 100_000
CODE_FILE = ".tooltune_main.py"

# Runs inside the sandboxed child (as `python -I -c BOOTSTRAP CONFIG`). It limits the process,
# reads and removes the code file, runs the code like a script, and reports the value of a final
# expression (like a REPL) as JSON on the file descriptor named in CONFIG.
BOOTSTRAP = r"""
import ast, json, linecache, os, resource, signal, sys, traceback

def _setup(cfg):
    for name, value in cfg["limits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes fail with EFBIG instead
    if cfg["block_socket"]:
        import socket, _socket
        def _no_network(*args, **kwargs):
            raise OSError("network access is disabled in this sandbox")
        for mod in (socket, _socket):
            for attr in ("socket", "socketpair", "create_connection", "fromfd", "getaddrinfo"):
                if hasattr(mod, attr):
                    setattr(mod, attr, _no_network)

def _user_traceback(exc):
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<code>":
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)

def _main():
    cfg = json.loads(sys.argv[1])
    with open(cfg["code_path"], encoding="utf-8") as f:
        source = f.read()
    os.unlink(cfg["code_path"])
    _setup(cfg)
    result_pipe = os.fdopen(cfg["result_fd"], "w")
    sys.argv = ["<code>"]
    linecache.cache["<code>"] = (len(source), None, source.splitlines(True), "<code>")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    result, status = None, 0
    try:
        tree = ast.parse(source, "<code>")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<code>", "exec"), namespace)
        if last is not None:
            value = eval(compile(last, "<code>", "eval"), namespace)
            if value is not None:
                result = repr(value)[: cfg["max_result"]]
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            status = 1
    except BaseException as exc:
        _user_traceback(exc)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        result_pipe.write(json.dumps({"result": result}, ensure_ascii=False))
        result_pipe.close()
    except Exception:
        pass
    os._exit(status)

_main()
"""


@dataclass
class SandboxInfo:
    """Which isolation the child got (see the module docstring)."""

    level: str  # "nobody" | "namespaces" | "userns" | "plain"
    network: str  # how the network is cut off
    user: str  # who the code runs as
    pid_namespace: bool
    prefix: tuple[str, ...] = ()  # command that wraps `python`
    uid: int | None = None  # uid the code runs as, when it is not this process's
    python: str = sys.executable  # the interpreter as the child sees it
    env: tuple[tuple[str, str], ...] = ()  # extra environment the interpreter needs there


def _nobody_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _candidates() -> list[SandboxInfo]:
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    out: list[SandboxInfo] = []
    ns_flags = ("--net", "--pid", "--fork", "--kill-child")
    if os.geteuid() == 0 and unshare:
        if setpriv:
            uid, gid = _nobody_ids()
            drop = (setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs")
            mounted = _mounted_python(unshare, ns_flags, drop)
            if mounted is not None:
                out.append(mounted)
            for caps in ("-all", "-all,+dac_read_search"):
                cap_flags = (
                    f"--inh-caps={caps}",
                    f"--ambient-caps={caps}",
                    f"--bounding-set={caps}",
                )
                out.append(
                    SandboxInfo(
                        "nobody",
                        "none (network namespace)",
                        "nobody" + (" (may read, not write, any file)" if "+" in caps else ""),
                        True,
                        (unshare, *ns_flags, *drop, *cap_flags),
                        uid,
                    )
                )
        out.append(
            SandboxInfo(
                "namespaces", "none (network namespace)", "root", True, (unshare, *ns_flags)
            )
        )
    if os.geteuid() != 0 and unshare:
        prefix = (unshare, "--user", "--map-root-user", *ns_flags)
        out.append(SandboxInfo("userns", "none (network namespace)", "this user", True, prefix))
    out.append(SandboxInfo("plain", "socket disabled in Python (best effort)", "this user", False))
    return out


def _mounted_python(
    unshare: str, ns_flags: tuple[str, ...], drop: tuple[str, ...]
) -> SandboxInfo | None:
    """`nobody` with no capability at all, even where the interpreter lives somewhere `nobody`
    cannot enter (a Python under /root): a private mount namespace binds the installation onto
    an open directory, so the child can run it without the right to read any other file."""
    base = os.path.realpath(sys.base_prefix)
    python = os.path.relpath(os.path.realpath(sys.executable), base)
    if python.startswith(".."):
        return None
    mount_point = os.path.join(tempfile.gettempdir(), "tooltune-python")
    try:
        os.makedirs(mount_point, mode=0o755, exist_ok=True)
        os.chmod(mount_point, 0o755)
    except OSError:
        return None
    script = 'mount --bind "$0" "$1" || exit 125; shift; exec "$@"'
    caps = tuple(f"--{kind}-caps=-all" for kind in ("inh", "ambient")) + ("--bounding-set=-all",)
    prefix = (
        unshare,
        "--mount",
        *ns_flags,
        "/bin/sh",
        "-c",
        script,
        base,
        mount_point,
        *drop,
        *caps,
    )
    # the interpreter's shared library is found through an absolute path under the old prefix
    env = (("LD_LIBRARY_PATH", os.path.join(mount_point, "lib")),)
    return SandboxInfo("nobody", "none (network namespace)", "nobody", True, prefix,
                       _nobody_ids()[0], os.path.join(mount_point, python), env)  # fmt: skip


@functools.cache
def sandbox_info() -> SandboxInfo:
    """The strongest isolation that works here (probed once per process)."""
    # The child must run this very interpreter (an unreadable one can silently resolve elsewhere).
    probe = "import ast, json, linecache, resource, signal, sys, traceback; print(sys.version)"
    for info in _candidates()[:-1]:
        with tempfile.TemporaryDirectory(prefix="tooltune-probe-") as tmp:
            if info.uid is not None:
                os.chown(tmp, info.uid, -1)
            try:
                proc = subprocess.run(
                    [*info.prefix, info.python, "-I", "-c", probe],
                    cwd=tmp,
                    env={**_child_env(tmp), **dict(info.env)},
                    capture_output=True,
                    timeout=20,
                    start_new_session=True,
                )
            except (OSError, subprocess.TimeoutExpired):
                continue
            if proc.returncode == 0 and proc.stdout.decode().strip() == sys.version:
                return info
    return _candidates()[-1]


def _child_env(workdir: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "MPLCONFIGDIR": workdir,
        "MPLBACKEND": "Agg",
    }
    for var in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    ):
        env[var] = "1"
    return env


def _process_count(uid: int) -> int:
    """Processes (threads count too for RLIMIT_NPROC, but this is close enough) owned by `uid`."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                count += 1
        except OSError:
            continue
    return count


def _limits(timeout: float, memory_mb: int, max_file_mb: int, max_processes: int, uid: int) -> dict:
    return {
        "RLIMIT_CPU": int(math.ceil(timeout)) + 1,
        "RLIMIT_AS": memory_mb * 1024 * 1024,
        "RLIMIT_NOFILE": 64,
        "RLIMIT_FSIZE": max_file_mb * 1024 * 1024,
        "RLIMIT_NPROC": _process_count(uid) + max_processes,
        "RLIMIT_CORE": 0,
    }


def _remove_tree(path: str) -> None:
    """Delete the working directory even if the code made parts of it unreadable."""
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, name), 0o700, follow_symlinks=False)
    shutil.rmtree(path, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class _Output:
    data: bytearray
    total: int = 0


def _collect(
    proc: subprocess.Popen, fds: dict[str, int], deadline: float, keep: int, hard_cap: int
) -> tuple[dict[str, _Output], bool, bool]:
    """Read the child's pipes until they close; kill the group on timeout or output flood.

    Returns (outputs, timed_out, flooded). Only the first `keep` bytes of each stream are kept."""
    outputs = {name: _Output(bytearray()) for name in fds}
    sel = selectors.DefaultSelector()
    for name, fd in fds.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    timed_out = flooded = False
    exited_at: float | None = None
    killed_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if killed_at is None:
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                timed_out = now >= deadline
                flooded = not timed_out and sum(o.total for o in outputs.values()) > hard_cap
                # Leftover processes of an exited child may hold the pipes open: kill them too.
                if timed_out or flooded or (exited_at is not None and now - exited_at > 0.2):
                    _kill_group(proc)
                    killed_at = now
            elif now - killed_at > 2.0:
                break  # a process that left our group still holds a pipe; stop waiting for it
            for key, _ in sel.select(0.05):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                out = outputs[key.data]
                out.total += len(chunk)
                if len(out.data) < keep:
                    out.data += chunk[: keep - len(out.data)]
    finally:
        sel.close()
    return outputs, timed_out, flooded


def _text(out: _Output, keep: int) -> str:
    text = bytes(out.data[:keep]).decode("utf-8", errors="replace")
    if out.total > keep:
        text += f"\n[output truncated: {out.total - keep} more bytes not shown]"
    return text


def run_code(
    code: str,
    *,
    timeout: float = 5.0,
    memory_mb: int = 256,
    max_output: int = 20_000,
    max_file_mb: int = 16,
    max_processes: int = 32,
    max_result: int = 10_000,
) -> dict:
    """Run `code` in a sandboxed `python -I` child and report what happened.

    Returns {"stdout", "stderr", "result", "exit_code", "timed_out", "output_limit_exceeded",
    "sandbox"}: `result` is the repr of the value of a final expression statement (None when there
    is none or it is None), `exit_code` is the child's status (negative: killed by that signal),
    `sandbox` describes the isolation (see `SandboxInfo`). Each stream keeps `max_output` bytes; a
    child that writes more than 50 times that in total is killed (`output_limit_exceeded`).
    """
    if not isinstance(code, str):
        raise TypeError("code must be a string")
    if len(code) > MAX_CODE_CHARS:
        raise ValueError(f"code is {len(code)} characters; the limit is {MAX_CODE_CHARS}")
    info = sandbox_info()
    workdir = tempfile.mkdtemp(prefix="tooltune-run-")
    result_r, result_w = os.pipe()
    try:
        code_path = os.path.join(workdir, CODE_FILE)
        with open(code_path, "w", encoding="utf-8") as f:
            f.write(code)
        uid = info.uid if info.uid is not None else os.getuid()
        if info.uid is not None:
            os.chown(workdir, info.uid, -1)
            os.chown(code_path, info.uid, -1)
        config = {
            "code_path": code_path,
            "result_fd": result_w,
            "limits": _limits(timeout, memory_mb, max_file_mb, max_processes, uid),
            "block_socket": not info.pid_namespace,
            "max_result": max_result,
        }
        proc = subprocess.Popen(
            [*info.prefix, info.python, "-I", "-c", BOOTSTRAP, json.dumps(config)],
            cwd=workdir,
            env={**_child_env(workdir), **dict(info.env)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(result_w,),
            start_new_session=True,
        )
        os.close(result_w)
        result_w = -1
        fds = {"stdout": proc.stdout.fileno(), "stderr": proc.stderr.fileno(), "result": result_r}
        outputs, timed_out, flooded = _collect(
            proc,
            fds,
            time.monotonic() + timeout,
            max(max_output, 4 * max_result + 100),
            50 * max_output,
        )
        _kill_group(proc)
        exit_code = proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    finally:
        for fd in (result_r, result_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        _remove_tree(workdir)
    try:
        result = json.loads(bytes(outputs["result"].data))["result"]
    except (ValueError, KeyError, TypeError):
        result = None
    sandbox = asdict(info)
    sandbox.pop("prefix")
    sandbox.pop("uid")
    return {
        "stdout": _text(outputs["stdout"], max_output),
        "stderr": _text(outputs["stderr"], max_output),
        "result": result,
        "exit_code": exit_code,
        "timed_out": timed_out,
        "output_limit_exceeded": flooded,
        "sandbox": sandbox,
    }


def _signal_name(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    hints = {"SIGXCPU": " (CPU time limit)", "SIGSEGV": " (crash)", "SIGKILL": " (killed)"}
    return name + hints.get(name, "")


def _failure_message(out: dict, timeout: float) -> str:
    if out["timed_out"]:
        head = f"the code did not finish within {timeout:g} s and was stopped"
    elif out["output_limit_exceeded"]:
        head = "the code printed too much output and was stopped; print less"
    elif out["exit_code"] < 0:
        name = _signal_name(-out["exit_code"])
        head = f"the code failed with exit code {out['exit_code']} (killed by {name})"
    else:
        head = f"the code failed with exit code {out['exit_code']}"
    parts = [head]
    if out["stdout"].strip():
        parts.append("stdout:\n" + out["stdout"][-2000:])
    if out["stderr"].strip():
        parts.append("stderr:\n" + out["stderr"][-4000:])
    return "\n".join(parts)


def make_code_tools(
    *,
    timeout: float = 5.0,
    memory_mb: int = 256,
    max_output: int = 20_000,
    max_file_mb: int = 16,
    max_processes: int = 32,
) -> list[ToolDefinition]:
    """The `run_python` tool.

    A call whose code raises, exits non-zero, times out or floods the output counts as failed: it
    raises `ToolError` whose text holds the reason, the tail of stdout and the traceback (only the
    user's frames), so the model reads the error in the tool response and can fix its code.
    """

    @tool(timeout=timeout + 15.0)
    def run_python(code: str) -> dict:
        """Run a Python 3 program in a fresh sandbox and return what it printed.

        Each call starts from scratch (no state is kept between calls); there is no network and
        no access to other tools' files. The value of a final expression is returned as `result`,
        like in a REPL. The standard library (and numpy, sympy when installed) can be imported.

        Args:
            code: The Python source to run, e.g. "import math\\nprint(math.factorial(20))".
        """
        if not isinstance(code, str) or not code.strip():
            raise ToolError("code must be a non-empty string of Python source")
        try:
            out = run_code(
                code,
                timeout=timeout,
                memory_mb=memory_mb,
                max_output=max_output,
                max_file_mb=max_file_mb,
                max_processes=max_processes,
            )
        except ValueError as e:
            raise ToolError(str(e)) from None
        if out["timed_out"] or out["output_limit_exceeded"] or out["exit_code"] != 0:
            raise ToolError(_failure_message(out, timeout))
        return {"stdout": out["stdout"], "stderr": out["stderr"], "result": out["result"]}

    return [run_python]
