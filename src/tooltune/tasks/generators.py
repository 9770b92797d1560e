"""Task templates of the four tool tiers over the built-in world (the no-tool tier's, which
need no plan, are in tooltune.tasks.abstention).

Every template draws entities from one split's pool, words the prompt in one of several ways,
and returns a `Draft`: the prompt, the tool families offered, the verified answer and its check
spec, and a *plan*. The plan is the expert's recipe written as data: turns of tool calls whose
arguments may name values read from earlier results (`<<ceo>>`), each with an extraction rule
that says how to read the value from the tool's result, plus a few multi-turn macros for the
planted failures (a sold-out flight, a moved file, a query written for an old schema). The
expert (tooltune.tasks.expert) executes plans through the real tools; `minimal_calls` is the
same plan filled in with the world's ground truth.
"""

from __future__ import annotations

import difflib
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from tooltune.config import TaskTier
from tooltune.tasks.world_atlas import LETTER_LINK, atlas_route
from tooltune.tasks.world_data import World
from tooltune.tasks.world_names import slug

ATLAS_START = "/index.html"
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]  # fmt: skip


@dataclass
class Draft:
    """What a template produces; `splits.sample_tasks` turns it into a `Task`."""

    prompt: str
    families: list[str]
    answer: Any
    check: dict
    plan: dict  # {"steps": [...], "answer": "template"}
    truth: dict  # values the plan reads, as the world says they are (for minimal_calls)
    parallel: int = 0  # independent calls the task expects in one turn (MULTI_TOOL_PAR)
    # Calls of the minimal solution that fail on purpose (a sold-out flight, a moved file, an
    # old-schema query), as {"name", "arguments"} with only the arguments that identify them.
    planted: list[dict] = field(default_factory=list)


@dataclass
class Template:
    id: str
    tier: TaskTier
    make: Callable[[Ctx], Draft]
    heldout: bool = False  # only in the test split (templates never seen in training)
    heldout_tools: bool = False  # only in the heldout_tools split


@dataclass
class Ctx:
    """The world, the random source of one task and the entity pool of its split."""

    world: World
    rng: random.Random
    pool: str

    def choice(self, seq: list) -> Any:
        return self.rng.choice(seq)

    def _pool(self, kind: str) -> list[dict]:
        items = self.world.in_pool(kind, self.pool)
        if not items:
            raise LookupError(f"no {kind} in the {self.pool} pool")
        return items

    def company(self) -> dict:
        return self.choice(self._pool("companies"))

    def companies(self, n: int) -> list[dict]:
        return self.rng.sample(self._pool("companies"), n)

    def place(self) -> dict:
        return self.choice(self._pool("places"))

    def places(self, n: int) -> list[dict]:
        return self.rng.sample(self._pool("places"), n)

    def person(self) -> dict:
        return self.choice(self._pool("people"))

    def people(self, n: int) -> list[dict]:
        return self.rng.sample(self._pool("people"), n)

    def item(self, kind: str) -> dict:
        return self.choice(self._pool(kind))


# --------------------------------------------------------------------------------------------
# Plan building blocks
# --------------------------------------------------------------------------------------------


def call(name: str, **arguments: Any) -> dict:
    return {"name": name, "arguments": arguments}


def op(c: dict, extract: dict, name: str) -> dict:
    """One call of a turn: run `c`, read a value with `extract`, remember it as `name`."""
    return {"call": c, "extract": extract, "as": name}


def step(think: str, *ops: dict) -> dict:
    return {"think": think, "calls": list(ops)}


def plan(answer: str, *steps: dict) -> dict:
    return {"steps": list(steps), "answer": answer}


def fmt_value(value: Any) -> str:
    """How values read from tools are written into calls and answers."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return fmt_value(int(value))
        if abs(value) < 1:
            return f"{value:.6g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def plain_number(value: Any) -> str:
    """A number as it goes into an expression: no thousands separators."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


# Extraction rules (what the expert does with a result) --------------------------------------


def x_sql(column: str | None = None) -> dict:
    return {"kind": "sql", "column": column}


def x_search(title: str, fieldname: str) -> dict:
    return {"kind": "search", "title": title, "field": fieldname}


def x_field(fieldname: str) -> dict:
    return {"kind": "field", "field": fieldname}


def x_numeric() -> dict:
    return {"kind": "numeric"}


def x_csv(key_col: str, key: str, col: str) -> dict:
    return {"kind": "csv", "key_col": key_col, "key": key, "col": col}


def x_shapes(color: str | None = None, kind: str | None = None) -> dict:
    return {"kind": "shapes", "color": color, "shape": kind}


def x_link(text: str) -> dict:
    return {"kind": "link", "text": text}


def x_key(key: str) -> dict:
    return {"kind": "key", "key": key}


# Prompt helpers ------------------------------------------------------------------------------


def money(musd: float) -> str:
    return f"${fmt_value(musd)} million"


def sql_lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def num_check(value: float, rel_tol: float = 1e-3, abs_tol: float = 0.0) -> dict:
    return {"type": "number", "value": value, "rel_tol": rel_tol, "abs_tol": abs_tol}


def text_check(value: str) -> dict:
    return {"type": "text", "value": value}


def long_date(d: date) -> str:
    return f"{WEEKDAYS[d.weekday()]}, {d.day} {MONTHS[d.month - 1]} {d.year}"


def date_phrase(rng: random.Random, today: date, target: date) -> str:
    """A way to say `target` relative to `today` that resolves to exactly that date."""
    offset = (target - today).days
    options = [f"on {target.day} {MONTHS[target.month - 1]}", f"on {target.isoformat()}",
               f"on {MONTHS[target.month - 1]} {target.day}"]  # fmt: skip
    if offset >= 2:
        options.append(f"in {offset} days")
    if offset == 1:
        options += ["tomorrow", "tomorrow"]
    if offset == 2:
        options.append("the day after tomorrow")
    if 1 <= offset <= 7:
        options += [
            f"next {WEEKDAYS[target.weekday()]}",
            f"this coming {WEEKDAYS[target.weekday()]}",
        ]
    next_monday = today + timedelta(days=7 - today.weekday())
    weeks = (target - next_monday).days // 7
    if weeks == 0:
        options.append(f"on {WEEKDAYS[target.weekday()]} next week")
    elif weeks == 1:
        options.append(f"on {WEEKDAYS[target.weekday()]} of the week after next")
    return rng.choice(options)


def resolve_date_phrase(phrase: str, today: date) -> date:
    """Inverse of `date_phrase` (used by tests and by the expert's plan explanation)."""
    if phrase == "tomorrow":
        return today + timedelta(days=1)
    if phrase == "the day after tomorrow":
        return today + timedelta(days=2)
    if m := re.fullmatch(r"in (\d+) days", phrase):
        return today + timedelta(days=int(m.group(1)))
    if m := re.fullmatch(r"on (\d{4}-\d{2}-\d{2})", phrase):
        return date.fromisoformat(m.group(1))
    if m := re.fullmatch(r"on (\d+) (\w+)|on (\w+) (\d+)", phrase):
        day = int(m.group(1) or m.group(4))
        month = MONTHS.index(m.group(2) or m.group(3)) + 1
        d = date(today.year, month, day)
        return d if d > today else date(today.year + 1, month, day)
    if m := re.fullmatch(r"(?:next|this coming) (\w+)", phrase):
        wd = WEEKDAYS.index(m.group(1))
        return today + timedelta(days=(wd - today.weekday() - 1) % 7 + 1)
    if m := re.fullmatch(r"on (\w+) next week", phrase):
        monday = today + timedelta(days=7 - today.weekday())
        return monday + timedelta(days=WEEKDAYS.index(m.group(1)))
    if m := re.fullmatch(r"on (\w+) of the week after next", phrase):
        monday = today + timedelta(days=14 - today.weekday())
        return monday + timedelta(days=WEEKDAYS.index(m.group(1)))
    raise ValueError(f"cannot resolve date phrase {phrase!r}")


