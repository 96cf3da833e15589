"""The client registry: what Epic's app registration holds for each client.

Registration JSON (the shared contract):
  {"client_id": str,
   "auth_methods": ["private_key_jwt" | "client_secret_basic" | "client_secret_post" | "none"...],
   "jwks_url": str|null, "jwks": {JWK Set}|null, "client_secret": str|null,
   "scopes": [str...], "redirect_uris": [str...], "token_lifetime_s": int|null}
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt

from .errors import InvalidRegistration
from .scopes import validate_scopes

AUTH_METHODS = frozenset({"private_key_jwt", "client_secret_basic", "client_secret_post", "none"})
SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})
_FIELDS = frozenset(
    {
        "client_id",
        "auth_methods",
        "jwks_url",
        "jwks",
        "client_secret",
        "scopes",
        "redirect_uris",
        "token_lifetime_s",
    }
)
# JWK members that only a private key has; a registration must never carry them.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True)
class ClientRegistration:
    client_id: str
    auth_methods: frozenset[str]
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = None
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ()
    redirect_uris: tuple[str, ...] = ()
    token_lifetime_s: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClientRegistration:
        """Validate the contract's registration JSON; raises InvalidRegistration with the reason."""
        if not isinstance(data, Mapping):
            raise InvalidRegistration("registration must be a JSON object")
        unknown = set(data) - _FIELDS
        if unknown:
            raise InvalidRegistration(f"unknown registration fields: {sorted(unknown)}")
        client_id = data.get("client_id")
        if not isinstance(client_id, str) or not client_id.strip():
            raise InvalidRegistration("client_id must be a non-empty string")
        methods = data.get("auth_methods") or []
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            raise InvalidRegistration("auth_methods must be a list of strings")
        bad = set(methods) - AUTH_METHODS
        if bad:
            raise InvalidRegistration(f"unsupported auth_methods {sorted(bad)}; use {sorted(AUTH_METHODS)}")
        if not methods:
            raise InvalidRegistration("auth_methods must name at least one method")
        jwks_url = data.get("jwks_url")
        jwks = data.get("jwks")
        if jwks_url is not None:
            parts = urlsplit(jwks_url) if isinstance(jwks_url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                raise InvalidRegistration("jwks_url must be an absolute http(s) URL")
        if jwks is not None:
            _check_public_jwks(jwks)
        if "private_key_jwt" in methods and jwks_url is None and jwks is None:
            raise InvalidRegistration("private_key_jwt needs jwks_url or jwks")
        secret = data.get("client_secret")
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise InvalidRegistration("client_secret must be a non-empty string")
        if SECRET_METHODS & set(methods) and secret is None:
            raise InvalidRegistration("client_secret_basic/client_secret_post need client_secret")
        scopes = data.get("scopes") or []
        if not isinstance(scopes, list):
            raise InvalidRegistration("scopes must be a list of strings")
        try:
            validate_scopes(scopes)
        except ValueError as exc:
            raise InvalidRegistration(str(exc)) from None
        redirect_uris = data.get("redirect_uris") or []
        if not isinstance(redirect_uris, list):
            raise InvalidRegistration("redirect_uris must be a list of strings")
        for uri in redirect_uris:
            parts = urlsplit(uri) if isinstance(uri, str) else None
            if (
                parts is None
                or not parts.scheme
                or parts.fragment
                or (parts.scheme in ("http", "https") and not parts.netloc)
            ):
                raise InvalidRegistration(f"redirect URI {uri!r} must be absolute and have no fragment")
        lifetime = data.get("token_lifetime_s")
        if lifetime is not None and (
            isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0
        ):
            raise InvalidRegistration("token_lifetime_s must be a positive integer or null")
        return cls(
            client_id=client_id,
            auth_methods=frozenset(methods),
            jwks_url=jwks_url,
            jwks=jwks,
            client_secret=secret,
            scopes=tuple(dict.fromkeys(scopes)),
            redirect_uris=tuple(redirect_uris),
            token_lifetime_s=lifetime,
        )


def _check_public_jwks(jwks: Any) -> None:
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise InvalidRegistration('jwks must be a JWK Set: {"keys": [...]} with at least one key')
    for key in jwks["keys"]:
        if not isinstance(key, Mapping):
            raise InvalidRegistration("every JWK must be an object")
        if _PRIVATE_MEMBERS & set(key):
            raise InvalidRegistration("jwks must hold public keys only (found private key members)")
        try:
            jwt.PyJWK(dict(key))
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise InvalidRegistration(f"unusable JWK (kid={key.get('kid')!r}): {exc}") from None


class ClientRegistry:
    """Registered clients by id; safe to use from the server loop and a test thread."""

    def __init__(self) -> None:
        self._clients: dict[str, ClientRegistration] = {}
        self._lock = threading.Lock()

    def register(self, registration: ClientRegistration) -> None:
        with self._lock:
            self._clients[registration.client_id] = registration

    def remove(self, client_id: str) -> bool:
        with self._lock:
            return self._clients.pop(client_id, None) is not None

    def get(self, client_id: str) -> ClientRegistration | None:
        with self._lock:
            return self._clients.get(client_id)
