"""Exact math with sympy: the tools, behind a whitelist parser and a worker process with a
hard time limit.

Model text is read only by the whitelist parser (`math_parser`), and all sympy work runs in a
separate worker process (`math_worker`). A call that takes longer than the time limit kills the
worker, which is restarted for the next call, so runaway simplifications or integrals stop for
real instead of leaving a busy thread behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import selectors
import subprocess
import sys
import threading
import time
from typing import Any

from tooltune.registry import ToolDefinition, ToolError, tool
from tooltune.tools import math_worker
from tooltune.tools.math_parser import MathError


class _Worker:
    """One worker process; `call` kills it when the answer does not come in time."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        path = os.path.abspath(math_worker.__file__)
        boot = (
            "import json, runpy, sys; sys.path[:0] = json.loads(sys.argv[1]); "
            "runpy.run_path(sys.argv[2], run_name='__tooltune_math_worker__')['serve']()"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", boot, json.dumps(sys.path), path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1"},
            start_new_session=True,
        )
        self._read_line(time.monotonic() + 60.0)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
            self.proc = None

    def _read_line(self, deadline: float) -> dict:
        fd = self.proc.stdout.fileno()
        chunks = []
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                if not sel.select(remaining):
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise EOFError
                chunks.append(chunk)
                if chunk.endswith(b"\n"):
                    return json.loads(b"".join(chunks))

    def call(self, op: str, args: dict, time_limit: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.kill()
            self._start()
        try:
            self.proc.stdin.write((json.dumps({"op": op, "args": args}) + "\n").encode())
            self.proc.stdin.flush()
            return self._read_line(time.monotonic() + time_limit)
        except TimeoutError:
            self.kill()
            return {
                "ok": False,
                "error": f"the computation took longer than {time_limit:g} s and was stopped",
            }
        except (EOFError, OSError, ValueError):
            self.kill()
            return {"ok": False, "error": "the math worker crashed on this input"}


class WorkerPool:
    """A fixed number of lazily started workers shared by all math tools of this process."""

    def __init__(self, size: int = 2) -> None:
        self.free: queue.LifoQueue[_Worker] = queue.LifoQueue()
        for _ in range(size):
            self.free.put(_Worker())

    def call(self, op: str, args: dict, time_limit: float) -> dict:
        worker = self.free.get()
        try:
            return worker.call(op, args, time_limit)
        finally:
            self.free.put(worker)

    def close(self) -> None:
        while not self.free.empty():
            self.free.get().kill()


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def default_pool() -> WorkerPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = WorkerPool(size=2)
        return _POOL


def compute(op: str, time_limit: float = 5.0, pool: WorkerPool | None = None, **args: Any) -> Any:
    """Run one operation in a worker; raises MathError with the worker's message on failure."""
    reply = (pool or default_pool()).call(op, args, time_limit)
    if not reply.get("ok"):
        raise MathError(reply.get("error", "unknown error"))
    return reply["value"]


def make_math_tools(
    time_limit: float = 5.0, pool: WorkerPool | None = None
) -> list[ToolDefinition]:
    """calculate, solve_equation, simplify_expression, differentiate and integrate.

    Each call runs in a worker process of `pool` (default: one shared by the process) and is
    stopped after `time_limit` seconds."""

    def run(op: str, **args: Any) -> Any:
        try:
            return compute(op, time_limit=time_limit, pool=pool, **args)
        except MathError as e:
            raise ToolError(str(e)) from None

    budget = time_limit + 30.0  # the registry's limit also covers starting a worker

    @tool(timeout=budget)
    def calculate(expression: str) -> dict:
        """Evaluate an arithmetic expression exactly, e.g. "2**100", "sqrt(8) + 1/3", "sin(pi/6)".

        Returns the exact result as text and a float approximation (null when not real). Use ^
        or ** for powers; functions: sin cos tan exp log ln sqrt abs floor ceiling factorial gcd
        lcm binomial min max and more; constants pi, E, I, oo.

        Args:
            expression: The expression to evaluate, with numbers only (no unknowns).
        """
        return run("calculate", expression=expression)

    @tool(timeout=budget)
    def solve_equation(equations: str | list[str], variables: list[str] | None = None) -> dict:
        """Solve an equation or a system of equations exactly, e.g. "x^2 - 4 = 0".

        Returns {"variables", "solutions": [{name: exact value}], "numeric": [{name: float}]};
        inequalities like "x^2 < 4" give {"condition": ...} instead. An expression without "="
        means expression = 0.

        Args:
            equations: One equation, several separated by ";" or ",", or a list of equations.
            variables: The unknowns to solve for; by default every unknown that appears.
        """
        return run("solve_equation", equations=equations, variables=variables)

    @tool(timeout=budget)
    def simplify_expression(expression: str) -> dict:
        """Simplify an algebraic expression, e.g. "(x^2 - 1)/(x - 1)" -> "x + 1".

        Args:
            expression: The expression to simplify.
        """
        return run("simplify_expression", expression=expression)

    @tool(timeout=budget)
    def differentiate(expression: str, variable: str = "x") -> dict:
        """Differentiate an expression with respect to one variable, e.g. "x^3 + sin(x)".

        Args:
            expression: The expression to differentiate.
            variable: The variable to differentiate by.
        """
        return run("differentiate", expression=expression, variable=variable)

    @tool(timeout=budget)
    def integrate(
        expression: str,
        variable: str = "x",
        lower: str | float | None = None,
        upper: str | float | None = None,
    ) -> dict:
        """Integrate an expression: the antiderivative, or the definite integral with bounds.

        Args:
            expression: The expression to integrate, e.g. "x^2 * exp(x)".
            variable: The integration variable.
            lower: Lower bound of a definite integral (a number or an expression like "pi").
            upper: Upper bound of a definite integral (e.g. "oo" for infinity).
        """
        return run("integrate", expression=expression, variable=variable, lower=lower, upper=upper)

    return [calculate, solve_equation, simplify_expression, differentiate, integrate]
