"""The built-in task world: an invented, seeded set of places, companies, people, products,
orders, flights, files, images and web pages, written to every source the tools read.

Names come from a syllable generator, so no fact can be answered from a model's memory: the only
way to know Zentrix's chief executive is to look it up. Every fact is consistent across sources
(the quarterly sales files sum to the revenue in the database, the articles quote the same
numbers as the tables), and `world.json` keeps the ground truth the task generators and checkers
read. Building is deterministic: the same seed gives byte-identical text files and the same rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from html import escape
from pathlib import Path
from typing import Any

WORLD_VERSION = 3  # 3: flight booking ids numbered per episode
# A world built by other generator code is stale: cached worlds rebuild when this file changes.
GENERATOR = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
POOLS = ("train", "validation", "test")

_ONSETS = ["b", "br", "d", "dr", "f", "g", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t",
           "tr", "v", "z", "th", "sh", "qu", "h", "j", "gr", "pl"]  # fmt: skip
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou", "ia"]
_CODAS = ["", "", "", "n", "r", "l", "s", "x", "th", "nd", "rk", "m", "v"]
_PLACE_ENDINGS = ["holt", "mere", "ford", "vik", "ara", "burg", "stad", "wick", "lon", "ria", "dal"]
_COMPANY_SUFFIXES = ["", "", "", " Labs", " Systems", " Group", " Works", " Dynamics"]
_INDUSTRIES = ["logistics", "software", "biotech", "energy", "retail", "aerospace", "foods",
               "textiles", "robotics", "finance"]  # fmt: skip
_OCCUPATIONS = ["architect", "composer", "surgeon", "novelist", "investor", "chemist", "sculptor",
                "economist", "chef", "astronomer"]  # fmt: skip
_PRODUCT_NOUNS = ["Kettle", "Lamp", "Backpack", "Drone", "Blender", "Headset", "Bicycle", "Tent",
                  "Camera", "Watch", "Speaker", "Heater", "Scooter", "Router", "Desk"]  # fmt: skip
_CATEGORIES = {"Kettle": "kitchen", "Blender": "kitchen", "Lamp": "home", "Heater": "home",
               "Desk": "home", "Backpack": "outdoor", "Tent": "outdoor", "Bicycle": "outdoor",
               "Scooter": "outdoor", "Drone": "electronics", "Headset": "electronics",
               "Camera": "electronics", "Watch": "electronics", "Speaker": "electronics",
               "Router": "electronics"}  # fmt: skip
_DEPARTMENTS = ["marketing", "research", "operations", "legal", "sales", "design"]
_AIRLINES = ["Skyvane", "Aeroluma", "Northdrift Air", "Corvalis Airways", "Bluepeak"]
_AIRLINE_CODES = {"Skyvane": "SV", "Aeroluma": "AL", "Northdrift Air": "ND",
                  "Corvalis Airways": "CA", "Bluepeak": "BP"}  # fmt: skip
_LANDMARK_KINDS = ["Old Harbour", "Clock Tower", "Glass Bridge", "Salt Market", "Stone Library",
                   "Lantern Gardens", "Copper Dome", "River Steps"]  # fmt: skip
SHAPE_KINDS = ["circle", "square", "triangle"]
SHAPE_COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black"]
LETTER_LINK = "Cities starting with {letter}"  # atlas index links to one page per letter

# Entity counts of the built-in worlds. `default` is large enough that a small model trained on
# the train pool cannot memorise its entities and has to copy names and values from the prompt
# and the tool results; `small` keeps the old, quick world for tests that only need some world.
# Pairs of (train, validation, test) counts are per pool.
WORLD_SIZES: dict[str, dict[str, Any]] = {
    "small": {
        "places": 40, "companies": 40, "people": 60, "products": 30, "orders": 160,
        "images": 16, "news": 30, "regions": 5, "airports": (6, 3, 3), "routes": (10, 3, 3),
        "warehouses": (2, 2, 2),
    },
    "default": {
        "places": 200, "companies": 200, "people": 300, "products": 120, "orders": 800,
        "images": 60, "news": 100, "regions": 8, "airports": (12, 5, 5), "routes": (30, 10, 10),
        "warehouses": (6, 2, 2),
    },
}  # fmt: skip


def world_counts(size: str = "default", **overrides: Any) -> dict[str, Any]:
    """The entity counts of a named size, with explicit counts (`places=500`) replacing some."""
    if size not in WORLD_SIZES:
        raise ValueError(f"unknown world size {size!r}; sizes: {', '.join(WORLD_SIZES)}")
    counts = dict(WORLD_SIZES[size])
    unknown = set(overrides) - set(counts)
    if unknown:
        raise ValueError(f"unknown world counts: {', '.join(sorted(unknown))}")
    counts.update({k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    if counts["people"] < counts["companies"]:
        raise ValueError("every company needs a chief executive: people >= companies")
    for key in ("airports", "routes", "warehouses"):
        if len(counts[key]) != len(POOLS):
            raise ValueError(f"{key} needs one count per pool ({', '.join(POOLS)})")
    for pool, n_air, n_routes in zip(POOLS, counts["airports"], counts["routes"], strict=True):
        if n_routes > n_air * (n_air - 1):
            raise ValueError(f"{n_routes} {pool} routes need more than {n_air} airports")
    return counts


def letter_link(name: str) -> str:
    """Text of the atlas link to the page of the cities whose names start like `name`."""
    return LETTER_LINK.format(letter=name[:1].upper())


@dataclass
class World:
    """The ground truth of one generated world, plus the paths of its sources."""

    root: Path
    seed: int
    today: date
    regions: list[str]
    places: list[dict]
    companies: list[dict]
    people: list[dict]
    products: list[dict]
    orders: list[dict]
    flights: list[dict]
    routes: list[dict]  # {"origin", "destination", "pool"}
    inventories: list[dict]  # {"path", "warehouse", "items": [{"product_id","product","stock"}]}
    sales_reports: list[dict]  # {"path", "company", "quarters": {"Q1": musd, ...}}
    budgets: list[dict]  # {"path", "company", "department", "amount", "moved_from"|None}
    images: list[dict]  # {"path", "shapes": [...]}
    web_pages: list[dict]  # {"path", "title", "intro", "facts", "links", "footer"[, "place"]}
    size: str = "default"
    counts: dict[str, Any] = field(default_factory=dict)
    version: int = WORLD_VERSION
    generator: str = GENERATOR
    _index: dict[str, dict[str, dict]] = field(default_factory=dict, repr=False, compare=False)

    # -- paths --------------------------------------------------------------------------------
    @property
    def corpus_dir(self) -> Path:
        return self.root / "corpus"

    @property
    def index_dir(self) -> Path:
        return self.root / "search_index"

    @property
    def sandbox_dir(self) -> Path:
        return self.root / "sandbox"

    @property
    def db_path(self) -> Path:
        return self.root / "world.db"

    @property
    def web_dir(self) -> Path:
        return self.root / "web"

    @property
    def flights_db(self) -> Path:
        return self.root / "flights.db"

    @property
    def json_path(self) -> Path:
        return self.root / "world.json"

    # -- lookups ------------------------------------------------------------------------------
    def _lookup(self, kind: str, key: str = "name") -> dict[str, dict]:
        if kind not in self._index:
            self._index[kind] = {row[key]: row for row in getattr(self, kind)}
        return self._index[kind]

    def place(self, name: str) -> dict:
        return self._lookup("places")[name]

    def company(self, name: str) -> dict:
        return self._lookup("companies")[name]

    def person(self, name: str) -> dict:
        return self._lookup("people")[name]

    def product(self, product_id: str) -> dict:
        return self._lookup("products", "id")[product_id]

    def flight(self, flight_id: str) -> dict:
        return self._lookup("flights", "id")[flight_id]

    def in_pool(self, kind: str, pool: str) -> list[dict]:
        """Entities of one kind (places, companies, people) held out for one split pool."""
        return [row for row in getattr(self, kind) if row["pool"] == pool]

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_index")
        data.pop("root")
        data["today"] = self.today.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: str | Path) -> World:
        data = dict(data)
        data["today"] = date.fromisoformat(data["today"])
        return cls(root=Path(root), **data)


def load_world(world_dir: str | Path) -> World:
    """Read `world.json` of a built world."""
    world_dir = Path(world_dir)
    data = json.loads((world_dir / "world.json").read_text(encoding="utf-8"))
    if data.get("version") != WORLD_VERSION:
        raise ValueError(f"{world_dir} holds a world of another version; rebuild it")
    return World.from_dict(data, world_dir)


def world_is_built(world_dir: str | Path, seed: int | None = None, size: str | None = None) -> bool:
    """True when `world_dir` holds a complete world of this generator (of `seed` and `size`,
    when given)."""
    path = Path(world_dir) / "world.json"
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if data.get("version") != WORLD_VERSION or data.get("generator") != GENERATOR:
        return False
    if seed is not None and data.get("seed") != seed:
        return False
    if size is not None and data.get("size") != size:
        return False
    return all(
        (Path(world_dir) / p).exists()
        for p in ("corpus", "sandbox", "world.db", "web", "flights.db")
    )


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


class _Names:
    """Invented, unique names; no name is a substring of another, so text checks stay exact."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: list[str] = []
        self._lowered: list[str] = []

    def _syllables(self, n: int) -> str:
        parts = []
        for i in range(n):
            coda = self.rng.choice(_CODAS) if i == n - 1 else ""
            parts.append(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + coda)
        return "".join(parts)

    def _ok(self, name: str) -> bool:
        low = name.lower()
        words = low.split()
        if any(len(w) < 4 for w in words) or re.search(r"(.)\1\1", low):
            return False
        return all(low not in u and u not in low for u in self._lowered)

    def take(self, make) -> str:
        for _ in range(1000):
            name = make()
            if self._ok(name):
                self.used.append(name)
                self._lowered.append(name.lower())
                return name
        raise RuntimeError("name generator exhausted")

    def word(self, n: int = 2) -> str:
        return self._syllables(n).capitalize()

    def place(self) -> str:
        return self.take(
            lambda: (
                self._syllables(self.rng.choice([1, 2])) + self.rng.choice(_PLACE_ENDINGS)
            ).capitalize()
        )

    def company(self) -> str:
        return self.take(lambda: self.word(2) + self.rng.choice(_COMPANY_SUFFIXES))

    def person(self) -> str:
        return self.take(lambda: f"{self.word(2)} {self.word(self.rng.choice([2, 3]))}")

    def region(self) -> str:
        return self.take(lambda: self.word(2) + self.rng.choice(["ia", "land", "mark"]))

    def brand(self) -> str:
        return self.take(lambda: self.word(2))