# --------------------------------------------------------------------------------------------
# Fact lookups: the same fact through search, the database or the held-out registry tools
# --------------------------------------------------------------------------------------------

# fact -> (entity kind, article field, table, column, world key, registry key)
FACTS: dict[str, tuple[str, str, str, str, str, str]] = {
    "ceo": ("company", "Chief executive", "companies", "ceo", "ceo", "chief_executive"),
    "hq": ("company", "Headquarters", "companies", "hq_city", "hq", "headquarters"),
    "revenue": (
        "company",
        "Revenue",
        "companies",
        "revenue_musd",
        "revenue_musd",
        "annual_revenue_musd",
    ),
    "company_founded": ("company", "Founded", "companies", "founded", "founded", "founded"),
    "employees": ("company", "Employees", "companies", "employees", "employees", "employees"),
    "net_worth": ("person", "Net worth", "people", "net_worth_musd", "net_worth_musd", ""),
    "age": ("person", "Age", "people", "age", "age", ""),
    "city": ("person", "Home city", "people", "city", "city", ""),
    "population": ("place", "Population", "places", "population", "population", "population"),
    "area": ("place", "Area", "places", "area_km2", "area_km2", "area_km2"),
    "place_founded": ("place", "Founded", "places", "founded", "founded", "founded"),
}
SEARCH_WORDS = {
    "ceo": "chief executive", "hq": "headquarters", "revenue": "revenue",
    "company_founded": "founded", "employees": "employees", "net_worth": "net worth",
    "age": "age", "city": "home city", "population": "population", "area": "area",
    "place_founded": "founded",
}  # fmt: skip
NUMERIC_FACTS = {"revenue", "company_founded", "employees", "net_worth", "age", "population",
                 "area", "place_founded"}  # fmt: skip


def truth_of(world: World, fact: str, name: str) -> Any:
    kind, _, _, _, key, _ = FACTS[fact]
    row = {"company": world.company, "person": world.person, "place": world.place}[kind](name)
    return row[key]


def lookup_op(source: str, fact: str, name: str, var: str) -> dict:
    """One call reading `fact` about the entity `name` (a literal or a `<<slot>>`)."""
    kind, article_field, table, column, _, reg_key = FACTS[fact]
    if source == "search":
        return op(
            call("search", query=f"{name} {SEARCH_WORDS[fact]}", top_k=1),
            x_search(name, article_field),
            var,
        )
    if source == "database":
        query = f"SELECT {column} FROM {table} WHERE name = '{name}'"
        return op(call("sql_query", query=query), x_sql(column), var)
    if source == "registry":
        if kind == "company":
            return op(call("corp_registry", company=name), x_key(reg_key), var)
        if kind == "place":
            return op(call("geo_lookup", place=name, attribute=reg_key), x_key("value"), var)
    raise ValueError(f"no {source} lookup for {fact}")


def source_hint(rng: random.Random, source: str) -> str:
    hints = {
        "search": ["", " Search the knowledge base.", " Look it up in the documents.", ""],
        "database": ["", " Use the company database.", " Check the SQL database.", ""],
        "registry": ["", " Use the registry tools.", ""],
    }
    return rng.choice(hints[source])


def families_for(source: str) -> list[str]:
    return {"search": ["search"], "database": ["database"], "registry": ["registry"]}[source]


# --------------------------------------------------------------------------------------------
# SIMPLE: one call
# --------------------------------------------------------------------------------------------

FACT_QUESTIONS: dict[str, list[str]] = {
    "ceo": ["Who is the chief executive of {n}?", "Who runs {n}?", "Who is the CEO of {n}?",
            "Name the person who leads {n} as chief executive."],
    "hq": ["In which city is {n} headquartered?", "Where are {n}'s headquarters?",
           "Which city is home to the headquarters of {n}?"],
    "revenue": ["What is the annual revenue of {n}, in million USD?",
                "How much revenue (in millions of dollars) does {n} make?",
                "Report {n}'s revenue in million USD."],
    "company_founded": ["In what year was {n} founded?", "When was the company {n} founded?"],
    "employees": ["How many employees does {n} have?", "What is the headcount of {n}?"],
    "net_worth": ["What is the net worth of {n}, in million USD?", "How rich is {n}? Give the net worth in millions of dollars.",
                  "What is {n}'s net worth (million USD)?"],
    "age": ["How old is {n}?", "What is the age of {n}?"],
    "city": ["Which city does {n} live in?", "Where does {n} live?"],
    "population": ["What is the population of {n}?", "How many people live in {n}?",
                   "Give the number of inhabitants of {n}."],
    "area": ["What is the area of {n} in square kilometres?", "How large is {n} in km2?"],
    "place_founded": ["In what year was the city of {n} founded?", "When was {n} founded as a city?"],
}  # fmt: skip


def fact_check(fact: str, value: Any) -> dict:
    if fact in NUMERIC_FACTS:
        return num_check(value, rel_tol=1e-4, abs_tol=0.05 if isinstance(value, float) else 0.0)
    return text_check(value)


def _entity_for(ctx: Ctx, fact: str) -> str:
    kind = FACTS[fact][0]
    return {"company": ctx.company, "person": ctx.person, "place": ctx.place}[kind]()["name"]


def make_fact(facts: list[str], source: str) -> Callable[[Ctx], Draft]:
    def make(ctx: Ctx) -> Draft:
        fact = ctx.choice(facts)
        name = _entity_for(ctx, fact)
        value = truth_of(ctx.world, fact, name)
        prompt = ctx.choice(FACT_QUESTIONS[fact]).format(n=name) + source_hint(ctx.rng, source)
        what = SEARCH_WORDS[fact]
        p = plan(
            f"The {what} of {name} is <<v>>.",
            step(f"One lookup: the {what} of {name}.", lookup_op(source, fact, name, "v")),
        )
        return Draft(prompt, families_for(source), value, fact_check(fact, value), p, {"v": value})

    return make


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


def t_stock_file(ctx: Ctx) -> Draft:
    inv = ctx.item("inventories")
    item = ctx.choice(inv["items"])
    prompt = ctx.choice([
        f"According to {inv['path']}, how many units of {item['product']} are in stock?",
        f"How many {item['product']} units does the {inv['warehouse']} warehouse hold? The stock list is {inv['path']}.",
        f"Check {inv['path']} and tell me the stock of {item['product']}.",
    ])  # fmt: skip
    p = plan(
        f"The {inv['warehouse']} warehouse has <<v>> units of {item['product']}.",
        step(
            f"Read {inv['path']}.",
            op(
                call("read_file", path=inv["path"]), x_csv("product", item["product"], "stock"), "v"
            ),
        ),
    )
    return Draft(
        prompt, ["files"], item["stock"], num_check(item["stock"], 1e-9), p, {"v": item["stock"]}
    )


def t_quarter_file(ctx: Ctx) -> Draft:
    rep = ctx.item("sales_reports")
    q = ctx.choice(list(rep["quarters"]))
    value = rep["quarters"][q]
    prompt = ctx.choice(
        [
            f"What were {rep['company']}'s {q} sales in million USD? See {rep['path']}.",
            f"Open {rep['path']} and report the {q} sales figure.",
        ]
    )
    p = plan(
        f"{rep['company']} sold <<v>> million USD in {q}.",
        step(
            f"Read {rep['path']}.",
            op(call("read_file", path=rep["path"]), x_csv("quarter", q, "sales_musd"), "v"),
        ),
    )
    return Draft(prompt, ["files"], value, num_check(value, 1e-4, 0.05), p, {"v": value})


def t_budget_file(ctx: Ctx) -> Draft:
    budgets = [b for b in ctx.world.budgets if b["pool"] == ctx.pool and not b["moved_from"]]
    b = ctx.choice(budgets)
    prompt = ctx.choice(
        [
            f"What is the approved budget in {b['path']}?",
            f"Read {b['path']} and tell me the {b['department']} budget of {b['company']} in dollars.",
        ]
    )
    p = plan(
        f"The approved {b['department']} budget of {b['company']} is $<<v>>.",
        step(
            f"Read {b['path']}.",
            op(call("read_file", path=b["path"]), x_field("Approved budget"), "v"),
        ),
    )
    return Draft(
        prompt, ["files"], b["amount"], num_check(b["amount"], 1e-9), p, {"v": b["amount"]}
    )


