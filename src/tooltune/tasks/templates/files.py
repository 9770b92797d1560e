"""Files in the sandbox: warehouse stock lists and quarterly sales reports (CSV), and department
budget memos. Some memos were moved to the archive, so a task naming the old path meets a missing
file and has to search for the memo (`read_or_find_step`).
"""

from __future__ import annotations

from tooltune.tasks.templates.draft import Ctx, Draft, num_check
from tooltune.tasks.templates.facts import lookup_op
from tooltune.tasks.templates.plan import call, op, plan, step, x_csv, x_field, x_numeric, x_sql
from tooltune.tasks.templates.wording import sql_lit


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
        step("Read both stock files at once, then add.", *[op(call("read_file", path=inv["path"]), x_csv("product", product, "stock"), f"s{i}") for i, inv in enumerate(invs)]),
        step("Add the two counts.", op(call("calculate", expression="<<s0:num>> + <<s1:num>>"), x_numeric(), "total")),
    )  # fmt: skip
    return Draft(prompt, ["files", "math"], total, num_check(total, 1e-9), p,
                 {"s0": stocks[0], "s1": stocks[1], "total": total}, parallel=2)  # fmt: skip


def _moved_budget(ctx: Ctx) -> dict:
    moved = [b for b in ctx.world.budgets if b["pool"] == ctx.pool and b["moved_from"]]
    if not moved:
        raise LookupError("no moved budget in pool")
    return ctx.choice(moved)


def read_or_find_step(
    claimed: str, pattern: str, select: str, extract: dict, var: str, then: str = ""
) -> dict:
    """Read `claimed`; when it is missing, search file contents for `pattern` and read the
    matching file whose path contains `select`. `then` names what comes after the reading in
    the first thought ("Read X, then ...")."""
    return {"macro": "read_or_find", "path": claimed, "pattern": pattern, "select": select,
            "extract": extract, "as": var, "then": then}  # fmt: skip


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
    then = "the revenue from the database, then divide"
    read = read_or_find_step(claimed, pattern, select, x_field("Approved budget"), "amount", then)
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
