"""A built world and an environment shared by the task tests (building takes about 2 s)."""

import pytest

from tooltune.environment import Environment
from tooltune.tasks.world import build_world, load_world


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("world")
    build_world(path, seed=0)
    return path


@pytest.fixture(scope="session")
def world(world_dir):
    return load_world(world_dir)


@pytest.fixture(scope="session")
def env(world_dir):
    with Environment(world_dir) as environment:
        yield environment
