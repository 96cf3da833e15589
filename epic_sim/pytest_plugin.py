"""pytest fixtures that run the simulator on a free loopback port.

- `epic_sim_factory(profile="epic", patients=20, seed=0, **options) -> SimServer` (stopped at teardown)
- `epic_sim` -> SimServer: Epic profile, 10 seeded patients, seed 42

The server modules are imported inside the fixtures, so merely having the plugin installed costs
other test suites nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from epic_sim.server import SimServer

SimFactory = Callable[..., "SimServer"]


@pytest.fixture
def epic_sim_factory() -> Iterator[SimFactory]:
    from epic_sim.server import SimServer, make_config

    started: list[SimServer] = []

    def start(profile: str = "epic", patients: int = 20, seed: int = 0, **options: Any) -> SimServer:
        options.setdefault("port", 0)
        server = SimServer(make_config(profile=profile, patients=patients, seed=seed, **options))
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def epic_sim(epic_sim_factory: SimFactory) -> SimServer:
    return epic_sim_factory(profile="epic", patients=10, seed=42)
