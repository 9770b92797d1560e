"""The products and orders tables, and queries written for an older schema (`BROKEN_SQL`): the
wrong column fails, and the expert reads the table's columns and corrects the query.
"""

from __future__ import annotations

from typing import Any

from tooltune.tasks.templates.draft import Ctx, Draft, num_check, text_check
from tooltune.tasks.templates.plan import call, op, plan, step, x_numeric, x_sql
from tooltune.tasks.templates.wording import sql_lit
from tooltune.tasks.world_data import World


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
