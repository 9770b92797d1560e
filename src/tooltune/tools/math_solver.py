"""Exact math with sympy, behind a whitelist parser and a worker process with a hard time limit.

Model text never reaches `eval`, `exec`, `sympify` or `parse_expr`: `parse_math` reads it with
`ast.parse(..., mode="eval")` and converts the tree node by node, accepting only numbers, a short
list of names, whitelisted functions and arithmetic operators. Powers, factorials and binomials
whose result would have more than `MAX_DIGITS` digits are refused before they are computed.

All sympy work runs in a separate worker process (this file run as a script). A call that takes
longer than the time limit kills the worker, which is restarted for the next call, so runaway
simplifications or integrals stop for real instead of leaving a busy thread behind.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import queue
import re
import selectors
import subprocess
import sys
import threading
import time
from fractions import Fraction
from typing import Any

from tooltune.registry import ToolDefinition, ToolError, tool

MAX_DIGITS = 100_000
MAX_INPUT_CHARS = 10_000
MAX_SYMBOLIC_EXPONENT = 100_000
WORKER_MEMORY_MB = 1024


class MathError(ValueError):
    """Input that is not allowed or cannot be computed; the text is for the model."""


# --------------------------------------------------------------------------------------------
# Whitelist parser (used inside the worker; importing sympy lazily keeps the host light)
# --------------------------------------------------------------------------------------------

# fmt: off
GREEK = frozenset([
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lamda", "mu", "nu", "xi", "omicron", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi",
    "omega",
])
UNARY_FUNCTIONS = [
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot", "sinh", "cosh",
    "tanh", "asinh", "acosh", "atanh", "exp", "sqrt", "cbrt", "floor", "ceiling", "sign", "re",
    "im", "conjugate", "arg", "erf", "gamma",
]
# fmt: on
_SYMBOL_NAME = re.compile(r"^[A-Za-z](_?[0-9]{1,3})?$")
_DECLARED_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")
_EQUALS = re.compile(r"(?<![<>=!])=(?!=)")
_DECIMAL = re.compile(r"^(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$")


def _sympy():
    import sympy

    return sympy


def _constants() -> dict[str, Any]:
    sp = _sympy()
    return {"pi": sp.pi, "E": sp.E, "e": sp.E, "I": sp.I, "oo": sp.oo, "inf": sp.oo}


def _functions() -> dict[str, tuple[Any, int, int | None]]:
    """name -> (sympy callable, minimum arguments, maximum arguments or None for any)."""
    sp = _sympy()
    one = {name: getattr(sp, name) for name in UNARY_FUNCTIONS}
    table: dict[str, tuple[Any, int, int | None]] = {name: (f, 1, 1) for name, f in one.items()}
    table.update(
        {
            "log": (sp.log, 1, 2),
            "ln": (sp.log, 1, 1),
            "log10": (lambda x: sp.log(x, 10), 1, 1),
            "log2": (lambda x: sp.log(x, 2), 1, 1),
            "abs": (sp.Abs, 1, 1),
            "Abs": (sp.Abs, 1, 1),
            "ceil": (sp.ceiling, 1, 1),
            "factorial": (sp.factorial, 1, 1),
            "atan2": (sp.atan2, 2, 2),
            "root": (sp.root, 2, 2),
            "binomial": (sp.binomial, 2, 2),
            "gcd": (sp.gcd, 2, None),
            "lcm": (sp.lcm, 2, None),
            "min": (sp.Min, 1, None),
            "max": (sp.Max, 1, None),
            "Min": (sp.Min, 1, None),
            "Max": (sp.Max, 1, None),
            "mod": (sp.Mod, 2, 2),
        }
    )
    return table


def _too_big(what: str) -> MathError:
    return MathError(f"{what} would have more than {MAX_DIGITS} digits; refusing to compute it")


def _log10_size(n: Any) -> float:
    """Decimal digits of the larger of the numerator and denominator of a sympy Rational."""
    return max(math.log10(abs(int(n.p))), math.log10(int(n.q)))


def check_power(base: Any, exponent: Any) -> None:
    """Refuse base**exponent when sympy would build an astronomically large exact number."""
    sp = _sympy()
    if not (base.is_number and exponent.is_number and exponent.is_Rational):
        return  # symbolic, or a float exponent (fixed precision): nothing huge is computed
    if base.is_Float or base in (sp.S.Zero, sp.S.One, sp.S.NegativeOne):
        return
    size = abs(exponent)
    if size <= 64:
        return
    if size > 10**12:
        raise _too_big("the power")
    if base.is_Rational:
        if float(size) * _log10_size(base) > MAX_DIGITS:
            raise _too_big("the power")
    elif size > MAX_SYMBOLIC_EXPONENT:
        raise _too_big("the power")


def _check_factorial(n: Any, offset: int = 0) -> None:
    if n.is_Integer and int(n) + offset > 0:
        m = int(n) + offset
        if m > 10**7 or math.lgamma(m + 1) / math.log(10) > MAX_DIGITS:
            raise _too_big(f"factorial({m})")


def _check_binomial(n: Any, k: Any) -> None:
    if n.is_Integer and k.is_Integer and 0 <= int(k) <= int(n):
        n, k = int(n), int(k)
        if n > 10**12:
            raise _too_big("the binomial coefficient")
        digits = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(10)
        if digits > MAX_DIGITS:
            raise _too_big("the binomial coefficient")


def _decimal(text: str) -> Any:
    """A decimal literal as an exact sympy Rational, refusing absurd exponents like 1e999999999."""
    sp = _sympy()
    match = _DECIMAL.match(text.replace("_", ""))
    if not match:
        raise MathError(f"cannot read the number {text!r}")
    whole, frac, exp = match.group(1) or "", match.group(2) or "", int(match.group(3) or 0)
    if abs(exp) > MAX_DIGITS:
        raise _too_big(f"the number {text}")
    value = Fraction(int(whole + frac or "0"), 10 ** len(frac)) * Fraction(10) ** exp
    return sp.Rational(value.numerator, value.denominator)


class _Converter:
    """Convert a Python AST (from ast.parse) into sympy objects, whitelisting every node."""

    def __init__(self, text: str, symbols: set[str]) -> None:
        self.text = text
        self.symbols = symbols
        self.constants = _constants()
        self.functions = _functions()
        self.used_decimal = False

    def convert(self, node: ast.AST) -> Any:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise MathError(f"{_describe(node)} is not allowed in math expressions")
        return method(node)

    def _Expression(self, node: ast.Expression) -> Any:
        return self.convert(node.body)

    def _Constant(self, node: ast.Constant) -> Any:
        sp = _sympy()
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float | complex):
            raise MathError(f"{_describe(node)} is not allowed in math expressions")
        if isinstance(value, complex):
            raise MathError("complex literals like 2j are not allowed; write 2*I")
        if isinstance(value, int):
            return sp.Integer(value)
        self.used_decimal = True
        return _decimal(ast.get_source_segment(self.text, node) or repr(value))

    def _Name(self, node: ast.Name) -> Any:
        sp = _sympy()
        name = node.id
        if name in self.constants:
            return self.constants[name]
        if name in self.symbols or _SYMBOL_NAME.match(name) or name in GREEK:
            return sp.Symbol(name)
        if name in self.functions:
            raise MathError(f"{name} is a function; call it like {name}(x)")
        raise MathError(
            f"the name {name!r} is not allowed; use single-letter variables (x, y, a1), Greek "
            "letter names, declared variables, or the constants pi, E, I, oo"
        )

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        operand = self.convert(node.operand)
        if isinstance(node.op, ast.USub):
            return -operand
        if isinstance(node.op, ast.UAdd):
            return operand
        raise MathError(f"the operator {_describe(node.op)} is not allowed")

    def _BinOp(self, node: ast.BinOp) -> Any:
        sp = _sympy()
        left, right = self.convert(node.left), self.convert(node.right)
        op = node.op
        if isinstance(op, ast.Add):
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if isinstance(op, ast.Mult):
            return left * right
        if isinstance(op, ast.Div):
            return left / right
        if isinstance(op, ast.FloorDiv):
            return sp.floor(left / right)
        if isinstance(op, ast.Mod):
            return sp.Mod(left, right)
        if isinstance(op, ast.Pow | ast.BitXor):
            check_power(left, right)
            return left**right
        raise MathError(f"the operator {_describe(op)} is not allowed")

    def _Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name):
            raise MathError(
                f"only calls of whitelisted functions are allowed, not {_describe(node.func)}"
            )
        name = node.func.id
        if name not in self.functions:
            raise MathError(
                f"the function {name!r} is not allowed; allowed functions: "
                + ", ".join(sorted(self.functions))
            )
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise MathError(f"{name}() takes plain positional arguments only")
        func, lo, hi = self.functions[name]
        if len(node.args) < lo or (hi is not None and len(node.args) > hi):
            count = str(lo) if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
            raise MathError(f"{name}() takes {count} arguments, got {len(node.args)}")
        args = [self.convert(a) for a in node.args]
        if name == "factorial":
            _check_factorial(args[0])
        elif name == "gamma":
            _check_factorial(args[0], offset=-1)
        elif name == "binomial":
            _check_binomial(*args)
        return func(*args)

    def _Compare(self, node: ast.Compare) -> Any:
        sp = _sympy()
        if len(node.ops) != 1:
            raise MathError("chained comparisons are not allowed; write one relation at a time")
        left, right = self.convert(node.left), self.convert(node.comparators[0])
        ops = {ast.Eq: sp.Eq, ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge}
        for kind, make in ops.items():
            if isinstance(node.ops[0], kind):
                return make(left, right, evaluate=False)
        raise MathError(f"the comparison {_describe(node.ops[0])} is not allowed")


def _describe(node: ast.AST) -> str:
    names = {
        "Attribute": "attribute access (a.b)",
        "Subscript": "subscript access (a[b])",
        "Lambda": "a lambda",
        "ListComp": "a comprehension",
        "GeneratorExp": "a comprehension",
        "SetComp": "a comprehension",
        "DictComp": "a comprehension",
        "JoinedStr": "an f-string",
        "BoolOp": "and/or",
        "IfExp": "an if-expression",
        "NamedExpr": "the := operator",
        "Starred": "a *argument",
        "Tuple": "a tuple",
        "List": "a list",
        "Dict": "a dict",
        "Set": "a set",
    }
    kind = type(node).__name__
    if kind == "Constant":
        return f"the literal {node.value!r:.40}"
    return names.get(kind, kind)


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_math(text: str, symbols: set[str] | frozenset[str] = frozenset()) -> Any:
    """Parse one expression (or relation like x < 2, or x == 2) into sympy, whitelist only.

    `^` means power, as in math; `symbols` are extra allowed variable names."""
    if not isinstance(text, str) or not text.strip():
        raise MathError("the expression is empty")
    if len(text) > MAX_INPUT_CHARS:
        raise MathError(f"the expression is longer than {MAX_INPUT_CHARS} characters")
    if "__" in text:
        raise MathError("names with double underscores are not allowed")
    source = text.strip().replace("^", "**")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        hint = (
            " (write multiplication explicitly, e.g. 2*x)"
            if re.search(r"\d[A-Za-z(]", source)
            else ""
        )
        raise MathError(f"cannot parse {_short(text)}: {e.msg}{hint}") from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise MathError(f"cannot parse {_short(text)}: {e}") from None
    return _Converter(source, set(symbols)).convert(tree)


def parse_equation(text: str, symbols: set[str] | frozenset[str] = frozenset()) -> Any:
    """`lhs = rhs` (or `==`, `<`, ...) -> a sympy relation; a bare expression means `expr = 0`."""
    sp = _sympy()
    parts = _EQUALS.split(text) if isinstance(text, str) else [text]
    if len(parts) > 2:
        raise MathError(f"{_short(text)} has more than one '='; give one equation per item")
    if len(parts) == 2:
        return sp.Eq(parse_math(parts[0], symbols), parse_math(parts[1], symbols))
    value = parse_math(parts[0], symbols)
    return value if isinstance(value, sp.core.relational.Relational) else sp.Eq(value, 0)


def _split_top_level(text: str) -> list[str]:
    """Split a string of equations on ';', newlines and commas outside parentheses."""
    parts, depth, current = [], 0, []
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch in ";\n" or (ch == "," and depth == 0):
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


# --------------------------------------------------------------------------------------------
# Operations (run inside the worker)
# --------------------------------------------------------------------------------------------


def _numeric(value: Any) -> float | None:
    """A float for real finite numbers, else None (symbols, complex numbers, infinities)."""
    try:
        if not value.is_number:
            return None
        approx = value.evalf(17)
        if not approx.is_real:
            return None
        f = float(approx)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    return f if math.isfinite(f) else None


def _text(value: Any, decimal: bool = False) -> str:
    """Exact text of a result; with decimal inputs, a terminating fraction is shown as a decimal."""
    sp = _sympy()
    if decimal and value.is_Rational and not value.is_Integer:
        q, twos, fives = int(value.q), 0, 0
        while q % 2 == 0:
            q, twos = q // 2, twos + 1
        while q % 5 == 0:
            q, fives = q // 5, fives + 1
        if q == 1:
            places = max(twos, fives)
            scaled = abs(int(value.p)) * 10**places // int(value.q)
            digits = str(scaled).rjust(places + 1, "0")
            sign = "-" if value < 0 else ""
            return f"{sign}{digits[:-places]}.{digits[-places:]}"
    try:
        return sp.sstr(value)
    except ValueError as e:  # int -> str beyond the digit limit
        raise _too_big("the result") from e


def _undefined(value: Any) -> bool:
    sp = _sympy()
    return bool(value.has(sp.zoo, sp.nan))


def _variable(name: Any) -> str:
    if not isinstance(name, str) or not _DECLARED_NAME.match(name) or "__" in name:
        raise MathError(f"{name!r} is not a valid variable name (letters, digits, _)")
    return name


def op_calculate(expression: str) -> dict:
    sp = _sympy()
    converter_symbols: set[str] = set()
    value = parse_math(expression, converter_symbols)
    decimal = bool(re.search(r"\d\.\d|\d\.(?!\w)|\.\d|\d[eE][+-]?\d", expression))
    if isinstance(value, sp.core.relational.Relational):
        raise MathError("calculate takes an expression, not an equation; use solve_equation")
    if value.free_symbols:
        names = ", ".join(sorted(str(s) for s in value.free_symbols))
        raise MathError(
            f"the expression has unknowns ({names}); calculate needs numbers only - use "
            "solve_equation, simplify_expression, differentiate or integrate"
        )
    if _undefined(value):
        raise MathError("the result is undefined (division by zero?)")
    if not value.is_Rational and len(sp.sstr(value)) < 500:
        simpler = sp.simplify(value)
        if sp.count_ops(simpler) <= sp.count_ops(value):
            value = simpler
    return {"result": _text(value, decimal), "numeric": _numeric(value)}


def op_solve(equations: str | list[str], variables: list[str] | None = None) -> dict:
    sp = _sympy()
    if isinstance(equations, str):
        items = _split_top_level(equations)
    elif isinstance(equations, list) and all(isinstance(e, str) for e in equations):
        items = equations
    else:
        raise MathError("equations must be a string or a list of strings")
    if not items:
        raise MathError("no equation given")
    if len(items) > 20:
        raise MathError("at most 20 equations at a time")
    declared = [_variable(v) for v in (variables or [])]
    rels = [parse_equation(item, set(declared)) for item in items]
    if any(r == sp.false for r in rels):  # e.g. x = x + 1
        return {"variables": declared, "solutions": [], "numeric": []}
    rels = [r for r in rels if r != sp.true]
    if not rels:
        raise MathError("the equations hold for every value; there is nothing to solve")
    unknowns = [sp.Symbol(v) for v in declared] or sorted(
        set().union(*(r.free_symbols for r in rels)), key=str
    )
    if not unknowns:
        raise MathError("the equations have no unknowns to solve for")
    if any(not isinstance(r, sp.Eq) for r in rels):
        condition = sp.reduce_inequalities(rels, unknowns)
        return {"condition": sp.sstr(condition)}
    try:
        solutions = sp.solve(rels, unknowns, dict=True)
    except NotImplementedError as e:
        raise MathError(f"sympy cannot solve this system: {e}") from None
    out, numeric = [], []
    for sol in solutions:
        if any(_undefined(v) for v in sol.values()):
            continue
        out.append({str(k): _text(v) for k, v in sol.items()})
        numeric.append({str(k): _numeric(v) for k, v in sol.items()})
    return {"variables": [str(u) for u in unknowns], "solutions": out, "numeric": numeric}


def op_simplify(expression: str) -> dict:
    sp = _sympy()
    value = parse_math(expression)
    if isinstance(value, sp.core.relational.Relational):
        raise MathError("simplify_expression takes an expression, not an equation")
    value = sp.simplify(value)
    return {"result": _text(value), "numeric": _numeric(value)}


def op_differentiate(expression: str, variable: str = "x") -> dict:
    sp = _sympy()
    var = _variable(variable)
    value = parse_math(expression, {var})
    if isinstance(value, sp.core.relational.Relational):
        raise MathError("differentiate takes an expression, not an equation")
    return {"result": _text(sp.diff(value, sp.Symbol(var)))}


def op_integrate(
    expression: str, variable: str = "x", lower: Any = None, upper: Any = None
) -> dict:
    sp = _sympy()
    var = _variable(variable)
    value = parse_math(expression, {var})
    if isinstance(value, sp.core.relational.Relational):
        raise MathError("integrate takes an expression, not an equation")
    x = sp.Symbol(var)
    if (lower is None) != (upper is None):
        raise MathError("give both lower and upper for a definite integral, or neither")
    if lower is None:
        result = sp.integrate(value, x)
        if result.has(sp.Integral):
            raise MathError(f"no closed-form antiderivative found for {_short(expression)}")
        return {"result": _text(result)}
    bounds = [parse_math(b if isinstance(b, str) else repr(b), {var}) for b in (lower, upper)]
    result = sp.integrate(value, (x, *bounds))
    if _undefined(result):
        raise MathError("the integral is undefined")
    if result.has(sp.Integral):
        numeric = _numeric(sp.Integral(value, (x, *bounds)))
        if numeric is None:
            raise MathError(f"could not evaluate the integral of {_short(expression)}")
        return {"result": _text(result), "numeric": numeric}
    return {"result": _text(result), "numeric": _numeric(result)}


OPERATIONS = {
    "calculate": op_calculate,
    "solve_equation": op_solve,
    "simplify_expression": op_simplify,
    "differentiate": op_differentiate,
    "integrate": op_integrate,
}


def _worker_main() -> None:
    """Serve JSON requests, one per line on stdin, answering one JSON line each on stdout."""
    import resource

    limit = WORKER_MEMORY_MB * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.set_int_max_str_digits(MAX_DIGITS + 50)
    sys.setrecursionlimit(4000)
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    _sympy()
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            value = OPERATIONS[request["op"]](**request["args"])
            reply = {"ok": True, "value": value}
        except MathError as e:
            reply = {"ok": False, "error": str(e)}
        except RecursionError:
            reply = {"ok": False, "error": "the expression is nested too deeply"}
        except MemoryError:
            reply = {"ok": False, "error": "the computation ran out of memory"}
        except Exception as e:  # sympy raises many kinds of errors on odd input
            reply = {"ok": False, "error": f"could not compute: {type(e).__name__}: {e}"[:2000]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# --------------------------------------------------------------------------------------------
# Host side: a small pool of worker processes
# --------------------------------------------------------------------------------------------


class _Worker:
    """One worker process; `call` kills it when the answer does not come in time."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        path = os.path.abspath(__file__)
        boot = (
            "import json, runpy, sys; sys.path[:0] = json.loads(sys.argv[1]); "
            "runpy.run_path(sys.argv[2], run_name='__tooltune_math_worker__')['_worker_main']()"
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
