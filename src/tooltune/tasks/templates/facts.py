"""Facts about companies, people and places, read through one of three sources: the search
corpus, the SQL database or the held-out registry tools (`FACTS` says where each fact is in
each, `lookup_op` writes the call).

Templates: one lookup (`make_fact`); a lookup whose answer names the entity of the next one
(`make_chain`); lookups feeding a calculation (`t_density`, `t_company_age`); and independent
lookups in one turn to compare, add up or list (`t_compare`, `t_older`, `t_sum`, `t_hq_pair`,
`t_mixed_sources`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tooltune.tasks.templates.draft import Ctx, Draft, num_check, text_check
from tooltune.tasks.templates.plan import call, op, plan, step, x_key, x_numeric, x_search, x_sql
from tooltune.tasks.world_data import World

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
    # pairs only the training variety asks for (`t_chain_variety`)
    ("hq", "place_founded"): ["In what year was the city where {n} has its headquarters founded?",
                              "When was {n}'s headquarters city founded?"],
    ("city", "area"): ["How large, in km2, is the city where {n} lives?",
                       "What is the area in square kilometres of {n}'s home city?"],
    ("city", "place_founded"): ["When was the home city of {n} founded?",
                                "In what year was the city {n} lives in founded?"],
}  # fmt: skip


def make_chain(first: str, second: str, source: str) -> Callable[[Ctx], Draft]:
    """Look up `first` (a person or place name) about an entity, then `second` about that,
    asked in one of the `CHAINS` phrasings of the pair."""
    phrasings = CHAINS[(first, second)]

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


def pick_one(
    prompt: str,
    source: str,
    fact: str,
    names: list[str],
    values: list,
    pick: str,
    think: str,
    what: str,
) -> Draft:
    """A question answered by one of `names`: the one whose `fact` (`values`, as the world says)
    is largest (`pick` "argmax") or smallest ("argmin"), read with one lookup per name, all in
    one turn. The calculator compares (`max`/`min`): a small model misjudges which of two
    numbers is larger far more often than it copies the name written beside a number, so the
    expert lists each value before its name and answers with the name beside the result."""
    slots = [f"v{i}" for i in range(len(names))]
    ops = [lookup_op(source, fact, nm, slot) for nm, slot in zip(names, slots, strict=True)]
    side = "highest" if pick == "argmax" else "lowest"
    listed = ", ".join(f"<<{s}:num>> {nm}" for s, nm in zip(slots, names, strict=True))
    args = ", ".join(f"<<{s}:num>>" for s in slots)
    expression = f"{'max' if pick == 'argmax' else 'min'}({args})"
    p = plan(
        f"<<{pick}>>",
        step(think, *ops),
        step(
            f"{what.capitalize()}: {listed}. Find the {side}.",
            op(call("calculate", expression=expression), x_numeric(), "best"),
        ),
    )
    p["reduce"] = {"names": names, "vars": slots, "value": "best", "as": pick, "side": side}
    best_value = max(values) if pick == "argmax" else min(values)
    best = names[values.index(best_value)]
    check = {"type": "choice", "value": best, "options": names}
    truth = {**dict(zip(slots, values, strict=True)), "best": best_value}
    return Draft(prompt, [source, "math"], best, check, p, truth, parallel=len(names))


def t_compare(ctx: Ctx) -> Draft:
    fact = ctx.choice(["population", "area", "revenue", "net_worth", "employees"])
    kind = FACTS[fact][0]
    source = ctx.choice(["search", "database"])
    n = 3 if ctx.rng.random() < 0.3 else 2
    pick = {"company": ctx.companies, "person": ctx.people, "place": ctx.places}[kind]
    names = [e["name"] for e in pick(n)]
    values = [truth_of(ctx.world, fact, nm) for nm in names]
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
    think = f"Look up the {SEARCH_WORDS[fact]} of each, all at once."
    return pick_one(prompt, source, fact, names, values, "argmax", think, SEARCH_WORDS[fact])


def t_older(ctx: Ctx) -> Draft:
    kind = ctx.choice(["company", "place"])
    fact = "company_founded" if kind == "company" else "place_founded"
    source = ctx.choice(["search", "database"])
    ents = ctx.companies(2) if kind == "company" else ctx.places(2)
    names = [e["name"] for e in ents]
    if ents[0]["founded"] == ents[1]["founded"]:
        raise LookupError("tie")
    values = [e["founded"] for e in ents]
    prompt = ctx.choice([f"Which was founded first, {names[0]} or {names[1]}? Answer with the name only.",
                         f"Is {names[0]} or {names[1]} older? Reply with just the name."])  # fmt: skip
    think, what = "Look up both founding years at once.", "founding year"
    return pick_one(prompt, source, fact, names, values, "argmin", think, what)


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


def t_hq_pair(ctx: Ctx) -> Draft:
    # "Two independent lookups in one turn." stays fixed: the held-out `t_mixed_sources` borrows
    # it. Naming the entities in these thoughts instead lost that (0 of 9 after SFT against 5 and
    # 3 in two runs with it: "One lookup:", one call) and gained nothing elsewhere (2026-12-07).
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


# Training-only variety (`Template.train_only`): the catalogue's lookups in combinations it does
# not ask for. None is the combination of a held-out template: (area, search), (hq, area) and
# (city, population) stay new shapes, as does mixing two sources in one turn.
FACT_VARIETY = [("employees", "search"), ("company_founded", "database"), ("city", "database"),
                ("place_founded", "database")]  # fmt: skip
CHAIN_VARIETY = [("ceo", "age", "database"), ("ceo", "city", "database"),
                 ("hq", "place_founded", "search"), ("hq", "place_founded", "database"),
                 ("city", "area", "search"), ("city", "area", "database"),
                 ("city", "place_founded", "search"), ("city", "place_founded", "database")]  # fmt: skip
# numeric facts each source can read, for two different facts about two entities in one turn
PAIR_FACTS = {"search": ["population", "revenue", "net_worth", "age", "employees"],
              "database": ["population", "area", "revenue", "employees", "net_worth", "age"]}  # fmt: skip
UNITS = {"revenue": " (million USD)", "net_worth": " (million USD)", "area": " (km2)"}


def t_fact_variety(ctx: Ctx) -> Draft:
    fact, source = ctx.choice(FACT_VARIETY)
    return make_fact([fact], source)(ctx)


def t_chain_variety(ctx: Ctx) -> Draft:
    first, second, source = ctx.choice(CHAIN_VARIETY)
    return make_chain(first, second, source)(ctx)


def t_two_facts(ctx: Ctx) -> Draft:
    """Two different facts about two different entities, one source, both calls in one turn."""
    source = ctx.choice(["search", "database"])
    facts = ctx.rng.sample(PAIR_FACTS[source], 2)
    names = [_entity_for(ctx, f) for f in facts]
    if names[0] == names[1]:
        raise LookupError("same entity")
    values = [truth_of(ctx.world, f, n) for f, n in zip(facts, names, strict=True)]
    asked = [
        f"the {SEARCH_WORDS[f]} of {n}{UNITS.get(f, '')}" for f, n in zip(facts, names, strict=True)
    ]
    prompt = ctx.choice([f"What are {asked[0]} and {asked[1]}?",
                         f"Tell me {asked[0]} and {asked[1]}.",
                         f"Two questions: {asked[0]}, and {asked[1]}?"]) + source_hint(ctx.rng, source)  # fmt: skip
    p = plan(
        f"The {SEARCH_WORDS[facts[0]]} of {names[0]} is <<a>>; the {SEARCH_WORDS[facts[1]]} of {names[1]} is <<b>>.",
        step("Two independent lookups in one turn.",
             lookup_op(source, facts[0], names[0], "a"), lookup_op(source, facts[1], names[1], "b")),
    )  # fmt: skip
    return Draft(prompt, families_for(source), values, {"type": "numbers", "values": values, "rel_tol": 1e-4},
                 p, {"a": values[0], "b": values[1]}, parallel=2)  # fmt: skip
