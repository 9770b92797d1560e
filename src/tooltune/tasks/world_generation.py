"""Drawing a world: every entity and fact of a seeded world, before anything is written.

Every fact is consistent across the sources it will be written to (the quarterly sales sum to
the revenue, a company's chief executive is one of the people), entities are divided into
train/validation/test pools, and links between entities stay inside a pool, so a test task never
names a training entity. Drawing is deterministic: the same seed and counts give the same world.
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tooltune.tasks.world_atlas import web_pages
from tooltune.tasks.world_data import World
from tooltune.tasks.world_names import Names, slug

POOLS = ("train", "validation", "test")
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


def generate_world(root: str | Path, seed: int = 0, size: str = "default", **counts: Any) -> World:
    """All entities and facts of the world, without writing anything.

    `size` names an entry of `WORLD_SIZES`; keyword counts (`places=300`, `routes=(40, 8, 8)`)
    replace single entries of it."""
    n = world_counts(size, **counts)
    name_of_size = size if not counts else "custom"
    rng = random.Random(f"tooltune-world-{seed}")
    names = Names(rng)
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
    pages = web_pages(places, regions)
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
        web_pages=pages,
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
