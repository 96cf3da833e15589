"""Verification of `private_key_jwt` client assertions, as Epic's token endpoint does it.

Rules (epic-facts, OAuth section):
- header: `alg` RS256/RS384/RS512, or ES256/ES384 only when the client registered a JWKS URL;
  `typ` must be `JWT` when sent; `kid` picks the key (an unknown kid refetches the JWKS URL once).
- claims: `iss` == `sub` == client_id; `aud` == the exact token URL; `jti` present, at most 151 characters
  and not reused before its `exp`; `exp` required, in the future and at most 5 minutes ahead;
  `nbf`/`iat` optional but never in the future.
- Clock skew: `CLOCK_SKEW_S` (10 s) is tolerated on every time check, in the client's favour.
Signature is checked before the claims, and a `jti` is only recorded once everything passed, so a forged
assertion can neither learn which claim is wrong nor burn a legitimate client's `jti`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from .clients import ClientRegistration, ClientRegistry
from .errors import OAuthError
from .jwks_cache import JwksCache, JwksFetchError, keys_of
from .sweep import SweepSchedule

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RSA_ALGS = frozenset({"RS256", "RS384", "RS512"})
EC_ALGS = frozenset({"ES256", "ES384"})
MAX_EXP_AHEAD_S = 300
CLOCK_SKEW_S = 10
MAX_JTI_LENGTH = 151

_DECODE_OPTIONS: Any = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


class JtiLedger:
    """`jti`s seen per issuer, each kept until its assertion's `exp` (plus skew) has passed."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._sweep = SweepSchedule()

    def record(self, issuer: str, jti: str, exp: float, now: float) -> bool:
        """Record the jti; False when it was already used and is still inside its validity."""
        with self._lock:
            if self._sweep.due(now):
                for key in [k for k, until in self._seen.items() if until < now]:
                    del self._seen[key]
            if self._seen.get((issuer, jti), float("-inf")) >= now:
                return False
            self._seen[(issuer, jti)] = exp + CLOCK_SKEW_S
            return True


def _numeric(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"claim {name!r} is not a number")
    return float(value)


class AssertionVerifier:
    def __init__(
        self, *, token_url: str, registry: ClientRegistry, jwks_cache: JwksCache, clock: Callable[[], float]
    ) -> None:
        self._token_url = token_url
        self._registry = registry
        self._jwks = jwks_cache
        self._clock = clock
        self._jtis = JtiLedger()

    async def verify(self, assertion: str, client_id_param: str | None) -> ClientRegistration:
        """The authenticated client; raises OAuthError(invalid_client) with the reason otherwise."""
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_client", f"malformed client assertion: {exc}") from None
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise OAuthError("invalid_client", "assertion has no iss claim")
        if client_id_param is not None and client_id_param != iss:
            raise OAuthError(
                "invalid_client", "client_id parameter differs from the assertion's iss", client_id=iss
            )
        client = self._registry.get(iss)
        if client is None:
            raise OAuthError("invalid_client", f"unknown client (iss={iss!r})", client_id=iss)

        def refuse(reason: str) -> OAuthError:
            return OAuthError("invalid_client", reason, client_id=client.client_id)

        if "private_key_jwt" not in client.auth_methods:
            raise refuse("private_key_jwt is not an allowed auth method for this client")
        alg = header.get("alg")
        allowed_algs = RSA_ALGS | EC_ALGS if client.jwks_url else RSA_ALGS
        if alg not in allowed_algs:
            raise refuse(f"alg {alg!r} not accepted (allowed: {sorted(allowed_algs)})")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise refuse(f"typ {typ!r} is not JWT")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise refuse("kid is not a string")

        claims = await self._verify_signature(assertion, client, alg, kid, refuse)
        self._check_claims(claims, client, refuse)
        return client

    async def _verify_signature(
        self,
        assertion: str,
        client: ClientRegistration,
        alg: str,
        kid: str | None,
        refuse: Callable[[str], OAuthError],
    ) -> dict[str, Any]:
        try:
            if client.jwks_url:
                keys = await self._jwks.keys(client.jwks_url, kid)
            else:
                keys = keys_of(client.jwks or {})
        except JwksFetchError as exc:
            raise refuse(f"JWKS fetch failed: {exc}") from None
        kty = "RSA" if alg in RSA_ALGS else "EC"
        candidates = [
            k
            for k in keys
            if (kid is None or k.get("kid") == kid)
            and k.get("kty") == kty
            and k.get("use", "sig") == "sig"
            and k.get("alg", alg) == alg
        ]
        if not candidates:
            where = f"JWKS {client.jwks_url}" if client.jwks_url else "registered JWKS"
            raise refuse(f"no {kty} key with kid {kid!r} usable for {alg} in the {where}")
        for jwk in candidates:
            try:
                key = jwt.PyJWK(jwk, algorithm=alg).key
                claims: dict[str, Any] = jwt.decode(
                    assertion, key=key, algorithms=[alg], options=_DECODE_OPTIONS
                )
            except jwt.InvalidSignatureError:
                continue
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                raise refuse(f"assertion could not be verified: {type(exc).__name__}: {exc}") from None
            return claims
        raise refuse(f"signature does not verify with the registered key(s) (kid={kid!r}, alg={alg})")

    def _check_claims(
        self, claims: Mapping[str, Any], client: ClientRegistration, refuse: Callable[[str], OAuthError]
    ) -> None:
        cid = client.client_id
        if claims.get("iss") != cid:
            raise refuse("iss is not the client_id")
        if claims.get("sub") != cid:
            raise refuse(f"sub {claims.get('sub')!r} differs from iss/client_id {cid!r}")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self._token_url not in audiences:
            raise refuse(f"aud {aud!r} is not the token URL {self._token_url!r}")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise refuse("jti missing")
        if len(jti) > MAX_JTI_LENGTH:
            raise refuse(f"jti longer than {MAX_JTI_LENGTH} characters ({len(jti)})")
        now = self._clock()
        try:
            exp = _numeric(claims, "exp")
            nbf = _numeric(claims, "nbf")
            iat = _numeric(claims, "iat")
        except ValueError as exc:
            raise refuse(str(exc)) from None
        if exp is None:
            raise refuse("exp missing")
        if exp <= now - CLOCK_SKEW_S:
            raise refuse(f"assertion expired (exp {exp:.0f} <= now {now:.0f})")
        if exp > now + MAX_EXP_AHEAD_S + CLOCK_SKEW_S:
            raise refuse(f"exp more than {MAX_EXP_AHEAD_S} s ahead ({exp - now:.0f} s)")
        if nbf is not None and nbf > now + CLOCK_SKEW_S:
            raise refuse(f"nbf in the future ({nbf - now:.0f} s ahead)")
        if iat is not None and iat > now + CLOCK_SKEW_S:
            raise refuse(f"iat in the future ({iat - now:.0f} s ahead)")
        if not self._jtis.record(cid, jti, exp, now):
            raise refuse("jti already used (replayed assertion)")
