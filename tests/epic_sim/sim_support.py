"""Helpers for the simulator's FHIR tests (no tests here): a backend client and an authenticated FHIR client.

Tokens come from the simulator's real OAuth flow (client_credentials + a private_key_jwt assertion
signed here with PyJWT), never from a bypass.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from epic_sim.server import SimServer

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JSON = "application/fhir+json"
ALL_SCOPES = [
    f"system/{t}.{p}"
    for t in ("Patient", "Observation", "Encounter", "Appointment", "DocumentReference", "Group")
    for p in ("crs",)
]


def public_jwks(key: rsa.RSAPrivateKey, kid: str = "k1") -> dict[str, Any]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": kid, "alg": "RS384", "use": "sig"}]}


def client_assertion(server: SimServer, client_id: str, key: rsa.RSAPrivateKey, kid: str = "k1") -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": server.token_url,
        "jti": uuid.uuid4().hex,
        "exp": now + 240,
        "iat": now,
    }
    return jwt.encode(claims, key, algorithm="RS384", headers={"kid": kid, "typ": "JWT"})


def backend_token(server: SimServer, client_id: str, key: rsa.RSAPrivateKey) -> str:
    response = httpx.post(
        server.token_url,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": client_assertion(server, client_id, key),
        },
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


class Fhir:
    """An httpx client on the FHIR base with a bearer token, the JSON Accept and Epic-Client-ID."""

    def __init__(self, server: SimServer, client_id: str, key: rsa.RSAPrivateKey) -> None:
        self.server = server
        self.client_id = client_id
        self.key = key
        self.http = httpx.Client(base_url=server.fhir_base, timeout=30)
        self.refresh()

    def refresh(self) -> None:
        token = backend_token(self.server, self.client_id, self.key)
        self.http.headers.update(
            {"Authorization": f"Bearer {token}", "Accept": JSON, "Epic-Client-ID": self.client_id}
        )

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(url, **kwargs)

    def search(self, url: str, **params: Any) -> dict[str, Any]:
        response = self.http.get(url, params=params)
        assert response.status_code == 200, response.text
        bundle: dict[str, Any] = response.json()
        return bundle

    def search_all(self, url: str, **params: Any) -> list[dict[str, Any]]:
        """Every page, following next links exactly; returns the bundles."""
        bundles = [self.search(url, **params)]
        while (link := next_link(bundles[-1])) is not None:
            response = self.http.get(link)
            assert response.status_code == 200, response.text
            bundles.append(response.json())
        return bundles

    def close(self) -> None:
        self.http.close()


def next_link(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]


def outcome_issues(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        i
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == "outcome"
        for i in e["resource"]["issue"]
    ]


def epic_codes(outcome: dict[str, Any]) -> list[str]:
    return [c["code"] for i in outcome.get("issue", []) for c in i.get("details", {}).get("coding", [])]


def register_backend(
    server: SimServer, key: rsa.RSAPrivateKey, client_id: str = "sim-tests", scopes: list[str] | None = None
) -> str:
    server.register_client(
        client_id=client_id,
        auth_methods=["private_key_jwt"],
        jwks_url=None,
        jwks=public_jwks(key),
        client_secret=None,
        scopes=scopes or ALL_SCOPES,
        redirect_uris=[],
        token_lifetime_s=None,
    )
    return client_id
