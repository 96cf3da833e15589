"""Opaque access and refresh tokens.

Tokens are random strings (never JWTs: Epic's are opaque to clients too). Only the server's own maps know
what they mean. Access tokens can be expired all at once (`expire_all`), which is how tests simulate
"token expired mid-run"; refresh tokens survive that and stay valid until revoked or past the server's
refresh-token lifetime (rotation is not done).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .sweep import SweepSchedule


@dataclass(frozen=True)
class AccessToken:
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    patient: str | None = None
    family: str | None = None  # the authorization code (hash id) it descends from, for revocation


@dataclass(frozen=True)
class RefreshToken:
    client_id: str
    scopes: tuple[str, ...]
    patient: str | None
    family: str
    expires_at: float | None  # None: valid until revoked


class TokenStore:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self._lock = threading.Lock()
        self._sweep = SweepSchedule()

    def _maybe_sweep(self, now: float) -> None:
        """Drop expired tokens (caller holds the lock)."""
        if not self._sweep.due(now):
            return
        for key in [k for k, t in self._access.items() if t.expires_at < now]:
            del self._access[key]
        for key in [k for k, r in self._refresh.items() if r.expires_at is not None and r.expires_at < now]:
            del self._refresh[key]

    def issue_access(
        self,
        client_id: str,
        scopes: tuple[str, ...],
        lifetime_s: int,
        *,
        patient: str | None = None,
        family: str | None = None,
    ) -> tuple[str, AccessToken]:
        token = secrets.token_urlsafe(48)
        now = self._clock()
        record = AccessToken(client_id, scopes, now + lifetime_s, patient, family)
        with self._lock:
            self._maybe_sweep(now)
            self._access[token] = record
        return token, record

    def issue_refresh(
        self,
        client_id: str,
        scopes: tuple[str, ...],
        patient: str | None,
        family: str,
        lifetime_s: int | None,
    ) -> str:
        token = secrets.token_urlsafe(48)
        now = self._clock()
        expires_at = None if lifetime_s is None else now + lifetime_s
        with self._lock:
            self._maybe_sweep(now)
            self._refresh[token] = RefreshToken(client_id, scopes, patient, family, expires_at)
        return token

    def access(self, token: str) -> AccessToken | None:
        """The live access token, or None when unknown or expired."""
        with self._lock:
            record = self._access.get(token)
        if record is None or record.expires_at <= self._clock():
            return None
        return record

    def refresh(self, token: str) -> RefreshToken | None:
        """The live refresh token, or None when unknown, revoked or expired."""
        with self._lock:
            record = self._refresh.get(token)
        if record is None or (record.expires_at is not None and record.expires_at <= self._clock()):
            return None
        return record

    def expire_all(self) -> int:
        """Expire every access token now; returns how many were live."""
        now = self._clock()
        with self._lock:
            live = sum(1 for t in self._access.values() if t.expires_at > now)
            self._access.clear()
        return live

    def revoke_family(self, family: str) -> None:
        with self._lock:
            for key in [k for k, t in self._access.items() if t.family == family]:
                del self._access[key]
            for key in [k for k, r in self._refresh.items() if r.family == family]:
                del self._refresh[key]
