"""Fixtures for the bridge's unit tests (no network: httpx.MockTransport, fake clocks)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.auth.keys import SigningKey, generate_key_pair, load_private_key
from bridge.config import ConnectionConfig, parse_connection


@pytest.fixture(scope="session")
def key_pem() -> tuple[str, bytes]:
    return generate_key_pair("RS384")


@pytest.fixture(scope="session")
def signing_key(key_pem: tuple[str, bytes]) -> SigningKey:
    kid, pem = key_pem
    return load_private_key(pem, kid=kid, alg="RS384")


BASE = "https://epic.example.org/interconnect-fhir-oauth/api/FHIR/R4/"
TOKEN_URL = "https://epic.example.org/interconnect-fhir-oauth/oauth2/token"


def raw_config(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "test",
        "fhir_base_url": BASE,
        "auth": {
            "method": "backend_services",
            "client_id": "client-1",
            "token_url": TOKEN_URL,
            "keys": [{"kid": "k1", "private_key": {"file": "key.pem"}}],
        },
        "resources": {"Patient": {"triggers": ["created", "updated"], "actions": ["create"]}},
    }
    raw.update(overrides)
    return raw


@pytest.fixture
def make_config(tmp_path: Path, key_pem: tuple[str, bytes]) -> Callable[..., ConnectionConfig]:
    (tmp_path / "key.pem").write_bytes(key_pem[1])

    def make(**overrides: Any) -> ConnectionConfig:
        return parse_connection(raw_config(**overrides), source="test.json", source_dir=tmp_path)

    return make
