"""An Epic-faithful FHIR R4 + OAuth 2.0 simulator for development, tests and benchmarks.

`from epic_sim import run_simulator, SimServer, SimConfig, build_app` (imported on first use, so that
the pytest plugin does not pull the server in for suites that never start one).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SimConfig", "SimServer", "build_app", "run_simulator"]


def __getattr__(name: str) -> Any:
    if name in ("run_simulator", "SimServer"):
        from epic_sim import server

        return getattr(server, name)
    if name == "build_app":
        from epic_sim.app import build_app

        return build_app
    if name == "SimConfig":
        from epic_sim.config import SimConfig

        return SimConfig
    raise AttributeError(f"module 'epic_sim' has no attribute {name!r}")