def _shape_question(ctx: Ctx, img: dict) -> tuple[str, str | None, str | None, int]:
    mode = ctx.rng.randrange(3)
    shapes = img["shapes"]
    if mode == 0:
        return "shapes", None, None, len(shapes)
    if mode == 1:
        color = ctx.choice([s["color"] for s in shapes] + ["red", "blue"])
        return f"{color} shapes", color, None, sum(s["color"] == color for s in shapes)
    kind = ctx.choice(["circle", "square", "triangle"])
    return f"{kind}s", None, kind, sum(s["kind"] == kind for s in shapes)


def t_shape_count(ctx: Ctx) -> Draft:
    img = ctx.item("images")
    what, color, kind, value = _shape_question(ctx, img)
    prompt = ctx.choice([f"How many {what} are in {img['path']}?", f"Count the {what} in the image {img['path']}.",
                         f"Look at {img['path']}: how many {what} does it show?"])  # fmt: skip
    p = plan(
        f"{img['path']} shows <<v>> {what}.",
        step(
            f"Detect the shapes in {img['path']}.",
            op(call("detect_shapes", path=img["path"]), x_shapes(color, kind), "v"),
        ),
    )
    return Draft(prompt, ["images"], value, num_check(value, 1e-9), p, {"v": value})


def t_product_price(ctx: Ctx) -> Draft:
    prod = ctx.item("products")
    prompt = ctx.choice([f"What does the {prod['name']} cost?", f"What is the price of product {prod['name']}?",
                         f"Look up the price of the {prod['name']} in the product table."])  # fmt: skip
    query = f"SELECT price FROM products WHERE name = {sql_lit(prod['name'])}"
    p = plan(
        f"The {prod['name']} costs $<<v>>.",
        step("Query the products table.", op(call("sql_query", query=query), x_sql("price"), "v")),
    )
    return Draft(
        prompt, ["database"], prod["price"], num_check(prod["price"], 1e-6), p, {"v": prod["price"]}
    )


def t_order_quantity(ctx: Ctx) -> Draft:
    order = ctx.item("orders")
    prompt = ctx.choice(
        [
            f"How many units were ordered in order {order['id']}?",
            f"What quantity does order {order['id']} have?",
        ]
    )
    query = f"SELECT quantity FROM orders WHERE id = '{order['id']}'"
    p = plan(
        f"Order {order['id']} is for <<v>> units.",
        step("Query the orders table.", op(call("sql_query", query=query), x_sql("quantity"), "v")),
    )
    return Draft(
        prompt,
        ["database"],
        order["quantity"],
        num_check(order["quantity"], 1e-9),
        p,
        {"v": order["quantity"]},
    )


# --------------------------------------------------------------------------------------------
# MULTI_TOOL_SEQ: the result of one call feeds the next
# --------------------------------------------------------------------------------------------


def make_chain(
    first: str, second: str, phrasings: list[str], source: str
) -> Callable[[Ctx], Draft]:
    """Look up `first` (a person or place name) about an entity, then `second` about that."""

    def make(ctx: Ctx) -> Draft:
        name = _entity_for(ctx, first)
        mid = truth_of(ctx.world, first, name)
        value = truth_of(ctx.world, second, mid)
        w1, w2 = SEARCH_WORDS[first], SEARCH_WORDS[second]
        prompt = ctx.choice(phrasings).format(n=name) + source_hint(ctx.rng, source)
        p = plan(
            f"The {w1} of {name} is <<mid>>, whose {w2} is <<v>>.",
            step(
                f"First find the {w1} of {name}; then the {w2} of that answer.",
                lookup_op(source, first, name, "mid"),
            ),
            step(
                f"The {w1} is <<mid>>. Now the {w2} of <<mid>>.",
                lookup_op(source, second, "<<mid>>", "v"),
            ),
        )
        return Draft(
            prompt,
            families_for(source),
            value,
            fact_check(second, value),
            p,
            {"mid": mid, "v": value},
        )

    return make


CHAINS = {
    ("ceo", "net_worth"): ["Find the CEO of {n}, then their net worth in million USD.",
                           "Who runs {n}, and what is that person's net worth (million USD)?",
                           "What is the net worth of {n}'s chief executive, in millions of dollars?"],
    ("ceo", "age"): ["How old is the chief executive of {n}?", "Who leads {n}, and how old are they?"],
    ("hq", "population"): ["Which city is {n} headquartered in, and what is its population?",
                           "How many people live in the city where {n} has its headquarters?"],
    ("hq", "area"): ["What is the area in km2 of the city that hosts {n}'s headquarters?"],
    ("ceo", "city"): ["In which city does the chief executive of {n} live?"],
    ("city", "population"): ["What is the population of the city where {n} lives?"],
}  # fmt: skip


def t_density(ctx: Ctx) -> Draft:
    place = ctx.place()
    value = place["population"] / place["area_km2"]
    source = ctx.choice(["database", "search"])
    prompt = ctx.choice([f"What is the population density of {place['name']} (people per km2)?",
                         f"How many inhabitants per square kilometre does {place['name']} have?"])  # fmt: skip
    if source == "database":  # one query reads both columns
        q = f"SELECT population, area_km2 FROM places WHERE name = '{place['name']}'"
        lookup = {
            **op(call("sql_query", query=q), x_sql("population"), "pop"),
            "also": {"area": x_sql("area_km2")},
        }
    else:  # the article's snippet shows both facts
        lookup = {
            **lookup_op(source, "population", place["name"], "pop"),
            "also": {"area": x_search(place["name"], "Area")},
        }
    first = step(f"Get the population and area of {place['name']}, then divide.", lookup)
    p = plan(
        f"{place['name']} has about <<d>> people per km2.",
        first,
        step(
            "Population <<pop>>, area <<area>> km2.",
            op(call("calculate", expression="<<pop:num>> / <<area:num>>"), x_numeric(), "d"),
        ),
    )
    truth = {"pop": place["population"], "area": place["area_km2"], "d": value}
    return Draft(prompt, [source, "math"], value, num_check(value, 1e-3), p, truth)


def t_order_total(ctx: Ctx) -> Draft:
    order = ctx.item("orders")
    prod = ctx.world.product(order["product_id"])
    value = round(order["quantity"] * prod["price"], 2)
    prompt = ctx.choice([f"What is the total value of order {order['id']} (quantity times unit price)?",
                         f"How much is order {order['id']} worth in dollars, given its quantity and the product's price?"])  # fmt: skip
    p = plan(
        f"Order {order['id']}: <<qty>> x $<<price>> = $<<total>>.",
        step(f"Read order {order['id']}.", {**op(call("sql_query", query=f"SELECT product_id, quantity FROM orders WHERE id = '{order['id']}'"),
                                                x_sql("quantity"), "qty"), "also": {"pid": x_sql("product_id")}}),
        step("Now the unit price of <<pid>>.", op(call("sql_query", query="SELECT price FROM products WHERE id = '<<pid>>'"), x_sql("price"), "price")),
        step("Multiply quantity by price.", op(call("calculate", expression="<<qty:num>> * <<price:num>>"), x_numeric(), "total")),
    )  # fmt: skip
    truth = {"qty": order["quantity"], "pid": prod["id"], "price": prod["price"], "total": value}
    return Draft(prompt, ["database", "math"], value, num_check(value, 1e-4, 0.01), p, truth)


