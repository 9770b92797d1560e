import httpx
import pytest

from tooltune.environment import Environment
from tooltune.registry import ToolRegistryError
from tooltune.tasks.world import build_world
from tooltune.tools.catalogue import BUILTIN_TOOLS
from tooltune.tools.flights import list_bookings
from tooltune.types import ToolCall


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    path = tmp_path_factory.mktemp("envworld")
    build_world(path, seed=0)
    with Environment(path) as environment:
        yield environment


def _call(registry, name, **arguments):
    return registry.execute(ToolCall("c", name, arguments))


def test_builds_a_missing_world(tmp_path):
    with Environment(tmp_path / "fresh", seed=3, size="small") as env:
        assert env.world.seed == 3 and (tmp_path / "fresh" / "world.json").is_file()
        assert env.world.size == "small" and len(env.world.places) == 40
        registry = env.registry(tools=["calculate"])
        assert _call(registry, "calculate", expression="2+2").result["numeric"] == 4


def test_registry_offers_every_builtin_tool_or_a_subset(env):
    registry = env.registry("ep-all")
    assert registry.names == BUILTIN_TOOLS and len(registry) == 29
    subset = env.registry("ep-sub", ["sql_query", "geo_lookup"])
    assert subset.names == ["sql_query", "geo_lookup"]
    with pytest.raises(ToolRegistryError, match="unknown tools: nope"):
        env.registry("ep-bad", ["nope"])
    registry.close()
    subset.close()


def test_servers_start_only_when_needed(tmp_path_factory):
    path = tmp_path_factory.mktemp("lazyworld")
    build_world(path, seed=1, size="small")
    with Environment(path) as env:
        env.registry("x", ["calculate", "sql_query", "search"])
        assert env._flights is None and env._web is None
        env.registry("y", ["browser_open"])
        assert env._web is not None and env._flights is None
        url = env.web_url()
        assert httpx.get(url + "/index.html").status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/index.html", timeout=2)
    with pytest.raises(RuntimeError, match="closed"):
        env.registry("z")


def test_bookings_are_isolated_per_episode(env):
    flight = next(f for f in env.world.flights if f["sells_out"])
    search = {
        "origin": flight["origin"],
        "destination": flight["destination"],
        "date": flight["date"],
    }
    a, b = (
        env.registry("ep-a", ["search_flights", "book_flight"]),
        env.registry("ep-b", ["book_flight"]),
    )
    assert _call(a, "search_flights", **search).success
    # the planted flight sold out in episode a only
    assert "sold out" in _call(a, "book_flight", flight_id=flight["id"], passenger="Ann Bee").error
    assert _call(b, "book_flight", flight_id=flight["id"], passenger="Ann Bee").success
    assert list_bookings(env.flights_db, "ep-a") == []
    assert len(list_bookings(env.flights_db, "ep-b")) == 1
    assert list_bookings(env.world.flights_db, "ep-b") == []  # the cached world is untouched


def test_files_are_isolated_per_episode(env):
    a, b = env.registry("ep-fa", ["write_file", "read_file"]), env.registry("ep-fb", ["read_file"])
    assert _call(a, "write_file", path="notes/x.txt", content="hello").success
    assert _call(a, "read_file", path="notes/x.txt").result["content"] == "hello"
    assert not _call(b, "read_file", path="notes/x.txt").success
    assert _call(b, "read_file", path="README.txt").success  # shared files stay readable
    assert (env.overlay_dir("ep-fa") / "notes" / "x.txt").is_file()
    b.close()
    assert not env.overlay_dir("ep-fb").exists()  # an episode that wrote nothing leaves nothing


def test_image_crops_are_isolated_per_episode(env):
    image = env.world.images[0]["path"]
    box = {"left": 0, "top": 0, "right": 64, "bottom": 64}
    tools = ["image_crop", "image_info", "read_file", "list_files"]
    a, b = env.registry("ep-ia", tools), env.registry("ep-ib", tools)
    assert _call(a, "image_crop", path=image, save_as="crops/corner.png", **box).success
    assert _call(a, "image_info", path="crops/corner.png").result["width"] == 64
    names = [e["name"] for e in _call(a, "list_files", path="crops").result["entries"]]
    assert names == ["corner.png"]  # the file tools see the episode's crop too
    assert not _call(b, "image_info", path="crops/corner.png").success
    assert not _call(b, "list_files", path="crops").success
    assert (env.overlay_dir("ep-ia") / "crops" / "corner.png").is_file()
    assert not (env.world.sandbox_dir / "crops").exists()  # the shared world is untouched
    b.close()
    assert not env.overlay_dir("ep-ib").exists()


def test_browser_state_is_per_episode(env):
    a, b = (
        env.registry("ep-ba", ["browser_open", "browser_back"]),
        env.registry("ep-bb", ["browser_back"]),
    )
    assert _call(a, "browser_open", url="/index.html").result["title"] == "Regional Atlas"
    assert _call(a, "browser_open", url="/cities.html").success
    assert _call(a, "browser_back").result["title"] == "Regional Atlas"
    assert not _call(b, "browser_back").success


def test_environment_is_a_tool_source(env):
    registry = env("ep-src", ["calculate"])
    assert registry.names == ["calculate"]
    with pytest.raises(ValueError):
        env.overlay_dir("../escape")