def slug(name: str) -> str:
    """File-name form of a name: lower case, words joined by underscores."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _distinct(rng: random.Random, n: int, draw) -> list:
    values: list = []
    while len(values) < n:
        v = draw()
        if v not in values:
            values.append(v)
    return values


def _assign_pools(rng: random.Random, items: list[dict]) -> None:
    """60/20/20 split of entities into train/validation/test pools."""
    order = list(range(len(items)))
    rng.shuffle(order)
    n_train, n_val = int(len(items) * 0.6), int(len(items) * 0.2)
    for rank, i in enumerate(order):
        items[i]["pool"] = (
            "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
        )


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def generate_world(root: str | Path, seed: int = 0, size: str = "default", **counts: Any) -> World:
    """All entities and facts of the world, without writing anything.

    `size` names an entry of `WORLD_SIZES`; keyword counts (`places=300`, `routes=(40, 8, 8)`)
    replace single entries of it."""
    n = world_counts(size, **counts)
    name_of_size = size if not counts else "custom"
    rng = random.Random(f"tooltune-world-{seed}")
    names = _Names(rng)
    today = date(2025, 3, 3) + timedelta(days=rng.randrange(0, 300))
    regions = [names.region() for _ in range(n["regions"])]

    n_places, n_people, n_companies = n["places"], n["people"], n["companies"]
    pops = _distinct(rng, n_places, lambda: rng.randrange(12_000, 2_400_000))
    places = []
    for i in range(n_places):
        places.append(
            {
                "name": names.place(),
                "region": regions[i % len(regions)],
                "population": pops[i],
                "area_km2": round(rng.uniform(20, 900), 1),
                "founded": rng.randrange(1050, 1950),
                "elevation_m": rng.randrange(2, 2400),
                "mayor": "",
                "landmark": "",
            }
        )
    for p in places:
        p["mayor"] = names.person()
        p["landmark"] = f"{p['name']} {rng.choice(_LANDMARK_KINDS)}"
    _assign_pools(rng, places)
    by_pool = {pool: [p for p in places if p["pool"] == pool] for pool in POOLS}
    # Airports and warehouses come from every pool, so flight and stock tasks of one split
    # never name another split's cities.
    airports = {pool: by_pool[pool][:k] for pool, k in zip(POOLS, n["airports"], strict=True)}
    warehouses = {
        pool: by_pool[pool][len(airports[pool]) : len(airports[pool]) + k]
        for pool, k in zip(POOLS, n["warehouses"], strict=True)
    }
    for pool in POOLS:
        if len(airports[pool]) < 2 or len(warehouses[pool]) < 1:
            raise ValueError(f"too few {pool} places for the airports and warehouses asked for")

    worths = _distinct(rng, n_people, lambda: round(rng.uniform(0.5, 9000), 1))
    people = []
    for i in range(n_people):
        people.append(
            {
                "name": names.person(),
                "age": rng.randrange(24, 86),
                "net_worth_musd": worths[i],
                "city": "",
                "occupation": rng.choice(_OCCUPATIONS),
            }
        )

    revenues = _distinct(rng, n_companies, lambda: round(rng.uniform(5, 9500), 1))
    companies = []
    for i in range(n_companies):
        ceo = people[i]
        company = {
            "name": names.company(),
            "industry": rng.choice(_INDUSTRIES),
            "ceo": ceo["name"],
            "hq": "",
            "revenue_musd": revenues[i],
            "founded": rng.randrange(1890, 2021),
            "employees": rng.randrange(40, 90_000),
        }
        ceo["occupation"] = f"chief executive of {company['name']}"
        companies.append(company)
    _assign_pools(rng, companies)
    for i, company in enumerate(companies):  # a chief executive is held out with the company
        people[i]["pool"] = company["pool"]
    _assign_pools(rng, people[n_companies:])  # the slice shares the dicts
    # Links stay inside a pool: a test company is headquartered in a test city.
    for company in companies:
        pool = company["pool"]
        company["hq"] = rng.choice(airports[pool] if rng.random() < 0.4 else by_pool[pool])["name"]
    for person in people:
        person["city"] = rng.choice(by_pool[person["pool"]])["name"]

    products = []
    for i in range(n["products"]):
        noun = rng.choice(_PRODUCT_NOUNS)
        products.append(
            {
                "id": f"P{1001 + i}",
                "name": f"{names.brand()} {noun}",
                "maker": rng.choice(companies)["name"],
                "price": round(rng.uniform(9, 1900), 2),
                "category": _CATEGORIES[noun],
            }
        )
    _assign_pools(rng, products)
    orders = []
    for i in range(n["orders"]):
        orders.append(
            {
                "id": f"O{5001 + i}",
                "product_id": rng.choice(products)["id"],
                "customer": rng.choice(people)["name"],
                "quantity": rng.randrange(1, 25),
                "order_date": (today - timedelta(days=rng.randrange(1, 90))).isoformat(),
                "status": rng.choice(["shipped", "shipped", "pending", "cancelled"]),
            }
        )

    routes_per_pool = dict(zip(POOLS, n["routes"], strict=True))
    flights, routes = _make_flights(rng, airports, routes_per_pool, today)
    inventories = _make_inventories(rng, warehouses, products)
    sales_reports = _make_sales_reports(rng, companies)
    budgets = _make_budgets(rng, companies)
    images = _make_images(rng, n["images"])
    for items in (orders, images):
        _assign_pools(rng, items)
    pool_of = {c["name"]: c["pool"] for c in companies}
    for item in budgets + sales_reports:  # files about a company are held out with it
        item["pool"] = pool_of[item["company"]]
    web_pages = _web_pages(places, regions)
    return World(
        root=Path(root),
        seed=seed,
        today=today,
        regions=regions,
        places=places,
        companies=companies,
        people=people,
        products=products,
        orders=orders,
        flights=flights,
        routes=routes,
        inventories=inventories,
        sales_reports=sales_reports,
        budgets=budgets,
        images=images,
        web_pages=web_pages,
        size=name_of_size,
        counts={k: list(v) if isinstance(v, tuple) else v for k, v in n.items()},
    )


def _make_flights(
    rng: random.Random,
    airports: dict[str, list[dict]],
    routes_per_pool: dict[str, int],
    today: date,
) -> tuple[list[dict], list[dict]]:
    """Flights on routes between the airport cities of each pool, every day of the next two
    weeks.

    On about half of the route-days the cheapest flight `sells_out` (its last seat goes to
    someone else right after a search shows it), so booking tasks meet a planted failure."""
    route_rows: list[dict] = []
    for pool in POOLS:
        names = [p["name"] for p in airports[pool]]
        pairs = [(a, b) for a in names for b in names if a != b]
        for a, b in rng.sample(pairs, routes_per_pool[pool]):
            route_rows.append({"origin": a, "destination": b, "pool": pool})
    routes = [(r["origin"], r["destination"]) for r in route_rows]
    flights: list[dict] = []
    number = 100
    for origin, destination in routes:
        for offset in range(1, 15):
            day = (today + timedelta(days=offset)).isoformat()
            n = rng.randrange(3, 6)
            prices = _distinct(rng, n, lambda: rng.randrange(59, 900))
            starts = _distinct(rng, n, lambda: rng.randrange(6 * 12, 22 * 12) * 5)
            sells_cheapest = rng.random() < 0.5
            cheapest = min(prices)
            for price, start in zip(prices, starts, strict=True):
                airline = rng.choice(_AIRLINES)
                number += rng.randrange(1, 7)
                duration = rng.randrange(45, 300)
                end = (start + duration) % (24 * 60)
                sells_out = sells_cheapest and price == cheapest
                flights.append(
                    {
                        "id": f"{_AIRLINE_CODES[airline]}{number}",
                        "origin": origin,
                        "destination": destination,
                        "date": day,
                        "departure": f"{start // 60:02d}:{start % 60:02d}",
                        "arrival": f"{end // 60:02d}:{end % 60:02d}",
                        "airline": airline,
                        "price": float(price),
                        "seats": 1 if sells_out else rng.randrange(2, 40),
                        "sells_out": sells_out,
                    }
                )
    return flights, route_rows


def _make_inventories(
    rng: random.Random, warehouses: dict[str, list[dict]], products: list[dict]
) -> list[dict]:
    """Stock lists of each pool's warehouses, over that pool's products only. The warehouses of
    a pool share a few core products, so "add the stock of two warehouses" always has an
    answer; the rest of each list is drawn at random."""
    inventories = []
    for pool in POOLS:
        stock = [p for p in products if p["pool"] == pool] or products
        core = rng.sample(stock, min(3, len(stock)))
        for place in warehouses[pool]:
            others = [p for p in stock if p not in core]
            items = core + rng.sample(others, min(5, len(others)))
            items = sorted(items, key=lambda p: p["id"])
            inventories.append(
                {
                    "path": f"inventory/{slug(place['name'])}_warehouse.csv",
                    "warehouse": place["name"],
                    "pool": pool,
                    "items": [
                        {
                            "product_id": p["id"],
                            "product": p["name"],
                            "stock": rng.randrange(0, 500),
                        }
                        for p in items
                    ],
                }
            )
    return inventories


def _make_sales_reports(rng: random.Random, companies: list[dict]) -> list[dict]:
    """Quarterly sales that sum exactly (to 0.1) to each company's annual revenue."""
    reports = []
    for company in companies[::2]:
        total = round(company["revenue_musd"] * 10)
        weights = [rng.uniform(0.6, 1.4) for _ in range(4)]
        parts = [int(total * w / sum(weights)) for w in weights]
        parts[-1] = total - sum(parts[:-1])
        reports.append(
            {
                "path": f"reports/{slug(company['name'])}_quarterly_sales.csv",
                "company": company["name"],
                "quarters": {f"Q{i + 1}": parts[i] / 10 for i in range(4)},
            }
        )
    return reports


