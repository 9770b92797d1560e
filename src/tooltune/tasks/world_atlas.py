"""The Regional Atlas website as data: its pages, their links in the order the browser numbers
them, and the two clicks from the front page to every city.

`world_files` renders exactly these pages, so the link numbers computed here (`atlas_route`)
are the ones the browser shows; the expert clicks the links by their text.
"""

from __future__ import annotations

from tooltune.tasks.world_data import World
from tooltune.tasks.world_names import slug

LETTER_LINK = "Cities starting with {letter}"  # atlas index links to one page per letter


def letter_link(name: str) -> str:
    """Text of the atlas link to the page of the cities whose names start like `name`."""
    return LETTER_LINK.format(letter=name[:1].upper())


def web_pages(places: list[dict], regions: list[str]) -> list[dict]:
    """The Regional Atlas as data: every page's intro, facts and links in display order.

    The front page links to one index page per initial letter (a page of a few dozen cities
    fits in a tool observation, where one list of every city would not), to the regions, and to
    the full list of cities. `world_files` renders exactly these pages, so link numbers the task
    templates compute from here are the numbers the browser shows."""
    back = [["Back to the atlas", "/index.html"]]

    def city_link(p: dict) -> list[str]:
        return [p["name"], f"/cities/{slug(p['name'])}.html"]

    ordered = sorted(places, key=lambda p: p["name"])
    letters = sorted({p["name"][0].upper() for p in places})
    letter_links = [[letter_link(x), f"/letters/{x.lower()}.html"] for x in letters]
    region_links = [[r, f"/regions/{slug(r)}.html"] for r in regions]
    pages = [
        {
            "path": "index.html",
            "title": "Regional Atlas",
            "intro": "Mayors, elevations and landmarks of every city. Cities by initial letter, "
            "by region, or all at once:",
            "links": [["All cities", "/cities.html"], *letter_links, *region_links],
        },
        {
            "path": "cities.html",
            "title": "All cities",
            "intro": f"All {len(places)} cities of the atlas.",
            "links": [city_link(p) for p in ordered],
            "footer": back,
        },
    ]
    for (text, href), letter in zip(letter_links, letters, strict=True):
        members = [city_link(p) for p in ordered if p["name"][0].upper() == letter]
        pages.append(
            {
                "path": href.lstrip("/"),
                "title": text,
                "intro": f"Cities whose name starts with {letter}.",
                "links": members,
                "footer": back,
            }
        )
    for region, (_, href) in zip(regions, region_links, strict=True):
        pages.append(
            {
                "path": href.lstrip("/"),
                "title": region,
                "intro": f"Cities of the {region} region.",
                "links": [city_link(p) for p in ordered if p["region"] == region],
                "footer": back,
            }
        )
    for p in places:
        pages.append(
            {
                "path": f"cities/{slug(p['name'])}.html",
                "title": p["name"],
                "intro": f"{p['name']} lies in the {p['region']} region.",
                "facts": [
                    ["Mayor", p["mayor"]],
                    ["Elevation", f"{p['elevation_m']} m"],
                    ["Landmark", p["landmark"]],
                ],
                "footer": [[p["region"], f"/regions/{slug(p['region'])}.html"], *back],
                "place": p["name"],
            }
        )
    return pages


def page_links(world: World, path: str) -> list[str]:
    """Link texts of one atlas page in the order the browser numbers them (from 1)."""
    for page in world.web_pages:
        if page["path"] == path:
            return [text for text, _ in page.get("links", []) + page.get("footer", [])]
    raise KeyError(f"no atlas page {path!r}")


def atlas_route(world: World, place: str) -> tuple[int, int]:
    """(number of the letter link on the front page, number of `place` on that letter page)."""
    front = page_links(world, "index.html")
    first = front.index(letter_link(place)) + 1
    letter_page = f"letters/{place[:1].lower()}.html"
    return first, page_links(world, letter_page).index(place) + 1
