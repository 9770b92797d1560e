"""The whitelist parser of the math tools: model text to sympy, and nothing else.

Model text never reaches `eval`, `exec`, `sympify` or `parse_expr`: `parse_math` reads it with
`ast.parse(..., mode="eval")` and converts the tree node by node, accepting only numbers, a short
list of names, whitelisted functions and arithmetic operators. Powers, factorials and binomials
whose result would have more than `MAX_DIGITS` digits are refused before they are computed.
sympy is imported on first use, inside the worker process (`math_worker`).
"""

from __future__ import annotations

import ast
import math
import re
from fractions import Fraction
from typing import Any

MAX_DIGITS = 100_000
MAX_INPUT_CHARS = 10_000
MAX_SYMBOLIC_EXPONENT = 100_000


class MathError(ValueError):
    """Input that is not allowed or cannot be computed; the text is for the model."""


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


def load_sympy():
    """sympy, imported on first use: only the worker process needs it."""
    import sympy

    return sympy


def _constants() -> dict[str, Any]:
    sp = load_sympy()
    return {"pi": sp.pi, "E": sp.E, "e": sp.E, "I": sp.I, "oo": sp.oo, "inf": sp.oo}


def _functions() -> dict[str, tuple[Any, int, int | None]]:
    """name -> (sympy callable, minimum arguments, maximum arguments or None for any)."""
    sp = load_sympy()
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


def too_big(what: str) -> MathError:
    """The refusal of a result with more than MAX_DIGITS digits."""
    return MathError(f"{what} would have more than {MAX_DIGITS} digits; refusing to compute it")


def _log10_size(n: Any) -> float:
    """Decimal digits of the larger of the numerator and denominator of a sympy Rational."""
    return max(math.log10(abs(int(n.p))), math.log10(int(n.q)))


def check_power(base: Any, exponent: Any) -> None:
    """Refuse base**exponent when sympy would build an astronomically large exact number."""
    sp = load_sympy()
    if not (base.is_number and exponent.is_number and exponent.is_Rational):
        return  # symbolic, or a float exponent (fixed precision): nothing huge is computed
    if base.is_Float or base in (sp.S.Zero, sp.S.One, sp.S.NegativeOne):
        return
    size = abs(exponent)
    if size <= 64:
        return
    if size > 10**12:
        raise too_big("the power")
    if base.is_Rational:
        if float(size) * _log10_size(base) > MAX_DIGITS:
            raise too_big("the power")
    elif size > MAX_SYMBOLIC_EXPONENT:
        raise too_big("the power")


def _check_factorial(n: Any, offset: int = 0) -> None:
    if n.is_Integer and int(n) + offset > 0:
        m = int(n) + offset
        if m > 10**7 or math.lgamma(m + 1) / math.log(10) > MAX_DIGITS:
            raise too_big(f"factorial({m})")


def _check_binomial(n: Any, k: Any) -> None:
    if n.is_Integer and k.is_Integer and 0 <= int(k) <= int(n):
        n, k = int(n), int(k)
        if n > 10**12:
            raise too_big("the binomial coefficient")
        digits = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(10)
        if digits > MAX_DIGITS:
            raise too_big("the binomial coefficient")


def _decimal(text: str) -> Any:
    """A decimal literal as an exact sympy Rational, refusing absurd exponents like 1e999999999."""
    sp = load_sympy()
    match = _DECIMAL.match(text.replace("_", ""))
    if not match:
        raise MathError(f"cannot read the number {text!r}")
    whole, frac, exp = match.group(1) or "", match.group(2) or "", int(match.group(3) or 0)
    if abs(exp) > MAX_DIGITS:
        raise too_big(f"the number {text}")
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
        sp = load_sympy()
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
        sp = load_sympy()
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
        sp = load_sympy()
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
        sp = load_sympy()
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


def shorten(text: str, limit: int = 60) -> str:
    """The repr of ``text`` cut to about ``limit`` characters, for error messages."""
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
        raise MathError(f"cannot parse {shorten(text)}: {e.msg}{hint}") from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise MathError(f"cannot parse {shorten(text)}: {e}") from None
    return _Converter(source, set(symbols)).convert(tree)


def parse_equation(text: str, symbols: set[str] | frozenset[str] = frozenset()) -> Any:
    """`lhs = rhs` (or `==`, `<`, ...) -> a sympy relation; a bare expression means `expr = 0`."""
    sp = load_sympy()
    parts = _EQUALS.split(text) if isinstance(text, str) else [text]
    if len(parts) > 2:
        raise MathError(f"{shorten(text)} has more than one '='; give one equation per item")
    if len(parts) == 2:
        return sp.Eq(parse_math(parts[0], symbols), parse_math(parts[1], symbols))
    value = parse_math(parts[0], symbols)
    return value if isinstance(value, sp.core.relational.Relational) else sp.Eq(value, 0)


def split_equations(text: str) -> list[str]:
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


def parse_variable(name: Any) -> str:
    """A declared variable name, checked (letters, digits and _, no dunder)."""
    if not isinstance(name, str) or not _DECLARED_NAME.match(name) or "__" in name:
        raise MathError(f"{name!r} is not a valid variable name (letters, digits, _)")
    return name