def _make_budgets(rng: random.Random, companies: list[dict]) -> list[dict]:
    """Two department budgets per company; a third of them were moved to the archive, so a task
    naming the original path meets a missing file and must search for the right one."""
    budgets = []
    for company in companies:
        for department in rng.sample(_DEPARTMENTS, 2):
            original = f"budgets/{slug(company['name'])}_{department}.txt"
            moved = rng.random() < 0.35
            path = f"archive/{rng.choice(['2023', '2024'])}/{slug(company['name'])}_{department}_budget_final.txt"
            budgets.append(
                {
                    "path": path if moved else original,
                    "company": company["name"],
                    "department": department,
                    "amount": rng.randrange(20, 4000) * 1000,
                    "moved_from": original if moved else None,
                }
            )
    return budgets


def _make_images(rng: random.Random, n: int = 16, size: int = 256) -> list[dict]:
    """Scenes of non-overlapping shapes on a 4x4 grid of 64 px cells."""
    images = []
    width = max(2, len(str(n)))
    for i in range(n):
        cells = rng.sample(range(16), rng.randrange(3, 7))
        shapes = []
        for cell in sorted(cells):
            row, col = divmod(cell, 4)
            shapes.append(
                {
                    "kind": rng.choice(SHAPE_KINDS),
                    "color": rng.choice(SHAPE_COLORS),
                    "x": col * 64 + 32,
                    "y": row * 64 + 32,
                    "size": rng.randrange(30, 46),
                }
            )
        images.append(
            {"path": f"images/scene_{i + 1:0{width}d}.png", "shapes": shapes, "size": size}
        )
    return images


