"""Fixtures for the simulator's FHIR tests (helpers live in sim_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sim_support import Fhir, register_backend

from epic_sim.server import SimServer


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def fhir(epic_sim: SimServer, rsa_key: rsa.RSAPrivateKey) -> Iterator[Fhir]:
    client = Fhir(epic_sim, register_backend(epic_sim, rsa_key), rsa_key)
    yield client
    client.close()


@pytest.fixture
def connect(rsa_key: rsa.RSAPrivateKey) -> Iterator[Any]:
    """connect(server, scopes=None) -> Fhir for any started simulator."""
    clients: list[Fhir] = []

    def make(server: SimServer, scopes: list[str] | None = None, client_id: str = "sim-tests") -> Fhir:
        client = Fhir(server, register_backend(server, rsa_key, client_id, scopes), rsa_key)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
