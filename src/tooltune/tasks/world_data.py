"""`World`: the ground truth of one generated world, and where its sources are on disk.

Task templates, checkers, the expert and the environment read facts from a `World`, never from
the sources, so `world.json` (its JSON form) holds all of it. `tooltune.tasks.world` builds,
loads and caches worlds; `world_generation` draws one.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

WORLD_VERSION = 3  # 3: flight booking ids numbered per episode
# A world built by other generator code is stale: cached worlds rebuild when any of the world
# modules (world.py, world_*.py) changes.
GENERATOR = hashlib.sha256(
    b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("world*.py")))
).hexdigest()[:16]


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