def _web_pages(places: list[dict], regions: list[str]) -> list[dict]:
    """The Regional Atlas as data: every page's intro, facts and links in display order.

    The front page links to one index page per initial letter (a page of a few dozen cities
    fits in a tool observation, where one list of every city would not), to the regions, and to
    the full list of cities. `_write_web` renders exactly these pages, so link numbers the task
    generators compute from here are the numbers the browser shows."""
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


# --------------------------------------------------------------------------------------------
# Writing the sources
# --------------------------------------------------------------------------------------------


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _money(musd: float) -> str:
    return f"${musd:,.1f} million"


def _articles(world: World) -> list[dict]:
    """Short articles (under 30 words each), so a search snippet quotes all of the facts as
    `Field: value.` sentences."""
    docs = []
    for c in world.companies:
        text = (
            f"{c['name']} is {_a(c['industry'])} company. Headquarters: {c['hq']}. "
            f"Chief executive: {c['ceo']}. Revenue: {_money(c['revenue_musd'])}. "
            f"Founded: {c['founded']}. Employees: {c['employees']:,}."
        )
        docs.append({"id": f"company-{slug(c['name'])}", "title": c["name"], "text": text})
    for p in world.people:
        text = (
            f"{p['name']} is {_a(p['occupation'])}. Home city: {p['city']}. "
            f"Age: {p['age']}. Net worth: {_money(p['net_worth_musd'])}."
        )
        docs.append({"id": f"person-{slug(p['name'])}", "title": p["name"], "text": text})
    for p in world.places:
        text = (
            f"{p['name']} is a city in the {p['region']} region. "
            f"Population: {p['population']:,}. Area: {p['area_km2']:,.1f} km2. "
            f"Founded: {p['founded']}."
        )
        docs.append({"id": f"place-{slug(p['name'])}", "title": p["name"], "text": text})
    rng = random.Random(f"tooltune-news-{world.seed}")
    for i in range(world.counts.get("news", 30)):  # distractors: news without the facts
        c = rng.choice(world.companies)
        p = rng.choice(world.places)
        text = (
            f"{c['name']} announced a new office in {p['name']} this week. Analysts expect "
            "hiring in the region to grow over the coming year; the company declined to comment."
        )
        docs.append(
            {
                "id": f"news-{i + 1:03d}",
                "title": f"{c['name']} expands to {p['name']}",
                "text": text,
            }
        )
    return docs


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _write_sandbox(world: World) -> None:
    root = world.sandbox_dir
    files: dict[str, str] = {}
    for inv in world.inventories:
        rows = [[it["product_id"], it["product"], it["stock"]] for it in inv["items"]]
        files[inv["path"]] = _csv_text(["product_id", "product", "stock"], rows)
    for rep in world.sales_reports:
        rows = [[q, f"{v:.1f}"] for q, v in rep["quarters"].items()]
        files[rep["path"]] = _csv_text(["quarter", "sales_musd"], rows)
    for b in world.budgets:
        files[b["path"]] = (
            f"Budget memo\nCompany: {b['company']}\nDepartment: {b['department']}\n"
            f"Approved budget: ${b['amount']:,}\nStatus: final\n"
        )
    files["README.txt"] = (
        "Company shared drive.\n"
        "inventory/  stock counts per warehouse (CSV)\n"
        "reports/    quarterly sales per company (CSV, million USD)\n"
        "budgets/    department budget memos (older ones are under archive/)\n"
        "images/     scene images\n"
    )
    for rel, text in sorted(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    from tooltune.tools.images import draw_shapes

    for img in world.images:
        path = root / img["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_shapes(path, img["shapes"], size=(img["size"], img["size"]))


def _write_db(world: World) -> None:
    path = world.db_path
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    try:
        con.executescript(
            """
            CREATE TABLE places (name TEXT PRIMARY KEY, region TEXT, population INTEGER,
                area_km2 REAL, founded INTEGER);
            CREATE TABLE companies (name TEXT PRIMARY KEY, industry TEXT, ceo TEXT, hq_city TEXT,
                revenue_musd REAL, founded INTEGER, employees INTEGER);
            CREATE TABLE people (name TEXT PRIMARY KEY, age INTEGER, net_worth_musd REAL,
                city TEXT, occupation TEXT);
            CREATE TABLE products (id TEXT PRIMARY KEY, name TEXT, maker TEXT, price REAL,
                category TEXT);
            CREATE TABLE orders (id TEXT PRIMARY KEY, product_id TEXT REFERENCES products(id),
                customer TEXT, quantity INTEGER, order_date TEXT, status TEXT);
            """
        )
        con.executemany(
            "INSERT INTO places VALUES (?, ?, ?, ?, ?)",
            [
                (p["name"], p["region"], p["population"], p["area_km2"], p["founded"])
                for p in world.places
            ],
        )
        con.executemany(
            "INSERT INTO companies VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(c["name"], c["industry"], c["ceo"], c["hq"], c["revenue_musd"], c["founded"], c["employees"])
             for c in world.companies],
        )  # fmt: skip
        con.executemany(
            "INSERT INTO people VALUES (?, ?, ?, ?, ?)",
            [
                (p["name"], p["age"], p["net_worth_musd"], p["city"], p["occupation"])
                for p in world.people
            ],
        )
        con.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?, ?)",
            [(p["id"], p["name"], p["maker"], p["price"], p["category"]) for p in world.products],
        )
        con.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)",
            [(o["id"], o["product_id"], o["customer"], o["quantity"], o["order_date"], o["status"])
             for o in world.orders],
        )  # fmt: skip
        con.commit()
    finally:
        con.close()


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title></head>\n<body>\n<h1>{escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def _link_list(items: list[tuple[str, str]]) -> str:
    lines = "\n".join(f'<li><a href="{href}">{escape(text)}</a></li>' for text, href in items)
    return f"<ul>\n{lines}\n</ul>"


def _render_page(page: dict) -> str:
    body = f"<p>{escape(page['intro'])}</p>"
    if page.get("facts"):
        items = "\n".join(f"<li>{escape(k)}: {escape(str(v))}</li>" for k, v in page["facts"])
        body += f"\n<ul>\n{items}\n</ul>"
    if page.get("links"):
        body += "\n" + _link_list([(text, href) for text, href in page["links"]])
    if page.get("footer"):
        footer = " | ".join(f'<a href="{href}">{escape(text)}</a>' for text, href in page["footer"])
        body += f"\n<p>{footer}</p>"
    return _page(page["title"], body)


def _write_web(world: World) -> None:
    for page in world.web_pages:
        path = world.web_dir / page["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_render_page(page), encoding="utf-8")


def build_world(
    world_dir: str | Path, seed: int = 0, size: str = "default", **counts: Any
) -> World:
    """Generate the world of `seed` and `size` (a `WORLD_SIZES` name; keyword counts override
    single entries) and write every source under `world_dir`.

    Existing generated sources are replaced; the search index directory is left for
    `SearchIndex.build` to refresh from the corpus fingerprint."""
    from tooltune.tools.flights import create_flight_db

    root = Path(world_dir)
    root.mkdir(parents=True, exist_ok=True)
    world = generate_world(root, seed, size, **counts)
    for sub in ("corpus", "sandbox", "web"):
        shutil.rmtree(root / sub, ignore_errors=True)
    world.corpus_dir.mkdir()
    lines = [json.dumps(doc, ensure_ascii=False, sort_keys=True) for doc in _articles(world)]
    (world.corpus_dir / "articles.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_sandbox(world)
    _write_db(world)
    _write_web(world)
    create_flight_db(world.flights_db, [{k: v for k, v in f.items()} for f in world.flights])
    world.json_path.write_text(
        json.dumps(world.to_dict(), indent=1, sort_keys=True), encoding="utf-8"
    )
    return world


def ensure_world(world_dir: str | Path, seed: int | None = None, size: str | None = None) -> World:
    """Load the world in `world_dir`, building it first when it is missing or stale.

    A new world is built in a temporary sibling directory and renamed into place, so two
    processes that start at once never see (or write) a half-built world. `seed` and `size`
    None mean "whatever world is there" (seed 0, size default when one has to be built)."""
    root = Path(world_dir)
    if size is not None:
        world_counts(size)  # an unknown size fails here, before anything is built
    if world_is_built(root, seed, size):
        return load_world(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    build_world(tmp, 0 if seed is None else seed, size or "default")
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        try:
            os.replace(root, old)
        except OSError:
            old = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another process put a world there first
        shutil.rmtree(tmp, ignore_errors=True)
        if not world_is_built(root, seed, size):
            raise
    return load_world(root)
