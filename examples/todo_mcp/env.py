"""An MCP server over stdio with per-episode state: one to-do list per episode.

The server runs once; every tool gets the episode id as its hidden `session` argument, so the
parallel samples of one task never see each other's items. SFT data: demonstrations whose tool
results tooltune fills in by running the calls."""

import sys
from pathlib import Path

from tooltune import ToolEnv, bind, mcp_tools

HERE = Path(__file__).parent


def make_env() -> ToolEnv:
    server = mcp_tools([sys.executable, str(HERE / "server.py")])
    env = ToolEnv(
        HERE / "tasks.jsonl",
        episode_tools=lambda episode_id: bind(server, session=episode_id),
        demonstrations=HERE / "demos.jsonl",
        name="todo",
    )
    env.on_close(server.close)
    return env
