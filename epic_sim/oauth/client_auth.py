"""Client authentication at the token endpoint (RFC 6749 2.3, RFC 7523 2.2).

One method per request: HTTP Basic (`client_secret_basic`), form secret (`client_secret_post`), a JWT
assertion (`private_key_jwt`), or just `client_id` for a public client (`none`). The method used must be
one the client registered.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from urllib.parse import unquote

from .assertions import JWT_BEARER, AssertionVerifier
from .clients import ClientRegistration, ClientRegistry
from .errors import OAuthError


@dataclass(frozen=True)
class AuthenticatedClient:
    client: ClientRegistration
    method: str


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """(client_id, secret) from an `Authorization: Basic` header; None when no Basic header was sent.

    Raises OAuthError(invalid_client) for a malformed one.
    """
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "malformed Basic authorization header") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise OAuthError("invalid_client", "Basic credentials without ':'")
    # RFC 6749 2.3.1: both parts are form-urlencoded before base64 (a no-op for plain ids and secrets).
    return unquote(client_id), unquote(secret)


class ClientAuthenticator:
    def __init__(self, registry: ClientRegistry, verifier: AssertionVerifier) -> None:
        self._registry = registry
        self._verifier = verifier

    async def authenticate(self, form: dict[str, str], authorization: str | None) -> AuthenticatedClient:
        basic = basic_credentials(authorization)
        has_assertion = "client_assertion" in form or "client_assertion_type" in form
        has_post_secret = "client_secret" in form
        used = [
            name
            for name, on in (
                ("basic", basic is not None),
                ("assertion", has_assertion),
                ("post", has_post_secret),
            )
            if on
        ]
        if len(used) > 1:
            raise OAuthError("invalid_request", f"more than one client authentication method used: {used}")
        form_client_id = form.get("client_id") or None

        if basic is not None:
            client_id, secret = basic
            if form_client_id is not None and form_client_id != client_id:
                raise OAuthError("invalid_request", "client_id parameter differs from the Basic credentials")
            client = self._client_with(client_id, "client_secret_basic")
            self._check_secret(client, secret)
            return AuthenticatedClient(client, "client_secret_basic")

        if has_assertion:
            assertion_type = form.get("client_assertion_type")
            assertion = form.get("client_assertion")
            if not assertion_type or not assertion:
                raise OAuthError(
                    "invalid_request",
                    "client_assertion and client_assertion_type go together",
                    client_id=form_client_id,
                )
            if assertion_type != JWT_BEARER:
                raise OAuthError(
                    "invalid_client",
                    f"unsupported client_assertion_type {assertion_type!r}",
                    client_id=form_client_id,
                )
            client = await self._verifier.verify(assertion, form_client_id)
            return AuthenticatedClient(client, "private_key_jwt")

        if form_client_id is None:
            raise OAuthError("invalid_client", "no client authentication and no client_id")
        if has_post_secret:
            client = self._client_with(form_client_id, "client_secret_post")
            self._check_secret(client, form["client_secret"])
            return AuthenticatedClient(client, "client_secret_post")
        client = self._client_with(form_client_id, "none")
        return AuthenticatedClient(client, "none")

    def _client_with(self, client_id: str, method: str) -> ClientRegistration:
        client = self._registry.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", f"unknown client {client_id!r}", client_id=client_id)
        if method not in client.auth_methods:
            raise OAuthError(
                "invalid_client",
                f"auth method {method} not allowed for this client (allowed: {sorted(client.auth_methods)})",
                client_id=client_id,
            )
        return client

    @staticmethod
    def _check_secret(client: ClientRegistration, secret: str) -> None:
        expected = client.client_secret or ""
        if not expected or not hmac.compare_digest(secret.encode(), expected.encode()):
            raise OAuthError("invalid_client", "wrong client secret", client_id=client.client_id)
