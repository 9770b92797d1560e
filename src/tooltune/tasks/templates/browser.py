"""The Regional Atlas website: a city's mayor, elevation or landmark, two clicks from the front
page (the page of the city's initial, then the city's page). Link numbers come from the atlas
pages the world was written from (`world_atlas.atlas_route`).
"""

from __future__ import annotations

import re

from tooltune.tasks.templates.draft import Ctx, Draft, num_check, text_check
from tooltune.tasks.templates.facts import lookup_op
from tooltune.tasks.templates.plan import call, op, plan, step, x_link
from tooltune.tasks.world_atlas import LETTER_LINK, atlas_route
from tooltune.tasks.world_data import World

ATLAS_START = "/index.html"


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
