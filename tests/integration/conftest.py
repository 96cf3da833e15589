"""Fixtures shared by the connection tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from connection_support import BridgeSide, bridge_settings, started_bridge_side

from bridge.config.settings import BridgeSettings


@pytest.fixture
def bridge_side(tmp_path: Path) -> Iterator[BridgeSide]:
    """The bridge's own HTTP side (JWKS) on a free loopback port, with a fresh key."""
    with started_bridge_side(tmp_path) as side:
        yield side


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BridgeSettings:
    return bridge_settings(tmp_path, monkeypatch)
