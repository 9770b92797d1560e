"""tooltune: teach language models to use tools.

The data flow is task -> rollout -> trajectory -> reward -> update -> evaluation; the public API
below is the part of each stage a user touches.
"""

from tooltune.config import AgentConfig, ConfigError, TaskTier, load_config
from tooltune.env import Reward, ToolEnv, bind, load_env, mcp_tools, openapi_tools, reward
from tooltune.messages import read_trajectories, write_trajectories
from tooltune.registry import ToolDefinition, ToolError, ToolRegistry, tool
from tooltune.rollout import (
    Completion,
    Policy,
    SamplingParams,
    ScriptedPolicy,
    TrajectoryCollector,
)
from tooltune.types import (
    AgentAction,
    AgentStep,
    AgentTrajectory,
    TokenRecord,
    ToolCall,
    ToolResponse,
)

__version__ = "0.1.0"

__all__ = [
    "AgentAction",
    "AgentConfig",
    "AgentStep",
    "AgentTrajectory",
    "Completion",
    "ConfigError",
    "Policy",
    "Reward",
    "SamplingParams",
    "ScriptedPolicy",
    "TaskTier",
    "TokenRecord",
    "ToolCall",
    "ToolDefinition",
    "ToolEnv",
    "ToolError",
    "ToolRegistry",
    "ToolResponse",
    "TrajectoryCollector",
    "bind",
    "load_config",
    "load_env",
    "mcp_tools",
    "openapi_tools",
    "read_trajectories",
    "reward",
    "tool",
    "write_trajectories",
]
