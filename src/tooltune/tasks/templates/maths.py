"""Arithmetic, equations, integrals and short Python programs: the numbers are in the prompt, not
in the world. `t_two_calcs` asks for two independent calculations in one turn.
"""

from __future__ import annotations

import math

from tooltune.tasks.templates.draft import Ctx, Draft, num_check
from tooltune.tasks.templates.plan import call, op, plan, step, x_numeric


def t_calc(ctx: Ctx) -> Draft:
    r = ctx.rng
    form = r.randrange(6)
    if form == 0:
        a, b = r.randrange(12, 999), r.randrange(12, 999)
        expr, value = f"{a} * {b}", a * b
        prompt = r.choice([f"What's {a}*{b}?", f"Compute {a} times {b}.", f"What is the product of {a} and {b}?",
                           f"Multiply {a} by {b}."])  # fmt: skip
    elif form == 1:
        a, b, c = r.randrange(100, 9999), r.randrange(12, 99), r.randrange(12, 99)
        expr, value = f"{a} + {b} * {c}", a + b * c
        prompt = r.choice([f"What is {a} + {b} * {c}?", f"Calculate {a} plus {b} times {c}."])
    elif form == 2:
        c, q, extra = r.randrange(3, 40), r.randrange(10, 400), r.randrange(2, 90)
        expr, value = f"({q * c - extra} + {extra}) / {c}", q
        prompt = r.choice(
            [
                f"Evaluate ({q * c - extra} + {extra}) / {c}.",
                f"What is ({q * c - extra} + {extra}) divided by {c}?",
            ]
        )
    elif form == 3:
        pct, base = r.choice([5, 10, 12, 15, 20, 25, 35, 40, 75]), r.randrange(20, 5000) * 4
        expr, value = f"{base} * {pct} / 100", base * pct / 100
        prompt = r.choice([f"What is {pct}% of {base}?", f"Compute {pct} percent of {base}."])
    elif form == 4:
        root = r.randrange(12, 160)
        expr, value = f"sqrt({root * root})", root
        prompt = r.choice(
            [f"What is the square root of {root * root}?", f"Find sqrt({root * root})."]
        )
    else:
        a, e = r.randrange(2, 13), r.randrange(3, 9)
        expr, value = f"{a}**{e}", a**e
        prompt = r.choice([f"What is {a} to the power of {e}?", f"Compute {a}^{e}."])
    p = plan(
        "<<v>>",
        step(
            f"Evaluate {expr} with the calculator.",
            op(call("calculate", expression=expr), x_numeric(), "v"),
        ),
    )
    return Draft(prompt, ["math"], value, num_check(value, 1e-6), p, {"v": value})


def t_solve(ctx: Ctx) -> Draft:
    r = ctx.rng
    a, x = r.randrange(2, 15), r.randrange(-20, 40)
    b = r.randrange(-50, 60)
    c = a * x + b
    sign = "+" if b >= 0 else "-"
    equation = f"{a}*x {sign} {abs(b)} = {c}"
    prompt = r.choice([f"Solve {a}x {sign} {abs(b)} = {c} for x.", f"Find x if {a}x {sign} {abs(b)} = {c}.",
                       f"What value of x satisfies {a}x {sign} {abs(b)} = {c}?"])  # fmt: skip
    p = plan(
        "x = <<v>>",
        step(
            "Solve the linear equation.",
            op(call("solve_equation", equations=equation), {"kind": "solve", "var": "x"}, "v"),
        ),
    )
    return Draft(prompt, ["math"], x, num_check(x, 1e-6), p, {"v": x})


def t_integral(ctx: Ctx) -> Draft:
    r = ctx.rng
    a, b, hi = r.randrange(1, 7), r.randrange(0, 9), r.randrange(1, 6)
    expr = f"{3 * a}*x**2 + {2 * b}*x"
    value = a * hi**3 + b * hi**2
    prompt = r.choice([f"Compute the integral of {3 * a}x^2 + {2 * b}x from 0 to {hi}.",
                       f"What is the definite integral of {3 * a}x^2 + {2 * b}x over x from 0 to {hi}?"])  # fmt: skip
    p = plan(
        "<<v>>",
        step(
            "A definite integral.",
            op(
                call("integrate", expression=expr, variable="x", lower=0, upper=hi),
                x_numeric(),
                "v",
            ),
        ),
    )
    return Draft(prompt, ["math"], value, num_check(value, 1e-6), p, {"v": value})


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def t_python(ctx: Ctx) -> Draft:
    r = ctx.rng
    form = r.randrange(4)
    if form == 0:
        n = r.randrange(20, 80)
        code = f"a, b = 0, 1\nfor _ in range({n}):\n    a, b = b, a + b\nprint(a)"
        value, prompt = (
            _fib(n),
            f"Use Python to compute the {n}th Fibonacci number (F(0) = 0, F(1) = 1).",
        )
    elif form == 1:
        n = r.randrange(50, 2000)
        code = f"print(sum(i * i for i in range(1, {n} + 1)))"
        value, prompt = (
            n * (n + 1) * (2 * n + 1) // 6,
            f"Write and run Python to sum the squares of 1 to {n}.",
        )
    elif form == 2:
        n = r.randrange(100, 5000)
        code = f"n = {n}\nprint(sum(1 for k in range(2, n) if all(k % d for d in range(2, int(k ** 0.5) + 1))))"
        value = sum(1 for k in range(2, n) if all(k % d for d in range(2, math.isqrt(k) + 1)))
        prompt = f"How many prime numbers are there below {n}? Compute it with Python."
    else:
        n = r.randrange(50, 400)
        code = f"print(sum(int(d) for d in str(2 ** {n})))"
        value, prompt = (
            sum(int(d) for d in str(2**n)),
            f"Run Python to find the sum of the digits of 2^{n}.",
        )
    p = plan(
        "<<v>>",
        step("Run a short program.", op(call("run_python", code=code), {"kind": "stdout"}, "v")),
    )
    return Draft(prompt, ["python"], value, num_check(value, 1e-9), p, {"v": value})


def t_two_calcs(ctx: Ctx) -> Draft:
    r = ctx.rng
    a, b, c, d = (
        r.randrange(12, 999),
        r.randrange(12, 999),
        r.randrange(100, 9999),
        r.randrange(2, 60),
    )
    e1, v1 = f"{a} * {b}", a * b
    e2, v2 = f"{c * d} / {d}", c
    prompt = r.choice(
        [
            f"Compute {a}*{b} and {c * d}/{d}.",
            f"I need two numbers: {a} times {b}, and {c * d} divided by {d}.",
        ]
    )
    p = plan(
        f"{a} * {b} = <<a>> and {c * d} / {d} = <<b>>.",
        step("Two independent calculations: run both now.",
             op(call("calculate", expression=e1), x_numeric(), "a"), op(call("calculate", expression=e2), x_numeric(), "b")),
    )  # fmt: skip
    return Draft(prompt, ["math"], [v1, v2], {"type": "numbers", "values": [v1, v2], "rel_tol": 1e-9},
                 p, {"a": v1, "b": v2}, parallel=2)  # fmt: skip
