"""The held-out tools read the facts of a built world's database."""

import pytest

from tooltune.registry import ToolRegistry
from tooltune.tasks.world import build_world
from tooltune.tools.heldout import make_registry_tools
from tooltune.types import ToolCall


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("heldoutworld"), seed=0, size="small")


def _call(registry, name, **arguments):
    return registry.execute(ToolCall("c", name, arguments))


def test_heldout_tools_answer_from_the_world(world):
    registry = ToolRegistry(make_registry_tools(world.db_path))
    place, company = world.places[0], world.companies[0]
    got = _call(registry, "geo_lookup", place=place["name"].upper(), attribute="population")
    assert got.result == {
        "place": place["name"],
        "attribute": "population",
        "value": place["population"],
    }
    card = _call(registry, "corp_registry", company=company["name"]).result
    assert card["chief_executive"] == company["ceo"] and card["headquarters"] == company["hq"]
    assert (
        "unknown attribute"
        in _call(registry, "geo_lookup", place=place["name"], attribute="mayor").error
    )
    assert "not in the company registry" in _call(registry, "corp_registry", company="Nope").error
    assert "invalid arguments" in _call(registry, "geo_lookup", place=3, attribute="founded").error