def t_quarter_sum(ctx: Ctx) -> Draft:
    rep = ctx.item("sales_reports")
    total = round(sum(rep["quarters"].values()), 1)
    prompt = ctx.choice([f"Add up the four quarters in {rep['path']}: what were {rep['company']}'s total sales (million USD)?",
                         f"Using {rep['path']}, compute {rep['company']}'s sales for the whole year."])  # fmt: skip
    p = plan(
        f"{rep['company']} sold <<total>> million USD over the year.",
        {
            **step(
                f"Read {rep['path']}, then sum the quarters.",
                op(
                    call("read_file", path=rep["path"]),
                    {"kind": "csv_column", "col": "sales_musd"},
                    "qs",
                ),
            )
        },
        step(
            "Sum the quarterly figures.",
            op(call("calculate", expression="<<qs:sum>>"), x_numeric(), "total"),
        ),
    )
    truth = {"qs": list(rep["quarters"].values()), "total": total}
    return Draft(prompt, ["files", "math"], total, num_check(total, 1e-4, 0.05), p, truth)


def initial_of(name: str) -> str:
    """The first letter of a literal name, or the `<<slot:initial>>` of a slot."""
    slot = re.fullmatch(r"<<(\w+)>>", name)
    return f"<<{slot.group(1)}:initial>>" if slot else name[:1].upper()


def _atlas_steps(place: str, fieldname: str, var: str) -> list[dict]:
    """Front page, then the page of cities with the place's initial, then the place's page."""
    letters = LETTER_LINK.format(letter=initial_of(place))
    return [
        step(f"Open the atlas, go to the cities starting with {initial_of(place)}, then to {place}.",
             op(call("browser_open", url=ATLAS_START), x_link(letters), "l1")),
        step(f"Follow '{letters}'.", op(call("browser_click", link="<<l1:raw>>"), x_link(place), "l2")),
        step(f"Open the page of {place}.", op(call("browser_click", link="<<l2:raw>>"), {"kind": "page_field", "field": fieldname}, var)),
    ]  # fmt: skip


def _atlas_truth(world: World, place: str) -> dict:
    l1, l2 = atlas_route(world, place)
    return {"l1": l1, "l2": l2}


def t_atlas_fact(ctx: Ctx) -> Draft:
    place = ctx.place()
    fieldname = ctx.choice(["Mayor", "Elevation", "Landmark"])
    value = {
        "Mayor": place["mayor"],
        "Elevation": place["elevation_m"],
        "Landmark": place["landmark"],
    }[fieldname]
    q = {
        "Mayor": [f"Who is the mayor of {place['name']}?", f"Find the mayor of {place['name']}."],
        "Elevation": [f"What is the elevation of {place['name']} in metres?", f"How high above sea level is {place['name']}?"],
        "Landmark": [f"What is the best-known landmark of {place['name']}?", f"Name the landmark the atlas lists for {place['name']}."],
    }[fieldname]  # fmt: skip
    prompt = ctx.choice(q) + ctx.choice([f" Use the Regional Atlas website (start at {ATLAS_START}).",
                                         f" The Regional Atlas site at {ATLAS_START} has it."])  # fmt: skip
    p = plan(
        f"The atlas gives {fieldname.lower()} of {place['name']}: <<v>>.",
        *_atlas_steps(place["name"], fieldname, "v"),
    )
    check = num_check(value, 1e-9) if fieldname == "Elevation" else text_check(value)
    truth = {**_atlas_truth(ctx.world, place["name"]), "v": value}
    return Draft(prompt, ["browser"], value, check, p, truth)


def t_stock_value(ctx: Ctx) -> Draft:
    inv = ctx.item("inventories")
    item = ctx.choice(inv["items"])
    prod = ctx.world.product(item["product_id"])
    value = round(item["stock"] * prod["price"], 2)
    prompt = ctx.choice([f"What is the {inv['warehouse']} warehouse's stock of {item['product']} worth? The counts are in {inv['path']} and prices in the database.",
                         f"Value the {item['product']} stock listed in {inv['path']} at the database price."])  # fmt: skip
    p = plan(
        "<<stock>> units at $<<price>> each: $<<total>>.",
        step(f"Read the stock from {inv['path']}, then the price, then multiply.", op(call("read_file", path=inv["path"]), x_csv("product", item["product"], "stock"), "stock")),
        step("Now the unit price.", op(call("sql_query", query=f"SELECT price FROM products WHERE name = {sql_lit(item['product'])}"), x_sql("price"), "price")),
        step("Multiply.", op(call("calculate", expression="<<stock:num>> * <<price:num>>"), x_numeric(), "total")),
    )  # fmt: skip
    truth = {"stock": item["stock"], "price": prod["price"], "total": value}
    return Draft(
        prompt, ["files", "database", "math"], value, num_check(value, 1e-4, 0.01), p, truth
    )


def t_company_age(ctx: Ctx) -> Draft:
    company = ctx.company()
    year = ctx.world.today.year
    value = year - company["founded"]
    source = ctx.choice(["search", "database"])
    prompt = ctx.choice([f"How many years ago was {company['name']} founded (counting from {year})?",
                         f"It is {year}. How old is the company {company['name']} in years?"])  # fmt: skip
    p = plan(
        f"{company['name']} was founded in <<f>>, <<age>> years before {year}.",
        step(
            f"Find the founding year, then subtract it from {year}.",
            lookup_op(source, "company_founded", company["name"], "f"),
        ),
        step(
            "Subtract.", op(call("calculate", expression=f"{year} - <<f:num>>"), x_numeric(), "age")
        ),
    )
    return Draft(
        prompt,
        [source, "math"],
        value,
        num_check(value, 1e-9),
        p,
        {"f": company["founded"], "age": value},
    )


# --------------------------------------------------------------------------------------------
# MULTI_TOOL_PAR: independent calls in one turn
# --------------------------------------------------------------------------------------------


def t_compare(ctx: Ctx) -> Draft:
    fact = ctx.choice(["population", "area", "revenue", "net_worth", "employees"])
    kind = FACTS[fact][0]
    source = ctx.choice(["search", "database"])
    n = 3 if ctx.rng.random() < 0.3 else 2
    pick = {"company": ctx.companies, "person": ctx.people, "place": ctx.places}[kind]
    names = [e["name"] for e in pick(n)]
    values = [truth_of(ctx.world, fact, nm) for nm in names]
    best = names[values.index(max(values))]
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    if len(set(values)) < n:
        raise LookupError("tie")
    most = n > 2
    word = {"population": "largest population" if most else "larger population",
            "area": "largest area" if most else "larger area",
            "revenue": "highest revenue" if most else "higher revenue",
            "net_worth": "highest net worth" if most else "higher net worth",
            "employees": "most employees" if most else "more employees"}[fact]  # fmt: skip
    prompt = ctx.choice([f"Which has the {word}: {listed}? Answer with the name only.",
                         f"Compare {listed}: which one has the {word}? Reply with just the name.",
                         f"Of {listed}, which has the {word}? Give only the name."])  # fmt: skip
    ops = [lookup_op(source, fact, nm, f"v{i}") for i, nm in enumerate(names)]
    p = plan("<<argmax>>", step(f"Look up the {SEARCH_WORDS[fact]} of each, all at once.", *ops))
    p["reduce"] = {"kind": "argmax", "names": names, "vars": [f"v{i}" for i in range(n)], "as": "argmax",
                   "what": SEARCH_WORDS[fact]}  # fmt: skip
    truth = {f"v{i}": v for i, v in enumerate(values)}
    check = {"type": "choice", "value": best, "options": names}
    return Draft(prompt, [source], best, check, p, truth, parallel=n)


