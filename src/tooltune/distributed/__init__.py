"""Scaling out: rollout workers on Ray, data-parallel updates under torch.distributed, and an
optional vLLM generation backend. Each submodule imports its heavy dependency only when used
(see docs/scaling.md)."""

from tooltune.distributed.ray_backend import (
    EnvironmentTools,
    PolicySnapshot,
    RayRolloutBackend,
    collect_local,
    make_ray_backend,
)

__all__ = [
    "EnvironmentTools",
    "PolicySnapshot",
    "RayRolloutBackend",
    "collect_local",
    "make_ray_backend",
]
