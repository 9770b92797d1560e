"""The math tools' operations, run in a worker process (`math_solver` starts this file).

Each operation reads its input with the whitelist parser (`math_parser`) and computes with
sympy. `serve` answers JSON requests on stdin under a memory limit, so a runaway computation
costs a worker that the host kills and restarts, never the host.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Any

from tooltune.tools.math_parser import (
    MAX_DIGITS,
    MathError,
    load_sympy,
    parse_equation,
    parse_math,
    parse_variable,
    shorten,
    split_equations,
    too_big,
)

WORKER_MEMORY_MB = 1024


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
    sp = load_sympy()
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
        raise too_big("the result") from e


def _undefined(value: Any) -> bool:
    sp = load_sympy()
    return bool(value.has(sp.zoo, sp.nan))


def op_calculate(expression: str) -> dict:
    sp = load_sympy()
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
    sp = load_sympy()
    if isinstance(equations, str):
        items = split_equations(equations)
    elif isinstance(equations, list) and all(isinstance(e, str) for e in equations):
        items = equations
    else:
        raise MathError("equations must be a string or a list of strings")
    if not items:
        raise MathError("no equation given")
    if len(items) > 20:
        raise MathError("at most 20 equations at a time")
    declared = [parse_variable(v) for v in (variables or [])]
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
    sp = load_sympy()
    value = parse_math(expression)
    if isinstance(value, sp.core.relational.Relational):
        raise MathError("simplify_expression takes an expression, not an equation")
    value = sp.simplify(value)
    return {"result": _text(value), "numeric": _numeric(value)}


def op_differentiate(expression: str, variable: str = "x") -> dict:
    sp = load_sympy()
    var = parse_variable(variable)
    value = parse_math(expression, {var})
    if isinstance(value, sp.core.relational.Relational):
        raise MathError("differentiate takes an expression, not an equation")
    return {"result": _text(sp.diff(value, sp.Symbol(var)))}


def op_integrate(
    expression: str, variable: str = "x", lower: Any = None, upper: Any = None
) -> dict:
    sp = load_sympy()
    var = parse_variable(variable)
    value = parse_math(expression, {var})
    if isinstance(value, sp.core.relational.Relational):
        raise MathError("integrate takes an expression, not an equation")
    x = sp.Symbol(var)
    if (lower is None) != (upper is None):
        raise MathError("give both lower and upper for a definite integral, or neither")
    if lower is None:
        result = sp.integrate(value, x)
        if result.has(sp.Integral):
            raise MathError(f"no closed-form antiderivative found for {shorten(expression)}")
        return {"result": _text(result)}
    bounds = [parse_math(b if isinstance(b, str) else repr(b), {var}) for b in (lower, upper)]
    result = sp.integrate(value, (x, *bounds))
    if _undefined(result):
        raise MathError("the integral is undefined")
    if result.has(sp.Integral):
        numeric = _numeric(sp.Integral(value, (x, *bounds)))
        if numeric is None:
            raise MathError(f"could not evaluate the integral of {shorten(expression)}")
        return {"result": _text(result), "numeric": numeric}
    return {"result": _text(result), "numeric": _numeric(result)}


OPERATIONS = {
    "calculate": op_calculate,
    "solve_equation": op_solve,
    "simplify_expression": op_simplify,
    "differentiate": op_differentiate,
    "integrate": op_integrate,
}


def serve() -> None:
    """Serve JSON requests, one per line on stdin, answering one JSON line each on stdout."""
    import resource

    limit = WORKER_MEMORY_MB * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.set_int_max_str_digits(MAX_DIGITS + 50)
    sys.setrecursionlimit(4000)
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    load_sympy()
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