def t_older(ctx: Ctx) -> Draft:
    kind = ctx.choice(["company", "place"])
    fact = "company_founded" if kind == "company" else "place_founded"
    source = ctx.choice(["search", "database"])
    ents = ctx.companies(2) if kind == "company" else ctx.places(2)
    names = [e["name"] for e in ents]
    if ents[0]["founded"] == ents[1]["founded"]:
        raise LookupError("tie")
    values = [e["founded"] for e in ents]
    oldest = names[values.index(min(values))]
    prompt = ctx.choice([f"Which was founded first, {names[0]} or {names[1]}? Answer with the name only.",
                         f"Is {names[0]} or {names[1]} older? Reply with just the name."])  # fmt: skip
    p = plan(
        "<<argmin>>",
        step(
            "Look up both founding years at once.",
            *[lookup_op(source, fact, nm, f"v{i}") for i, nm in enumerate(names)],
        ),
    )
    p["reduce"] = {
        "kind": "argmin",
        "names": names,
        "vars": ["v0", "v1"],
        "as": "argmin",
        "what": "founding year",
    }
    return Draft(prompt, [source], oldest, {"type": "choice", "value": oldest, "options": names}, p,
                 {"v0": values[0], "v1": values[1]}, parallel=2)  # fmt: skip


def t_sum(ctx: Ctx) -> Draft:
    fact = ctx.choice(["revenue", "net_worth", "age", "population", "employees"])
    kind = FACTS[fact][0]
    source = ctx.choice(["search", "database"])
    n = ctx.choice([2, 2, 3])
    pick = {"company": ctx.companies, "person": ctx.people, "place": ctx.places}[kind]
    names = [e["name"] for e in pick(n)]
    values = [truth_of(ctx.world, fact, nm) for nm in names]
    total = round(sum(values), 1)
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    what = {"revenue": "total revenue (million USD)", "net_worth": "combined net worth (million USD)",
            "age": "combined age", "population": "total population", "employees": "total number of employees"}[fact]  # fmt: skip
    prompt = ctx.choice([f"What is the {what} of {listed}?", f"Give me the {what} of {listed}.",
                         f"Add up: what is the {what} of {listed}?"])  # fmt: skip
    ops = [lookup_op(source, fact, nm, f"v{i}") for i, nm in enumerate(names)]
    expr = " + ".join(f"<<v{i}:num>>" for i in range(n))
    p = plan(
        f"The {what} is <<total>>.",
        step(f"Look up each {SEARCH_WORDS[fact]} in parallel, then add.", *ops),
        step("Add them up.", op(call("calculate", expression=expr), x_numeric(), "total")),
    )
    truth = {**{f"v{i}": v for i, v in enumerate(values)}, "total": total}
    return Draft(
        prompt, [source, "math"], total, num_check(total, 1e-4, 0.05), p, truth, parallel=n
    )


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


def t_two_warehouses(ctx: Ctx) -> Draft:
    invs = ctx.rng.sample([i for i in ctx.world.inventories if i["pool"] == ctx.pool], 2)
    common = sorted(
        {i["product"] for i in invs[0]["items"]} & {i["product"] for i in invs[1]["items"]}
    )
    if not common:
        raise LookupError("no common product")
    product = ctx.choice(common)
    stocks = [next(i["stock"] for i in inv["items"] if i["product"] == product) for inv in invs]
    total = sum(stocks)
    prompt = ctx.choice([f"How many {product} units are there in total across {invs[0]['path']} and {invs[1]['path']}?",
                         f"Add the {product} stock of the {invs[0]['warehouse']} and {invs[1]['warehouse']} warehouses ({invs[0]['path']}, {invs[1]['path']})."])  # fmt: skip
    p = plan(
        f"{invs[0]['warehouse']}: <<s0>>, {invs[1]['warehouse']}: <<s1>>, total <<total>>.",
        step("Read both stock files at once.", *[op(call("read_file", path=inv["path"]), x_csv("product", product, "stock"), f"s{i}") for i, inv in enumerate(invs)]),
        step("Add the two counts.", op(call("calculate", expression="<<s0:num>> + <<s1:num>>"), x_numeric(), "total")),
    )  # fmt: skip
    return Draft(prompt, ["files", "math"], total, num_check(total, 1e-9), p,
                 {"s0": stocks[0], "s1": stocks[1], "total": total}, parallel=2)  # fmt: skip


def t_two_images(ctx: Ctx) -> Draft:
    imgs = ctx.rng.sample(ctx._pool("images"), 2)
    counts = [len(i["shapes"]) for i in imgs]
    total = sum(counts)
    prompt = ctx.choice([f"How many shapes do {imgs[0]['path']} and {imgs[1]['path']} contain together?",
                         f"Count all shapes in {imgs[0]['path']} and in {imgs[1]['path']}; what is the total?"])  # fmt: skip
    p = plan(
        "<<c0>> + <<c1>> = <<total>> shapes.",
        step("Detect shapes in both images at once.", *[op(call("detect_shapes", path=img["path"]), x_shapes(), f"c{i}") for i, img in enumerate(imgs)]),
        step("Add the counts.", op(call("calculate", expression="<<c0:num>> + <<c1:num>>"), x_numeric(), "total")),
    )  # fmt: skip
    return Draft(prompt, ["images", "math"], total, num_check(total, 1e-9), p,
                 {"c0": counts[0], "c1": counts[1], "total": total}, parallel=2)  # fmt: skip


def t_hq_pair(ctx: Ctx) -> Draft:
    source = ctx.choice(["search", "database"])
    comps = ctx.companies(2)
    names = [c["name"] for c in comps]
    hqs = [c["hq"] for c in comps]
    prompt = ctx.choice([f"Where are {names[0]} and {names[1]} headquartered?",
                         f"Name the headquarters cities of {names[0]} and of {names[1]}."])  # fmt: skip
    p = plan(
        f"{names[0]} is headquartered in <<h0>> and {names[1]} in <<h1>>.",
        step(
            "Two independent lookups in one turn.",
            *[lookup_op(source, "hq", nm, f"h{i}") for i, nm in enumerate(names)],
        ),
    )
    return Draft(prompt, [source], hqs, {"type": "set", "items": sorted(set(hqs))}, p,
                 {"h0": hqs[0], "h1": hqs[1]}, parallel=2)  # fmt: skip


def t_mixed_sources(ctx: Ctx) -> Draft:
    place, company = ctx.place(), ctx.company()
    prompt = ctx.choice([f"Tell me the population of {place['name']} (from the documents) and the revenue of {company['name']} in million USD (from the database).",
                         f"Two facts: how many people live in {place['name']}, and what is {company['name']}'s revenue in million USD? Use search for the city and SQL for the company."])  # fmt: skip
    p = plan(
        f"{place['name']} has <<pop>> inhabitants; {company['name']} has a revenue of <<rev>> million USD.",
        step("Both lookups are independent: search and SQL together.",
             lookup_op("search", "population", place["name"], "pop"), lookup_op("database", "revenue", company["name"], "rev")),
    )  # fmt: skip
    values = [place["population"], company["revenue_musd"]]
    return Draft(prompt, ["search", "database"], values, {"type": "numbers", "values": values, "rel_tol": 1e-4},
                 p, {"pop": values[0], "rev": values[1]}, parallel=2)  # fmt: skip


# --------------------------------------------------------------------------------------------
# COMPLEX: planning, several tools, recovery from a planted failure
# --------------------------------------------------------------------------------------------


def _route_day(
    ctx: Ctx, sold_out: bool | None, route: dict | None = None
) -> tuple[dict, str, list[dict]]:
    routes = [route] if route else [r for r in ctx.world.routes if r["pool"] == ctx.pool]
    options = []
    for r in routes:
        by_day: dict[str, list[dict]] = {}
        for f in ctx.world.flights:
            if f["origin"] == r["origin"] and f["destination"] == r["destination"]:
                by_day.setdefault(f["date"], []).append(f)
        for day, flights in sorted(by_day.items()):
            if sold_out is None or any(f["sells_out"] for f in flights) == sold_out:
                options.append((r, day, flights))
    if not options:
        raise LookupError("no matching route-day")
    return ctx.choice(options)


def booking_truth(flights: list[dict], criterion: str) -> tuple[list[dict], dict]:
    """Flights in the expert's order of preference and the one that ends up booked."""
    key = (
        (lambda f: (f["price"], f["departure"]))
        if criterion == "cheapest"
        else (lambda f: (f["departure"], f["price"]))
    )
    ranked = sorted(flights, key=key)
    booked = next(f for f in ranked if not f["sells_out"])
    return ranked, booked


