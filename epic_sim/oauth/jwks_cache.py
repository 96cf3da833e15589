"""Fetching and caching clients' JWK Sets.

Epic fetches a client's registered JWKS URL itself (TLS, public, no redirects followed) and caches it for
up to 29 hours; a new `kid` it has not seen triggers one refetch, which is how key rotation works.
The simulator does the same, over plain http too so tests can serve keys from loopback.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

JwksFetch = Callable[[str], Awaitable[dict[str, Any]]]

DEFAULT_TTL_S = 29 * 3600
MAX_JWKS_BYTES = 256 * 1024
FETCH_TIMEOUT_S = 5.0


class JwksFetchError(Exception):
    """The JWKS URL did not answer a usable JWK Set."""


async def fetch_jwks_over_http(url: str) -> dict[str, Any]:
    """GET the JWK Set at `url`: 200 and JSON required, redirects refused, size bounded.

    A client per fetch on purpose: fetches are rare (cache of hours) and the server may run on several
    event loops over its life (one per test), which a shared AsyncClient would not survive.
    """
    try:
        async with httpx.AsyncClient(follow_redirects=False, timeout=FETCH_TIMEOUT_S) as client:
            response = await client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise JwksFetchError(f"GET {url} failed: {type(exc).__name__}: {exc}") from None
    if response.is_redirect:
        raise JwksFetchError(
            f"GET {url} answered a redirect ({response.status_code}); redirects are not followed"
        )
    if response.status_code != 200:
        raise JwksFetchError(f"GET {url} answered HTTP {response.status_code}")
    if len(response.content) > MAX_JWKS_BYTES:
        raise JwksFetchError(f"GET {url} answered more than {MAX_JWKS_BYTES} bytes")
    try:
        body = response.json()
    except ValueError:
        raise JwksFetchError(f"GET {url} did not answer JSON") from None
    if not isinstance(body, dict):
        raise JwksFetchError(f"GET {url} did not answer a JSON object")
    return body


@dataclass
class _Entry:
    jwks: Mapping[str, Any]
    fetched_at: float


def keys_of(jwks: Mapping[str, Any]) -> list[dict[str, Any]]:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise JwksFetchError('not a JWK Set (no "keys" list)')
    return [k for k in keys if isinstance(k, dict)]


class JwksCache:
    """Per-URL cache of JWK Sets with refetch-once-on-unknown-kid."""

    def __init__(self, fetch: JwksFetch, clock: Callable[[], float], ttl_s: float = DEFAULT_TTL_S) -> None:
        self._fetch = fetch
        self._clock = clock
        self._ttl_s = ttl_s
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.fetch_count = 0  # observable by tests: how many times a URL was actually fetched

    async def keys(self, url: str, kid: str | None) -> list[dict[str, Any]]:
        """The keys at `url`; fetched when not cached, stale, or `kid` is not among the cached keys."""
        with self._lock:
            entry = self._entries.get(url)
        now = self._clock()
        if entry is not None and now - entry.fetched_at < self._ttl_s:
            cached = keys_of(entry.jwks)
            if kid is None or any(k.get("kid") == kid for k in cached):
                return cached
        jwks = await self._fetch(url)
        keys = keys_of(jwks)
        with self._lock:
            self.fetch_count += 1
            self._entries[url] = _Entry(jwks, now)
        return keys

    def forget(self, url: str) -> None:
        with self._lock:
            self._entries.pop(url, None)
