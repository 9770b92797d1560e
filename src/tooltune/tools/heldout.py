"""The held-out tool family `registry`: `geo_lookup` (a gazetteer) and `corp_registry`.

They read the same facts as `sql_query` and `search`, from the world's database, but under
names, parameters and descriptions no training task ever shows: the `heldout_tools` split
measures whether a model transfers to tools it has never seen (see `tooltune.tools.catalogue`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tooltune.registry import ToolDefinition, ToolError, tool

GEO_ATTRIBUTES = {
    "population": "population",
    "area_km2": "area_km2",
    "founded": "founded",
    "region": "region",
}


def make_registry_tools(db_path: str | Path) -> list[ToolDefinition]:
    """`geo_lookup` and `corp_registry`, reading the world database at `db_path` (read-only)."""
    uri = f"file:{Path(db_path).resolve()}?mode=ro"

    def fetch(query: str, params: tuple) -> sqlite3.Row | None:
        con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        con.row_factory = sqlite3.Row
        try:
            return con.execute(query, params).fetchone()
        finally:
            con.close()

    @tool
    def geo_lookup(place: str, attribute: str) -> dict:
        """Gazetteer: one attribute of a city.

        Args:
            place: City name, e.g. "Varenholt".
            attribute: One of population, area_km2, founded, region.
        """
        if attribute not in GEO_ATTRIBUTES:
            raise ToolError(
                f"unknown attribute {attribute!r}; use one of {', '.join(GEO_ATTRIBUTES)}"
            )
        row = fetch(
            f"SELECT name, {GEO_ATTRIBUTES[attribute]} AS value FROM places WHERE lower(name) = lower(?)",
            (place.strip(),),
        )
        if row is None:
            raise ToolError(f"no city called {place!r} in the gazetteer")
        return {"place": row["name"], "attribute": attribute, "value": row["value"]}

    @tool
    def corp_registry(company: str) -> dict:
        """Company registry extract: leadership, seat, size and finances of a registered company.

        Args:
            company: Registered company name.
        """
        row = fetch("SELECT * FROM companies WHERE lower(name) = lower(?)", (company.strip(),))
        if row is None:
            raise ToolError(f"{company!r} is not in the company registry")
        return {
            "company": row["name"],
            "chief_executive": row["ceo"],
            "headquarters": row["hq_city"],
            "industry": row["industry"],
            "annual_revenue_musd": row["revenue_musd"],
            "founded": row["founded"],
            "employees": row["employees"],
        }

    return [geo_lookup, corp_registry]