def booking_step(origin: str, destination: str, day: str, criterion: str, passenger: str) -> dict:
    return {"macro": "book", "origin": origin, "destination": destination, "date": day,
            "criterion": criterion, "passenger": passenger}  # fmt: skip


def booking_planted(ranked: list[dict]) -> list[dict]:
    """The book_flight calls that fail on purpose: flights ranked before the one that ends up
    booked all sell out."""
    planted = []
    for f in ranked:
        if not f["sells_out"]:
            break
        planted.append(call("book_flight", flight_id=f["id"]))
    return planted


def booking_calls(
    ranked: list[dict], origin: str, destination: str, day: str, passenger: str
) -> list[dict]:
    calls = [call("search_flights", origin=origin, destination=destination, date=day)]
    for f in ranked:
        calls.append(call("book_flight", flight_id=f["id"], passenger=passenger))
        if not f["sells_out"]:
            break
    calls.append(call("confirm_booking", booking_id="<<booking_id>>"))
    return calls


def _booking_prompt(
    ctx: Ctx, origin: str, destination: str, phrase: str, criterion: str, who: str
) -> str:
    today = f"Today is {long_date(ctx.world.today)}. "
    adj = "cheapest" if criterion == "cheapest" else "earliest"
    subject = who[0].upper() + who[1:]
    return today + ctx.choice(
        [
            f"Book the {adj} flight from {origin} to {destination} {phrase} for {who}, and confirm it.",
            f"Please get {who} on the {adj} {origin} to {destination} flight {phrase}; the booking must be confirmed.",
            f"{subject} needs to fly from {origin} to {destination} {phrase}. Book and confirm the {adj} option.",
        ]
    )


def t_book(ctx: Ctx) -> Draft:
    criterion = ctx.choice(["cheapest", "cheapest", "earliest"])
    sold = ctx.rng.random() < 0.75 if criterion == "cheapest" else None
    route, day, flights = _route_day(ctx, sold)
    passenger = ctx.person()["name"]
    target = date.fromisoformat(day)
    phrase = date_phrase(ctx.rng, ctx.world.today, target)
    ranked, booked = booking_truth(flights, criterion)
    prompt = _booking_prompt(
        ctx, route["origin"], route["destination"], phrase, criterion, passenger
    )
    p = plan("", booking_step(route["origin"], route["destination"], day, criterion, passenger))
    p["date_phrase"] = phrase
    truth = {
        "_macro": {0: booking_calls(ranked, route["origin"], route["destination"], day, passenger)}
    }
    check = {"type": "booking", "flight_id": booked["id"], "passenger": passenger}
    answer = {"flight_id": booked["id"], "passenger": passenger}
    return Draft(prompt, ["flights"], answer, check, p, truth, planted=booking_planted(ranked))


def t_book_for_ceo(ctx: Ctx) -> Draft:
    company = ctx.company()
    route, day, flights = _route_day(ctx, ctx.rng.random() < 0.75)
    source = ctx.choice(["search", "database"])
    phrase = date_phrase(ctx.rng, ctx.world.today, date.fromisoformat(day))
    ranked, booked = booking_truth(flights, "cheapest")
    prompt = _booking_prompt(
        ctx,
        route["origin"],
        route["destination"],
        phrase,
        "cheapest",
        f"the chief executive of {company['name']}",
    )
    p = plan(
        "",
        step(
            f"First find who runs {company['name']}; that is the passenger.",
            lookup_op(source, "ceo", company["name"], "ceo"),
        ),
        booking_step(route["origin"], route["destination"], day, "cheapest", "<<ceo>>"),
    )
    p["date_phrase"] = phrase
    truth = {
        "ceo": company["ceo"],
        "_macro": {
            1: booking_calls(ranked, route["origin"], route["destination"], day, company["ceo"])
        },
    }
    check = {"type": "booking", "flight_id": booked["id"], "passenger": company["ceo"]}
    return Draft(
        prompt,
        [source, "flights"],
        {"flight_id": booked["id"], "passenger": company["ceo"]},
        check,
        p,
        truth,
        planted=booking_planted(ranked),
    )


def make_book_to_hq(sources: list[str]) -> Callable[[Ctx], Draft]:
    return lambda ctx: _book_to_hq(ctx, ctx.choice(sources))


def _book_to_hq(ctx: Ctx, source: str) -> Draft:
    pool_routes = [r for r in ctx.world.routes if r["pool"] == ctx.pool]
    dests = {r["destination"] for r in pool_routes}
    companies = [c for c in ctx.world.companies if c["hq"] in dests]
    if not companies:
        raise LookupError("no company headquartered at a destination")
    company = ctx.choice(companies)
    route = ctx.choice([r for r in pool_routes if r["destination"] == company["hq"]])
    route, day, flights = _route_day(ctx, None, route)
    passenger = ctx.person()["name"]
    phrase = date_phrase(ctx.rng, ctx.world.today, date.fromisoformat(day))
    ranked, booked = booking_truth(flights, "cheapest")
    prompt = f"Today is {long_date(ctx.world.today)}. " + ctx.choice([
        f"{passenger} is visiting {company['name']}'s headquarters. Book and confirm the cheapest flight from {route['origin']} to that city {phrase}.",
        f"Book {passenger} on the cheapest flight {phrase} from {route['origin']} to the city where {company['name']} is headquartered, and confirm it.",
    ])  # fmt: skip
    p = plan(
        "",
        step(
            f"Find where {company['name']} is headquartered, then book.",
            lookup_op(source, "hq", company["name"], "hq"),
        ),
        booking_step(route["origin"], "<<hq>>", day, "cheapest", passenger),
    )
    p["date_phrase"] = phrase
    truth = {
        "hq": company["hq"],
        "_macro": {1: booking_calls(ranked, route["origin"], company["hq"], day, passenger)},
    }
    check = {"type": "booking", "flight_id": booked["id"], "passenger": passenger}
    return Draft(
        prompt,
        [source, "flights"],
        {"flight_id": booked["id"], "passenger": passenger},
        check,
        p,
        truth,
        planted=booking_planted(ranked),
    )


def _moved_budget(ctx: Ctx) -> dict:
    moved = [b for b in ctx.world.budgets if b["pool"] == ctx.pool and b["moved_from"]]
    if not moved:
        raise LookupError("no moved budget in pool")
    return ctx.choice(moved)


def read_or_find_step(claimed: str, pattern: str, select: str, extract: dict, var: str) -> dict:
    """Read `claimed`; when it is missing, search file contents for `pattern` and read the
    matching file whose path contains `select`."""
    return {"macro": "read_or_find", "path": claimed, "pattern": pattern, "select": select,
            "extract": extract, "as": var}  # fmt: skip


def t_moved_budget(ctx: Ctx) -> Draft:
    b = _moved_budget(ctx)
    pattern, select = b["company"], f"_{b['department']}"
    prompt = ctx.choice([
        f"The {b['department']} budget memo of {b['company']} should be at {b['moved_from']}. What is the approved budget?",
        f"Read {b['moved_from']} (it may have been moved) and tell me {b['company']}'s approved {b['department']} budget.",
        f"How much was approved for {b['company']}'s {b['department']} department? The memo used to be {b['moved_from']}.",
    ])  # fmt: skip
    p = plan(
        f"The approved {b['department']} budget of {b['company']} is $<<v>>.",
        read_or_find_step(b["moved_from"], pattern, select, x_field("Approved budget"), "v"),
    )
    truth = {"v": b["amount"], "_macro": {0: [call("read_file", path=b["moved_from"]), call("search_files", pattern=pattern),
                                               call("read_file", path=b["path"])]}}  # fmt: skip
    planted = [call("read_file", path=b["moved_from"])]
    return Draft(prompt, ["files"], b["amount"], num_check(b["amount"], 1e-9), p, truth,
                 planted=planted)  # fmt: skip


