"""Tasks of the `heldout_tools` split: facts, chains, sums, comparisons and bookings again, solved
through `geo_lookup` and `corp_registry` only, tools no training task offers.
"""

from __future__ import annotations

from tooltune.tasks.templates.draft import Ctx, Draft, num_check
from tooltune.tasks.templates.facts import lookup_op, make_chain, make_fact, pick_one
from tooltune.tasks.templates.flights import book_to_hq
from tooltune.tasks.templates.plan import call, op, plan, step, x_numeric


def t_reg_simple(ctx: Ctx) -> Draft:
    fact = ctx.choice(["ceo", "hq", "revenue", "population", "area", "place_founded", "employees"])
    return make_fact([fact], "registry")(ctx)


def t_reg_chain(ctx: Ctx) -> Draft:
    second = ctx.choice(["population", "area"])
    return make_chain("hq", second, "registry")(ctx)


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
    prompt = ctx.choice([f"Which city has more people, {names[0]} or {names[1]}? Answer with the name only.",
                         f"Is {names[0]} or {names[1]} more populous? Reply with just the name."])  # fmt: skip
    values = [p["population"] for p in places]
    think = "Both populations at once."
    return pick_one(prompt, "registry", "population", names, values, "argmax", think, "population")


def t_reg_book(ctx: Ctx) -> Draft:
    draft = book_to_hq(ctx, "registry")
    draft.families = ["registry", "flights"]
    return draft
