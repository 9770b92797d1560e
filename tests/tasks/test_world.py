import hashlib
import json
import sqlite3

import pytest

from tooltune.tasks.templates.facts import FACTS, SEARCH_WORDS
from tooltune.tasks.world import build_world, ensure_world, load_world, world_is_built
from tooltune.tasks.world_atlas import atlas_route, letter_link
from tooltune.tasks.world_generation import WORLD_SIZES, generate_world
from tooltune.tools.browser import html_to_text
from tooltune.tools.images import detect_shapes
from tooltune.tools.search import SearchIndex


def _digest(root):
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix != ".db" and "search_index" not in path.parts:
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _rows(db):
    con = sqlite3.connect(db)
    try:
        tables = [
            r[0]
            for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}
    finally:
        con.close()


def test_same_seed_gives_identical_files(tmp_path, world_dir):
    again = build_world(tmp_path / "again", seed=0)
    assert _digest(world_dir) == _digest(again.root)
    assert _rows(world_dir / "world.db") == _rows(again.db_path)
    assert _rows(world_dir / "flights.db") == _rows(again.flights_db)
    assert world_is_built(again.root, seed=0) and not world_is_built(again.root, seed=1)


def test_other_seed_gives_another_world(world):
    other = generate_world("/unused", seed=1)
    assert {c["name"] for c in other.companies}.isdisjoint({c["name"] for c in world.companies})


def test_sizes_and_unique_names(world):
    counts = WORLD_SIZES["default"]
    assert world.size == "default"
    assert (len(world.places), len(world.companies), len(world.people)) == (200, 200, 300)
    assert (len(world.products), len(world.orders), len(world.images)) == (
        counts["products"], counts["orders"], counts["images"]
    )  # fmt: skip
    assert len(world.routes) == sum(counts["routes"]) and len(world.regions) == counts["regions"]
    names = [e["name"] for kind in ("places", "companies", "people") for e in getattr(world, kind)]
    names += [p["mayor"] for p in world.places]
    assert len(set(names)) == len(names)
    lowered = [n.lower() for n in names]
    # no name hides inside another, so text checks on names are exact
    assert not [(a, b) for a in lowered for b in lowered if a != b and a in b]


def test_facts_agree_across_sources(world):
    con = sqlite3.connect(world.db_path)
    for c in world.companies:
        row = con.execute(
            "SELECT ceo, hq_city, revenue_musd FROM companies WHERE name = ?", (c["name"],)
        ).fetchone()
        assert row == (c["ceo"], c["hq"], c["revenue_musd"])
        assert world.person(c["ceo"])["occupation"] == f"chief executive of {c['name']}"
    con.close()
    for rep in world.sales_reports:  # quarterly files sum to the annual revenue
        assert (
            abs(sum(rep["quarters"].values()) - world.company(rep["company"])["revenue_musd"])
            < 0.05
        )
        text = (world.sandbox_dir / rep["path"]).read_text()
        assert all(f"{q},{v:.1f}" in text for q, v in rep["quarters"].items())
    docs = {
        d["id"]: d
        for d in map(json.loads, (world.corpus_dir / "articles.jsonl").read_text().splitlines())
    }
    place = world.places[3]
    assert f"Population: {place['population']:,}." in docs[f"place-{place['name'].lower()}"]["text"]
    for b in world.budgets:
        assert f"Approved budget: ${b['amount']:,}" in (world.sandbox_dir / b["path"]).read_text()
        if b["moved_from"]:
            assert not (world.sandbox_dir / b["moved_from"]).exists()
    page = (world.web_dir / "cities" / f"{place['name'].lower()}.html").read_text()
    assert f"Mayor: {place['mayor']}" in page


def test_pools_partition_entities(world):
    for kind in ("places", "companies", "people", "routes", "images"):
        pools = [e["pool"] for e in getattr(world, kind)]
        assert set(pools) == {"train", "validation", "test"}
    ceo_pools = {c["ceo"]: c["pool"] for c in world.companies}
    assert all(world.person(name)["pool"] == pool for name, pool in ceo_pools.items())


def test_flights_plant_sold_out_cheapest(world):
    by_day = {}
    for f in world.flights:
        by_day.setdefault((f["origin"], f["destination"], f["date"]), []).append(f)
    planted = [fs for fs in by_day.values() if any(f["sells_out"] for f in fs)]
    assert planted and len(planted) < len(by_day)
    for fs in planted:
        cheapest = min(fs, key=lambda f: f["price"])
        assert cheapest["sells_out"] and cheapest["seats"] == 1
        assert sum(f["sells_out"] for f in fs) == 1
    assert all(f["date"] > world.today.isoformat() for f in world.flights)


def test_images_match_their_shapes(world):
    for img in world.images[:6]:
        found = detect_shapes(world.sandbox_dir / img["path"])
        got = sorted((s["kind"], s["color"]) for s in found["shapes"])
        assert got == sorted((s["kind"], s["color"]) for s in img["shapes"])