def t_budget_share(ctx: Ctx) -> Draft:
    b = (
        _moved_budget(ctx)
        if ctx.rng.random() < 0.6
        else ctx.choice([x for x in ctx.world.budgets if x["pool"] == ctx.pool])
    )
    company = ctx.world.company(b["company"])
    share = b["amount"] / (company["revenue_musd"] * 1e6) * 100
    claimed = b["moved_from"] or b["path"]
    pattern, select = b["company"], f"_{b['department']}"
    prompt = ctx.choice([
        f"What percentage of {b['company']}'s annual revenue is its {b['department']} budget? The memo is {claimed}; revenue is in the database.",
        f"Express {b['company']}'s {b['department']} budget ({claimed}) as a percent of the company's revenue.",
    ])  # fmt: skip
    read = read_or_find_step(claimed, pattern, select, x_field("Approved budget"), "amount")
    p = plan(
        "$<<amount>> of <<rev>> million USD revenue is <<share>>%.",
        read,
        step("Now the revenue from the database.", lookup_op("database", "revenue", b["company"], "rev")),
        step("Percentage = amount / (revenue * 1e6) * 100.", op(call("calculate", expression="<<amount:num>> / (<<rev:num>> * 1000000) * 100"), x_numeric(), "share")),
    )  # fmt: skip
    reads = [call("read_file", path=claimed)]
    if b["moved_from"]:
        reads += [call("search_files", pattern=pattern), call("read_file", path=b["path"])]
    truth = {
        "amount": b["amount"],
        "rev": company["revenue_musd"],
        "share": share,
        "_macro": {0: reads},
    }
    planted = [call("read_file", path=claimed)] if b["moved_from"] else []
    return Draft(prompt, ["files", "database", "math"], share, num_check(share, 1e-3), p, truth,
                 planted=planted)  # fmt: skip


BROKEN_SQL = [
    # (table, wrong column, right column, query template with {col}, world value function)
    ("orders", "qty", "quantity", "SELECT SUM({col}) FROM orders WHERE product_id = '{pid}'"),
    (
        "orders",
        "qty",
        "quantity",
        "SELECT SUM({col}) FROM orders WHERE status = 'shipped' AND product_id = '{pid}'",
    ),
    (
        "companies",
        "revenue",
        "revenue_musd",
        "SELECT {col} FROM companies WHERE name = '{company}'",
    ),
    ("companies", "hq", "hq_city", "SELECT {col} FROM companies WHERE name = '{company}'"),
    ("people", "net_worth", "net_worth_musd", "SELECT {col} FROM people WHERE name = '{person}'"),
    ("places", "area", "area_km2", "SELECT {col} FROM places WHERE name = '{place}'"),
    ("places", "pop", "population", "SELECT {col} FROM places WHERE name = '{place}'"),
    ("products", "price_usd", "price", "SELECT {col} FROM products WHERE name = '{product}'"),
]


def _sql_value(world: World, query: str) -> Any:
    import sqlite3

    con = sqlite3.connect(f"file:{world.db_path}?mode=ro", uri=True)
    try:
        row = con.execute(query).fetchone()
    finally:
        con.close()
    return row[0] if row else None


def t_broken_sql(ctx: Ctx) -> Draft:
    table, wrong, right, template = ctx.choice(BROKEN_SQL)
    values = {
        "pid": ctx.item("products")["id"], "company": ctx.company()["name"], "person": ctx.person()["name"],
        "place": ctx.place()["name"], "product": ctx.item("products")["name"],
    }  # fmt: skip
    broken = template.format(col=wrong, **values)
    fixed = template.format(col=right, **values)
    value = _sql_value(ctx.world, fixed)
    if value is None:
        raise LookupError("empty result")
    prompt = ctx.choice([
        f"Run this query on the database and tell me the result: {broken}  (it was written for an older schema; fix it if it fails)",
        f"My old report used `{broken}`. Run it, repairing it if the schema changed, and give me the number or name it returns.",
        f"What does this SQL return? {broken} -- if a column is wrong, look up the table's columns and correct it.",
    ])  # fmt: skip
    p = plan(
        "The corrected query returns <<v>>.",
        {
            "macro": "sql_fix",
            "query": broken,
            "table": table,
            "wrong": wrong,
            "extract": x_sql(None),
            "as": "v",
        },
    )
    check = num_check(value, 1e-6) if isinstance(value, int | float) else text_check(value)
    truth = {
        "v": value,
        "_macro": {
            0: [
                call("sql_query", query=broken),
                call("describe_table", table=table),
                call("sql_query", query=fixed),
            ]
        },
    }
    planted = [call("sql_query", query=broken)]
    return Draft(prompt, ["database"], value, check, p, truth, planted=planted)


def t_image_report(ctx: Ctx) -> Draft:
    img = ctx.item("images")
    what, color, kind, value = _shape_question(ctx, img)
    out = f"results/{img['path'].split('/')[-1].removesuffix('.png')}_{slug(what)}.txt"
    prompt = ctx.choice([f"Count the {what} in {img['path']} and save the number to {out}.",
                         f"Write the number of {what} in {img['path']} into the file {out}, then tell me the count."])  # fmt: skip
    p = plan(
        f"There are <<v>> {what}; I wrote it to {out}.",
        step(f"Detect shapes in {img['path']}, then write the count.", op(call("detect_shapes", path=img["path"]), x_shapes(color, kind), "v")),
        step(f"Save the count to {out}.", op(call("write_file", path=out, content="<<v:raw>>\n"), {"kind": "none"}, "_")),
    )  # fmt: skip
    check = {
        "type": "all",
        "checks": [
            num_check(value, 1e-9),
            {"type": "file", "path": out, "check": num_check(value, 1e-9)},
        ],
    }
    return Draft(prompt, ["images", "files"], value, check, p, {"v": value})


def t_hq_mayor(ctx: Ctx) -> Draft:
    company = ctx.company()
    place = ctx.world.place(company["hq"])
    source = ctx.choice(["search", "database"])
    prompt = ctx.choice([f"Who is the mayor of the city where {company['name']} is headquartered? The Regional Atlas website ({ATLAS_START}) lists mayors.",
                         f"Find {company['name']}'s headquarters city, then its mayor on the Regional Atlas site (start at {ATLAS_START})."])  # fmt: skip
    steps = [
        step(
            f"Find {company['name']}'s headquarters, then browse the atlas.",
            lookup_op(source, "hq", company["name"], "hq"),
        )
    ]
    atlas = _atlas_steps("<<hq>>", "Mayor", "v")
    p = plan(f"{company['name']} is headquartered in <<hq>>, whose mayor is <<v>>.", *steps, *atlas)
    truth = {"hq": company["hq"], **_atlas_truth(ctx.world, company["hq"]), "v": place["mayor"]}
    return Draft(prompt, [source, "browser"], place["mayor"], text_check(place["mayor"]), p, truth)


# --------------------------------------------------------------------------------------------
# Held-out tools: geo_lookup and corp_registry (never offered in training)
# --------------------------------------------------------------------------------------------


def t_reg_simple(ctx: Ctx) -> Draft:
    fact = ctx.choice(["ceo", "hq", "revenue", "population", "area", "place_founded", "employees"])
    return make_fact([fact], "registry")(ctx)


def t_reg_chain(ctx: Ctx) -> Draft:
    second = ctx.choice(["population", "area"])
    return make_chain(
        "hq",
        second,
        CHAINS[("hq", "population")] if second == "population" else CHAINS[("hq", "area")],
        "registry",
    )(ctx)


def t_reg_sum(ctx: Ctx) -> Draft:
    comps = ctx.companies(2)
    names = [c["name"] for c in comps]
    total = round(sum(c["revenue_musd"] for c in comps), 1)
    prompt = ctx.choice([f"What is the combined revenue of {names[0]} and {names[1]} in million USD?",
                         f"Total the annual revenues (million USD) of {names[0]} and {names[1]}."])  # fmt: skip
    p = plan(
        "Together <<total>> million USD.",
        step(
            "Query the registry for both companies at once.",
            *[lookup_op("registry", "revenue", nm, f"v{i}") for i, nm in enumerate(names)],
        ),
        step(
            "Add.",
            op(call("calculate", expression="<<v0:num>> + <<v1:num>>"), x_numeric(), "total"),
        ),
    )
    truth = {"v0": comps[0]["revenue_musd"], "v1": comps[1]["revenue_musd"], "total": total}
    return Draft(
        prompt, ["registry", "math"], total, num_check(total, 1e-4, 0.05), p, truth, parallel=2
    )


