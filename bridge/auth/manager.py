"""Keeps one valid access token per connection: refresh before expiry under a lock; once after a 401."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable

import httpx

from bridge.auth.errors import AuthError
from bridge.auth.sources import TokenSource
from bridge.auth.tokens import Token
from bridge.metrics import Metrics

log = logging.getLogger(__name__)


class TokenManager:
    def __init__(
        self,
        source: TokenSource,
        *,
        margin_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        name: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self._source = source
        self._margin = margin_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: Token | None = None
        self._loaded_cache = False
        self.name = name
        self.refreshes = 0
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"TokenManager(name={self.name!r}, source={self._source!r})"

    def _fresh(self, token: Token | None) -> bool:
        return token is not None and not token.expires_within(self._margin, self._clock())

    async def get(self) -> Token:
        token = self._token
        if self._fresh(token):
            assert token is not None
            return token
        async with self._lock:
            if not self._loaded_cache:
                self._loaded_cache = True
                cached = await self._source.cached()
                if self._fresh(cached):
                    self._token = cached
            if not self._fresh(self._token):
                log.info("connection %s: obtaining a new access token", self.name)
                self._token = await self._fetch()
            assert self._token is not None
            return self._token

    async def refresh_after_rejection(self, rejected: Token) -> Token:
        """The server said 401 to ``rejected``: refresh, unless another task already did."""
        async with self._lock:
            if self._token is None or self._token is rejected:
                log.info("connection %s: access token rejected (401); refreshing once", self.name)
                self._token = await self._fetch()
            return self._token

    async def _fetch(self) -> Token:
        try:
            token = await self._source.fetch()
        except AuthError as exc:
            if self._metrics is not None:
                self._metrics.token_refreshes.labels(self.name, "error").inc()
                error = getattr(exc, "error", None) or type(exc).__name__
                self._metrics.auth_failures.labels(self.name, str(error)).inc()
            raise
        self.refreshes += 1
        if self._metrics is not None:
            self._metrics.token_refreshes.labels(self.name, "ok").inc()
        return token

    def invalidate(self) -> None:
        self._token = None


def origin_of(url: str | httpx.URL) -> tuple[str, str, int | None]:
    u = httpx.URL(str(url))
    port = u.port or {"http": 80, "https": 443}.get(u.scheme)
    return (u.scheme, u.host, port)


class CrossOriginAuthError(RuntimeError):
    """A bearer token was about to be sent to a host that is not the connection's FHIR server."""


class BearerAuth(httpx.Auth):
    """httpx auth flow: the bearer token for the connection's own origin only.

    On a 401 it refreshes once and retries once.
    """

    def __init__(self, manager: TokenManager, allowed_origin: str) -> None:
        self._manager = manager
        self._origin = origin_of(allowed_origin)

    def __repr__(self) -> str:
        scheme, host, port = self._origin
        return f"BearerAuth(origin='{scheme}://{host}:{port}')"

    def sync_auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        raise RuntimeError("BearerAuth works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if origin_of(request.url) != self._origin:
            raise CrossOriginAuthError(f"refusing to send the bearer token to {request.url.host}")
        token = await self._manager.get()
        request.headers["Authorization"] = token.authorization_header()
        response = yield request
        if response.status_code == 401:
            token = await self._manager.refresh_after_rejection(token)
            request.headers["Authorization"] = token.authorization_header()
            yield request
