from __future__ import annotations

from collections.abc import Callable

import httpx

from bridge.config import ConnectionConfig
from bridge.connection import Connection, public_jwks
from bridge.retry import RetryPolicy

BASE = "https://epic.example.org/interconnect-fhir-oauth/api/FHIR/R4/"
DISCOVERED = "https://epic.example.org/interconnect-fhir-oauth/oauth2/token"


def handler(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("smart-configuration"):
            return httpx.Response(200, json={"token_endpoint": DISCOVERED})
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 300})
        return httpx.Response(
            200,
            json={"resourceType": "Patient", "id": "p"},
            headers={"Content-Type": "application/fhir+json"},
        )

    return httpx.MockTransport(handle)


async def test_open_discovers_the_token_url_and_shares_one_pool(
    make_config: Callable[..., ConnectionConfig],
) -> None:
    auth = {"method": "backend_services", "client_id": "c", "keys": [{"private_key": {"file": "key.pem"}}]}
    cfg = make_config(auth=auth, fhir_base_url=BASE)
    seen: list[httpx.Request] = []
    async with await Connection.open(cfg, transport=handler(seen)) as conn:
        assert conn.token_url == DISCOVERED
        await conn.fhir.read("Patient", "p")
        other = conn.fhir_client(retry=RetryPolicy(max_attempts=1))
        await other.read("Patient", "p")
        assert other.budget is conn.fhir.budget  # one request budget per connection
    paths = [r.url.path for r in seen]
    assert paths.count("/interconnect-fhir-oauth/oauth2/token") == 1  # one token for both clients
    assert [r.headers.get("Authorization") for r in seen if r.url.path.endswith("/Patient/p")] == [
        "Bearer tok"
    ] * 2
    assert conn.http.is_closed


def test_public_jwks(make_config: Callable[..., ConnectionConfig]) -> None:
    providers = public_jwks({"a": make_config()})
    [key] = providers["a"]()["keys"]
    assert key["kid"] == "k1" and "d" not in key