def t_reg_compare(ctx: Ctx) -> Draft:
    places = ctx.places(2)
    names = [p["name"] for p in places]
    best = max(places, key=lambda p: p["population"])["name"]
    prompt = ctx.choice([f"Which city has more people, {names[0]} or {names[1]}? Answer with the name only.",
                         f"Is {names[0]} or {names[1]} more populous? Reply with just the name."])  # fmt: skip
    p = plan(
        "<<argmax>>",
        step(
            "Both populations at once.",
            *[lookup_op("registry", "population", nm, f"v{i}") for i, nm in enumerate(names)],
        ),
    )
    p["reduce"] = {
        "kind": "argmax",
        "names": names,
        "vars": ["v0", "v1"],
        "as": "argmax",
        "what": "population",
    }
    return Draft(prompt, ["registry"], best, {"type": "choice", "value": best, "options": names}, p,
                 {"v0": places[0]["population"], "v1": places[1]["population"]}, parallel=2)  # fmt: skip


def t_reg_book(ctx: Ctx) -> Draft:
    draft = _book_to_hq(ctx, "registry")
    draft.families = ["registry", "flights"]
    return draft


# --------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------

S, Q, P, C = TaskTier.SIMPLE, TaskTier.MULTI_TOOL_SEQ, TaskTier.MULTI_TOOL_PAR, TaskTier.COMPLEX

TEMPLATES: list[Template] = [
    Template("calc", S, t_calc),
    Template("solve", S, t_solve),
    Template("integral", S, t_integral, heldout=True),
    Template("python", S, t_python),
    Template(
        "company_fact_search", S, make_fact(["ceo", "hq", "revenue", "company_founded"], "search")
    ),
    Template("company_fact_sql", S, make_fact(["ceo", "hq", "revenue", "employees"], "database")),
    Template("person_fact_search", S, make_fact(["net_worth", "age", "city"], "search")),
    Template("person_fact_sql", S, make_fact(["net_worth", "age"], "database")),
    Template("place_fact_search", S, make_fact(["population", "place_founded"], "search")),
    Template("place_fact_sql", S, make_fact(["population", "area"], "database")),
    Template("place_area_search", S, make_fact(["area"], "search"), heldout=True),
    Template("stock_file", S, t_stock_file),
    Template("quarter_file", S, t_quarter_file),
    Template("budget_file", S, t_budget_file),
    Template("shape_count", S, t_shape_count),
    Template("product_price", S, t_product_price),
    Template("order_quantity", S, t_order_quantity, heldout=True),
    Template(
        "ceo_networth_search",
        Q,
        make_chain("ceo", "net_worth", CHAINS[("ceo", "net_worth")], "search"),
    ),
    Template(
        "ceo_networth_sql",
        Q,
        make_chain("ceo", "net_worth", CHAINS[("ceo", "net_worth")], "database"),
    ),
    Template("ceo_age", Q, make_chain("ceo", "age", CHAINS[("ceo", "age")], "search")),
    Template(
        "hq_population_sql",
        Q,
        make_chain("hq", "population", CHAINS[("hq", "population")], "database"),
    ),
    Template(
        "hq_population_search",
        Q,
        make_chain("hq", "population", CHAINS[("hq", "population")], "search"),
    ),
    Template(
        "hq_area", Q, make_chain("hq", "area", CHAINS[("hq", "area")], "database"), heldout=True
    ),
    Template("ceo_city", Q, make_chain("ceo", "city", CHAINS[("ceo", "city")], "search")),
    Template(
        "person_city_population",
        Q,
        make_chain("city", "population", CHAINS[("city", "population")], "database"),
        heldout=True,
    ),
    Template("density", Q, t_density),
    Template("order_total", Q, t_order_total),
    Template("quarter_sum", Q, t_quarter_sum),
    Template("atlas_fact", Q, t_atlas_fact),
    Template("stock_value", Q, t_stock_value, heldout=True),
    Template("company_age", Q, t_company_age),
    Template("compare", P, t_compare),
    Template("older", P, t_older),
    Template("sum", P, t_sum),
    Template("two_calcs", P, t_two_calcs),
    Template("two_warehouses", P, t_two_warehouses),
    Template("two_images", P, t_two_images, heldout=True),
    Template("hq_pair", P, t_hq_pair),
    Template("mixed_sources", P, t_mixed_sources, heldout=True),
    Template("book", C, t_book),
    Template("book_for_ceo", C, t_book_for_ceo, heldout=True),
    Template("book_to_hq", C, make_book_to_hq(["search", "database"])),
    Template("moved_budget", C, t_moved_budget),
    Template("budget_share", C, t_budget_share),
    Template("broken_sql", C, t_broken_sql),
    Template("image_report", C, t_image_report),
    Template("hq_mayor", C, t_hq_mayor, heldout=True),
    Template("registry_fact", S, t_reg_simple, heldout_tools=True),
    Template("registry_chain", Q, t_reg_chain, heldout_tools=True),
    Template("registry_sum", P, t_reg_sum, heldout_tools=True),
    Template("registry_compare", P, t_reg_compare, heldout_tools=True),
    Template("registry_book", C, t_reg_book, heldout_tools=True),
]
TEMPLATES_BY_ID = {t.id: t for t in TEMPLATES}


# --------------------------------------------------------------------------------------------
# Minimal calls
# --------------------------------------------------------------------------------------------


def expand_slots(template: Any, values: dict) -> Any:
    """Fill `<<name>>`, `<<name:num>>` (plain number), `<<name:raw>>` (the value itself),
    `<<name:sum>>` (a list joined with +) and `<<name:initial>>` (first letter, upper case)
    slots."""
    if isinstance(template, str):
        full = re.fullmatch(r"<<(\w+):raw>>", template)
        if full and full.group(1) in values:
            return values[full.group(1)]

        def sub(m: re.Match) -> str:
            name, mode = m.group(1), m.group(2) or ""
            if name not in values:
                return m.group(0)
            v = values[name]
            if mode == "num":
                return plain_number(v)
            if mode == "sum":
                return " + ".join(plain_number(x) for x in v)
            if mode == "raw":
                return str(v)
            if mode == "initial":
                return str(v)[:1].upper()
            return fmt_value(v)

        return re.sub(r"<<(\w+)(?::(num|raw|sum|initial))?>>", sub, template)
    if isinstance(template, list):
        return [expand_slots(t, values) for t in template]
    if isinstance(template, dict):
        return {k: expand_slots(v, values) for k, v in template.items()}
    return template


def minimal_calls(draft: Draft) -> list[dict]:
    """The plan filled in with the world's ground truth: the shortest solution's calls.

    Macro steps (planted failures) list their calls in `truth["_macro"][step index]`; values
    only known at run time (a booking id) stay as `<<slot>>`s."""
    macros = draft.truth.get("_macro", {})
    calls: list[dict] = []
    for i, s in enumerate(draft.plan["steps"]):
        if s.get("macro"):
            calls += [expand_slots(c, draft.truth) for c in macros[i]]
        else:
            calls += [expand_slots(o["call"], draft.truth) for o in s["calls"]]
    return calls


def closest_column(wrong: str, columns: list[str]) -> str | None:
    """The column a wrong name most likely meant: one containing it (or contained in it),
    else the closest spelling."""
    for col in columns:
        if wrong.lower() in col.lower() or col.lower() in wrong.lower():
            return col
    close = difflib.get_close_matches(wrong, columns, n=1, cutoff=0.3)
    return close[0] if close else None
