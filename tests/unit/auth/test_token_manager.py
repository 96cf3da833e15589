from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import SecretStr

from bridge.auth.manager import BearerAuth, CrossOriginAuthError, TokenManager
from bridge.auth.tokens import Token

BASE = "https://epic.example.org/api/FHIR/R4/"


class FakeSource:
    def __init__(self, clock: list[float], lifetime: float = 3600.0, delay: float = 0.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.delay = delay
        self.fetches = 0

    async def fetch(self) -> Token:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return Token(
            access_token=SecretStr(f"token-{self.fetches}"), expires_at=self.clock[0] + self.lifetime
        )

    async def cached(self) -> Token | None:
        return None


async def test_refreshes_before_expiry() -> None:
    now = [1000.0]
    source = FakeSource(now)
    manager = TokenManager(source, margin_s=60, clock=lambda: now[0])
    first = await manager.get()
    assert await manager.get() is first
    now[0] += 3600 - 61
    assert await manager.get() is first
    now[0] += 2  # inside the margin
    second = await manager.get()
    assert second is not first and source.fetches == 2


async def test_concurrent_callers_share_one_fetch() -> None:
    now = [0.0]
    source = FakeSource(now, delay=0.05)
    manager = TokenManager(source, clock=lambda: now[0])
    tokens = await asyncio.gather(*(manager.get() for _ in range(10)))
    assert source.fetches == 1 and len({id(t) for t in tokens}) == 1


async def test_refresh_after_rejection_only_once_for_many() -> None:
    now = [0.0]
    source = FakeSource(now)
    manager = TokenManager(source, clock=lambda: now[0])
    stale = await manager.get()
    results = await asyncio.gather(*(manager.refresh_after_rejection(stale) for _ in range(5)))
    assert source.fetches == 2 and len({id(t) for t in results}) == 1


def _client(manager: TokenManager, handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=handler, auth=BearerAuth(manager, BASE))


async def test_401_refreshes_once_and_retries_once() -> None:
    now = [0.0]
    source = FakeSource(now)
    manager = TokenManager(source, clock=lambda: now[0])
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(401 if len(seen) == 1 else 200)

    async with _client(manager, httpx.MockTransport(handle)) as http:
        response = await http.get(BASE + "Patient/1")
    assert response.status_code == 200
    assert seen == ["Bearer token-1", "Bearer token-2"]


async def test_second_401_is_returned_not_looped() -> None:
    now = [0.0]
    source = FakeSource(now)
    manager = TokenManager(source, clock=lambda: now[0])
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    async with _client(manager, httpx.MockTransport(handle)) as http:
        response = await http.get(BASE + "Patient/1")
    assert response.status_code == 401 and calls == 2 and source.fetches == 2


async def test_bearer_never_sent_to_another_origin() -> None:
    now = [0.0]
    manager = TokenManager(FakeSource(now), clock=lambda: now[0])
    sent: list[httpx.Request] = []
    async with _client(manager, httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200))) as http:
        with pytest.raises(CrossOriginAuthError):
            await http.get("https://evil.example.com/steal")
        with pytest.raises(CrossOriginAuthError):
            await http.get("http://epic.example.org/api/FHIR/R4/Patient")  # scheme differs
    assert sent == []


async def test_metrics_count_refreshes_and_failures() -> None:
    from bridge.auth.errors import InvalidClientError
    from bridge.metrics import Metrics

    metrics = Metrics()
    now = [0.0]
    manager = TokenManager(FakeSource(now), clock=lambda: now[0], name="c", metrics=metrics)
    await manager.get()

    class Failing(FakeSource):
        async def fetch(self) -> Token:
            raise InvalidClientError(400, "invalid_client")

    failing = TokenManager(Failing(now), clock=lambda: now[0], name="c", metrics=metrics)
    with pytest.raises(InvalidClientError):
        await failing.get()
    sample = metrics.registry.get_sample_value
    assert sample("epic_bridge_token_refreshes_total", {"connection": "c", "result": "ok"}) == 1
    assert sample("epic_bridge_token_refreshes_total", {"connection": "c", "result": "error"}) == 1
    assert sample("epic_bridge_auth_failures_total", {"connection": "c", "error": "invalid_client"}) == 1