def test_search_snippets_quote_facts(world):
    index = SearchIndex.build(world.corpus_dir, world.index_dir)
    company = world.companies[5]
    hits = index.search(f"{company['name']} chief executive", 3)
    hit = next(h for h in hits if h.title == company["name"])
    assert f"Chief executive: {company['ceo']}." in hit.snippet


def test_world_json_round_trip(world_dir, world):
    loaded = load_world(world_dir)
    assert loaded.to_dict() == world.to_dict()
    assert loaded.today == world.today


def test_small_size_and_explicit_counts():
    small = generate_world("/unused", seed=0, size="small")
    assert small.size == "small"
    assert (len(small.places), len(small.companies), len(small.people)) == (40, 40, 60)
    custom = generate_world("/unused", seed=0, size="small", places=50, routes=(8, 2, 2))
    assert custom.size == "custom" and len(custom.places) == 50 and len(custom.routes) == 12
    with pytest.raises(ValueError, match="unknown world size"):
        generate_world("/unused", size="huge")
    with pytest.raises(ValueError, match="unknown world counts"):
        generate_world("/unused", planets=3)
    with pytest.raises(ValueError, match="chief executive"):
        generate_world("/unused", companies=80, people=60)


def test_cached_worlds_rebuild_when_stale(tmp_path):
    root = tmp_path / "cached"
    world = ensure_world(root, seed=2, size="small")
    assert world_is_built(root, seed=2, size="small") and not world_is_built(root, size="default")
    data = json.loads(world.json_path.read_text())
    data["generator"] = "older-generator"  # as if other world code had built it
    world.json_path.write_text(json.dumps(data))
    assert not world_is_built(root)
    again = ensure_world(root, seed=2, size="small")
    assert world_is_built(root, seed=2, size="small") and again.to_dict() == world.to_dict()
    bigger = ensure_world(root, seed=2, size="default")  # another size asked for: rebuilt
    assert bigger.size == "default" and len(bigger.places) == 200


def test_a_seed_that_is_not_an_int_is_refused_before_anything_is_rebuilt(tmp_path):
    from tooltune.config import AgentConfig
    from tooltune.environment import Environment

    root = tmp_path / "cached"
    world = ensure_world(root, seed=2, size="small")
    before = world.json_path.read_bytes()
    for seed in (AgentConfig(), "2", 2.0, True):  # a config passed where the seed goes, ...
        with pytest.raises(TypeError, match="seed must be an int"):
            Environment(root, seed)
    assert world.json_path.read_bytes() == before  # the world other processes use is intact


def test_pools_keep_products_and_files_apart(world):
    for inv in world.inventories:
        assert {world.product(i["product_id"])["pool"] for i in inv["items"]} == {inv["pool"]}
        assert world.place(inv["warehouse"])["pool"] == inv["pool"]
    for pool in ("train", "validation", "test"):
        invs = [i for i in world.inventories if i["pool"] == pool]
        common = set.intersection(*({i["product"] for i in inv["items"]} for inv in invs))
        assert len(invs) >= 2 and common  # two-warehouse tasks always have an answer
    for route in world.routes:
        assert world.place(route["origin"])["pool"] == world.place(route["destination"])["pool"]
        assert world.place(route["origin"])["pool"] == route["pool"]


def test_atlas_reaches_every_city_in_two_clicks(world):
    """Front page -> letter page -> city page, with the link numbers the browser shows, and every
    letter page short enough to fit in one tool observation."""
    rendered = {}
    for page in world.web_pages:
        if not page["path"].startswith("cities/"):
            html = (world.web_dir / page["path"]).read_text()
            rendered[page["path"]] = html_to_text(html, "http://atlas.test/" + page["path"])
    front = rendered["index.html"]
    for place in world.places:
        first, second = atlas_route(world, place["name"])
        letter_url = front["links"][first - 1]
        assert front["lines"] and letter_link(place["name"]) in "\n".join(front["lines"])
        letter_page = rendered[letter_url.removeprefix("http://atlas.test/")]
        city_url = letter_page["links"][second - 1]
        city = (world.web_dir / city_url.removeprefix("http://atlas.test/")).read_text()
        assert f"Mayor: {place['mayor']}" in city and f"<title>{place['name']}</title>" in city
    for path, page in rendered.items():
        if path.startswith("letters/"):
            assert len("\n".join(page["lines"])) < 1500, path


def test_search_puts_every_entity_first(world):
    """The expert's query for every fact of every entity finds the entity's article first, and
    the snippet quotes the fact (and the area with the population, for density tasks)."""
    index = SearchIndex.build(world.corpus_dir, world.index_dir)
    kinds = {"company": "companies", "person": "people", "place": "places"}
    misses = []
    for fact, (kind, field, *_) in FACTS.items():
        for entity in getattr(world, kinds[kind]):
            hits = index.search(f"{entity['name']} {SEARCH_WORDS[fact]}", 1)
            snippet = hits[0].snippet if hits else ""
            if not hits or hits[0].title != entity["name"] or f"{field}:" not in snippet:
                misses.append((fact, entity["name"]))
            elif fact == "population" and "Area:" not in snippet:
                misses.append(("area", entity["name"]))
    assert not misses
