"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from connection_support import BridgeSide, bridge_settings, started_bridge_side
from process_support import BridgeProcess, bridge_environment

from bridge.config.settings import BridgeSettings


@pytest.fixture
def bridge_side(tmp_path: Path) -> Iterator[BridgeSide]:
    """The bridge's own HTTP side (JWKS) on a free loopback port, with a fresh key."""
    with started_bridge_side(tmp_path) as side:
        yield side


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BridgeSettings:
    return bridge_settings(tmp_path, monkeypatch)


@pytest.fixture
def bridge_env(kafka_bootstrap: str, registry_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of an `epic-bridge run` subprocess on the test cluster (see process_support)."""
    return bridge_environment(kafka_bootstrap, registry_url, tmp_path)


@pytest.fixture
def processes() -> Iterator[list[BridgeProcess]]:
    started: list[BridgeProcess] = []
    yield started
    for p in started:
        p.stop_quietly()
