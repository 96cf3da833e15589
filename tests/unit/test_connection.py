from __future__ import annotations

from collections.abc import Callable

import httpx

from bridge.config import ConnectionConfig
from bridge.connection import Connection, public_jwks, request_budget
from bridge.fhir.budget import Priority
from bridge.metrics import Metrics
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


def test_the_bridge_and_a_tool_split_the_budget(make_config: Callable[..., ConnectionConfig]) -> None:
    cfg = make_config(rate_limit={"requests_per_second": 20, "burst": 10, "requests_per_day": 100_000})
    bridge, tool = request_budget(cfg), request_budget(cfg, tool=True)
    assert (bridge.max_rate, bridge.burst, bridge.per_day) == (18.0, 9, 90_000)
    assert (tool.max_rate, tool.burst, tool.per_day) == (2.0, 1, 10_000)
    alone = make_config(rate_limit={"requests_per_second": 20, "tools_share": 0})
    assert request_budget(alone).max_rate == request_budget(alone, tool=True).max_rate == 20


async def test_the_budget_records_its_use_per_class(make_config: Callable[..., ConnectionConfig]) -> None:
    metrics = Metrics()
    cfg = make_config(rate_limit={"requests_per_second": 100, "burst": 5, "requests_per_day": 2})
    budget = request_budget(cfg, metrics=metrics)  # the bridge's share of the day: 1 request
    await budget.acquire(Priority.INTERACTIVE)
    await budget.acquire(Priority.INTERACTIVE)  # past the day's cap: still goes, counted
    sample = metrics.registry.get_sample_value
    labels = {"connection": "test", "priority": "interactive"}
    assert sample("epic_bridge_budget_requests_total", labels) == 2
    assert sample("epic_bridge_budget_over_day_requests_total", {"connection": "test"}) == 1
    assert sample("epic_bridge_budget_day_remaining_requests", {"connection": "test"}) == 0
    assert sample("epic_bridge_rate_limit_requests_per_second", {"connection": "test"}) == 90
    available = {"connection": "test", "priority": "bulk"}
    assert sample("epic_bridge_budget_available_requests_per_second", available) == 0  # the cap is spent
