"""The Regional Atlas website: a city's mayor, elevation or landmark, two clicks from the front
page (the page of the city's initial, then the city's page). The expert clicks links by their
text, the words its thought has just named: a small model copies those reliably, where the
number in front of a link in a long list it did not (every atlas task failed on it, clicking
the same number whatever the city).
"""

from __future__ import annotations

import re

from tooltune.tasks.templates.draft import Ctx, Draft, num_check, text_check
from tooltune.tasks.templates.facts import lookup_op
from tooltune.tasks.templates.plan import call, op, plan, step
from tooltune.tasks.world_atlas import LETTER_LINK

ATLAS_START = "/index.html"
X_NONE = {"kind": "none"}  # the page is not read: the next click names its link


def initial_of(name: str) -> str:
    """The first letter of a literal name, or the `<<slot:initial>>` of a slot."""
    slot = re.fullmatch(r"<<(\w+)>>", name)
    return f"<<{slot.group(1)}:initial>>" if slot else name[:1].upper()


def _atlas_steps(place: str, fieldname: str, var: str) -> list[dict]:
    """Front page, then the page of cities with the place's initial, then the place's page."""
    letters = LETTER_LINK.format(letter=initial_of(place))
    return [
        step(f"Open the atlas, go to the cities starting with {initial_of(place)}, then to {place}.",
             op(call("browser_open", url=ATLAS_START), X_NONE, "_")),
        step(f"Follow '{letters}'.", op(call("browser_click", link=letters), X_NONE, "_")),
        step(f"Open the page of {place}.", op(call("browser_click", link=place), {"kind": "page_field", "field": fieldname}, var)),
    ]  # fmt: skip


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
    truth = {"v": value}
    return Draft(prompt, ["browser"], value, check, p, truth)


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
    truth = {"hq": company["hq"], "v": place["mayor"]}
    return Draft(prompt, [source, "browser"], place["mayor"], text_check(place["mayor"]), p, truth)


def t_home_city_atlas(ctx: Ctx) -> Draft:
    """Training only: a lookup whose answer is the city to browse the atlas for, as `hq_mayor`
    asks with another first hop and another field."""
    person = ctx.person()
    name, place = person["name"], ctx.world.place(person["city"])
    fieldname = ctx.choice(["Elevation", "Landmark"])
    source = ctx.choice(["search", "database"])
    value = place["elevation_m"] if fieldname == "Elevation" else place["landmark"]
    asked = "the elevation in metres" if fieldname == "Elevation" else "the best-known landmark"
    prompt = ctx.choice([f"What is {asked} of the city where {name} lives? The Regional Atlas website ({ATLAS_START}) lists it.",
                         f"Find {name}'s home city, then {asked} of it on the Regional Atlas site (start at {ATLAS_START})."])  # fmt: skip
    steps = [step(f"Find where {name} lives, then browse the atlas.",
                  lookup_op(source, "city", name, "city"))]  # fmt: skip
    p = plan(f"{name} lives in <<city>>, whose {fieldname.lower()} is <<v>>.",
             *steps, *_atlas_steps("<<city>>", fieldname, "v"))  # fmt: skip
    check = num_check(value, 1e-9) if fieldname == "Elevation" else text_check(value)
    return Draft(prompt, [source, "browser"], value, check, p, {"city": person["city"], "v": value})
