"""Writing a world's sources: the search corpus, the sandbox files and images, the SQLite
database, the atlas web pages and the flight database.

Every source states the facts of the `World` it is written from (the articles quote the same
numbers as the tables), and writing is deterministic: the same world gives byte-identical text
files and the same rows.
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import sqlite3
from html import escape
from typing import Any

from tooltune.tasks.world_data import World
from tooltune.tasks.world_names import slug


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


def write_sources(world: World) -> None:
    """Write every source of `world` under `world.root`, replacing generated ones; the search
    index directory is left for `SearchIndex.build` to refresh from the corpus fingerprint."""
    from tooltune.tools.flights import create_flight_db

    for sub in ("corpus", "sandbox", "web"):
        shutil.rmtree(world.root / sub, ignore_errors=True)
    world.corpus_dir.mkdir()
    lines = [json.dumps(doc, ensure_ascii=False, sort_keys=True) for doc in _articles(world)]
    (world.corpus_dir / "articles.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_sandbox(world)
    _write_db(world)
    _write_web(world)
    create_flight_db(world.flights_db, [{k: v for k, v in f.items()} for f in world.flights])
