"""Authorization codes with PKCE: single use, 5-minute life, bound to client, redirect_uri and challenge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .errors import OAuthError
from .sweep import SweepSchedule

CODE_LIFETIME_S = 300
PKCE_METHODS = ("S256", "plain")
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")  # RFC 7636 4.1


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def valid_challenge(challenge: str, method: str) -> bool:
    if method == "S256":
        return re.fullmatch(r"[A-Za-z0-9\-_]{43}", challenge) is not None
    return _VERIFIER.match(challenge) is not None


class CodeReused(OAuthError):
    """A code redeemed a second time; the caller revokes what the first redemption issued."""


def code_family(code: str) -> str:
    """A non-secret id for everything issued from `code` (a hash, so the code itself is never kept there)."""
    return hashlib.sha256(code.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class CodeGrant:
    """What the user consented to, kept with the code."""

    client_id: str
    redirect_uri: str | None  # as sent to /authorize (None when omitted)
    scopes: tuple[str, ...]
    code_challenge: str | None
    code_challenge_method: str | None
    patient: str | None
    expires_at: float


@dataclass
class _Record:
    grant: CodeGrant
    used: bool = False


class CodeStore:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._codes: dict[str, _Record] = {}
        self._lock = threading.Lock()
        self._sweep = SweepSchedule()

    def issue(
        self,
        *,
        client_id: str,
        redirect_uri: str | None,
        scopes: tuple[str, ...],
        code_challenge: str | None,
        code_challenge_method: str | None,
        patient: str | None,
    ) -> str:
        code = secrets.token_urlsafe(32)
        now = self._clock()
        grant = CodeGrant(
            client_id,
            redirect_uri,
            scopes,
            code_challenge,
            code_challenge_method,
            patient,
            now + CODE_LIFETIME_S,
        )
        with self._lock:
            if self._sweep.due(now):
                for key in [k for k, r in self._codes.items() if r.grant.expires_at < now]:
                    del self._codes[key]
            self._codes[code] = _Record(grant)
        return code

    def redeem(
        self, code: str, *, client_id: str, redirect_uri: str | None, verifier: str | None
    ) -> CodeGrant:
        """The grant behind `code`, marked used; raises OAuthError(invalid_grant) with the reason.

        A second redemption raises CodeReused; the caller revokes what the first one issued (RFC 6749 4.1.2).
        """
        now = self._clock()
        with self._lock:
            record = self._codes.get(code)
            if record is None:
                raise OAuthError("invalid_grant", "unknown authorization code", client_id=client_id)
            if record.used:
                raise CodeReused("invalid_grant", "authorization code reused", client_id=client_id)
            record.used = True  # a failed attempt also burns the code
        grant = record.grant
        if grant.expires_at <= now:
            raise OAuthError("invalid_grant", "authorization code expired", client_id=client_id)
        if grant.client_id != client_id:
            raise OAuthError("invalid_grant", "code was issued to another client", client_id=client_id)
        if grant.redirect_uri is not None and redirect_uri != grant.redirect_uri:
            raise OAuthError(
                "invalid_grant", "redirect_uri differs from the authorization request", client_id=client_id
            )
        _check_pkce(grant, verifier, client_id)
        return grant


def _check_pkce(grant: CodeGrant, verifier: str | None, client_id: str) -> None:
    if grant.code_challenge is None:
        if verifier is not None:
            raise OAuthError(
                "invalid_grant", "code_verifier sent but no code_challenge was", client_id=client_id
            )
        return
    if verifier is None:
        raise OAuthError("invalid_grant", "code_verifier missing (PKCE)", client_id=client_id)
    if not _VERIFIER.match(verifier):
        raise OAuthError(
            "invalid_grant",
            "code_verifier malformed (RFC 7636: 43-128 unreserved chars)",
            client_id=client_id,
        )
    expected = s256(verifier) if grant.code_challenge_method == "S256" else verifier
    if not hmac.compare_digest(expected.encode("ascii"), grant.code_challenge.encode("ascii")):
        raise OAuthError("invalid_grant", "code_verifier does not match code_challenge", client_id=client_id)
