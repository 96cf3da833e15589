"""`OAuthServer`: the simulator's OAuth 2.0 authorization server, assembled from the modules beside it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from .assertions import EC_ALGS, RSA_ALGS, AssertionVerifier
from .client_auth import ClientAuthenticator
from .clients import ClientRegistration, ClientRegistry
from .codes import PKCE_METHODS, CodeStore
from .consent import ConsentEndpoint
from .errors import forbidden, invalid_token
from .jwks_cache import JwksCache, fetch_jwks_over_http
from .refusals import Refusal, RefusalLog
from .scopes import Interaction, covers
from .token_endpoint import GRANT_TYPES, BareFailures, TokenEndpoint
from .tokens import TokenStore


@dataclass(frozen=True)
class Grant:
    """What a valid access token allows; returned by `OAuthServer.authorize()`."""

    client_id: str
    scopes: frozenset[str]
    expires_at: float
    patient: str | None = None


class OAuthServer:
    """Token endpoint, consent page, client registry and the bearer check for FHIR calls.

    `token_url` and `authorize_url` are full URLs: a client assertion's `aud` must equal the token URL
    exactly, and the routes are mounted at these URLs' paths. `refresh_token_lifetime_s` (None: refresh
    tokens live until revoked) is per server, as Epic sets it per customer. With `fhir_base`, /authorize
    requires SMART's `aud` parameter to name it (trailing slash ignored); without, `aud` is not checked.
    All state lives in the instance; methods are safe to call from a test thread while the server runs.
    """

    def __init__(
        self,
        *,
        token_url: str,
        authorize_url: str,
        default_token_lifetime_s: int = 3600,
        jwks_fetch: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
        clock: Callable[[], float] = time.time,
        refresh_token_lifetime_s: int | None = None,
        fhir_base: str | None = None,
    ) -> None:
        if default_token_lifetime_s <= 0:
            raise ValueError("default_token_lifetime_s must be positive")
        self.token_url = token_url
        self.authorize_url = authorize_url
        self._clock = clock
        self._clients = ClientRegistry()
        self._jwks = JwksCache(jwks_fetch or fetch_jwks_over_http, clock)
        self._codes = CodeStore(clock)
        self._tokens = TokenStore(clock)
        self._refusals = RefusalLog(clock)
        self._bare = BareFailures()
        verifier = AssertionVerifier(
            token_url=token_url, registry=self._clients, jwks_cache=self._jwks, clock=clock
        )
        self._token_endpoint = TokenEndpoint(
            authenticator=ClientAuthenticator(self._clients, verifier),
            codes=self._codes,
            tokens=self._tokens,
            refusals=self._refusals,
            bare_failures=self._bare,
            default_lifetime_s=default_token_lifetime_s,
            refresh_lifetime_s=refresh_token_lifetime_s,
        )
        self._consent = ConsentEndpoint(
            registry=self._clients,
            codes=self._codes,
            refusals=self._refusals,
            form_action=urlsplit(authorize_url).path,
            audiences=[fhir_base] if fhir_base else [],
        )

    # -- wiring -------------------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """Token (POST) and authorize (GET consent page, POST decision), at their full paths."""
        return [
            Route(
                urlsplit(self.token_url).path,
                self._token_endpoint.handle,
                methods=["POST"],
                name="oauth_token",
            ),
            Route(
                urlsplit(self.authorize_url).path,
                self._consent.handle,
                methods=["GET", "POST"],
                name="oauth_authorize",
            ),
        ]

    def smart_configuration(self) -> dict[str, Any]:
        """Body of `{fhir base}/.well-known/smart-configuration`, shaped like Epic's."""
        return {
            "authorization_endpoint": self.authorize_url,
            "token_endpoint": self.token_url,
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "token_endpoint_auth_signing_alg_values_supported": sorted(RSA_ALGS) + sorted(EC_ALGS),
            "grant_types_supported": list(GRANT_TYPES),
            "response_types_supported": ["code"],
            "scopes_supported": [
                "openid",
                "fhirUser",
                "launch",
                "launch/patient",
                "offline_access",
                "online_access",
                "system/*.rs",
                "user/*.rs",
                "patient/*.rs",
            ],
            "code_challenge_methods_supported": list(PKCE_METHODS),
            "capabilities": [
                "launch-ehr",
                "launch-standalone",
                "client-public",
                "client-confidential-symmetric",
                "client-confidential-asymmetric",
                "context-ehr-patient",
                "context-standalone-patient",
                "permission-offline",
                "permission-patient",
                "permission-user",
                "permission-v1",
                "permission-v2",
            ],
        }

    # -- administration -----------------------------------------------------------------------------------

    def register_client(self, registration: Mapping[str, Any]) -> None:
        """Validate a ClientRegistration (contract JSON) and add it, replacing one with the same id.

        Raises InvalidRegistration (a ValueError) with the reason. A new registration also forgets the
        cached JWKS of its URL, so re-registering is a way to force a refetch.
        """
        client = ClientRegistration.from_json(registration)
        self._clients.register(client)
        if client.jwks_url:
            self._jwks.forget(client.jwks_url)

    def remove_client(self, client_id: str) -> bool:
        return self._clients.remove(client_id)

    def client(self, client_id: str) -> ClientRegistration | None:
        return self._clients.get(client_id)

    def expire_all_tokens(self) -> None:
        """Expire every issued access token now (refresh tokens stay valid)."""
        self._tokens.expire_all()

    def inject_bare_400(self, count: int) -> None:
        """The next `count` token requests answer a bare HTTP 400 with an empty body."""
        self._bare.add(count)

    @property
    def default_token_lifetime_s(self) -> int:
        return self._token_endpoint.default_lifetime_s

    @default_token_lifetime_s.setter
    def default_token_lifetime_s(self, seconds: int) -> None:
        if seconds <= 0:
            raise ValueError("token lifetime must be positive")
        self._token_endpoint.default_lifetime_s = seconds

    # -- observation (tests assert *why*) -----------------------------------------------------------------

    @property
    def last_error(self) -> Refusal | None:
        """The latest refusal (token, authorize or FHIR bearer check), with its logged reason."""
        return self._refusals.last

    def refusals(self, since: int = 0) -> list[Refusal]:
        return self._refusals.since(since)

    @property
    def jwks_fetch_count(self) -> int:
        """How many times a JWKS URL was actually fetched (cache misses and kid-driven refetches)."""
        return self._jwks.fetch_count

    # -- FHIR calls ---------------------------------------------------------------------------------------

    def authorize(self, request: Request, resource_type: str, interaction: Interaction) -> Grant:
        """The grant behind the request's bearer token, if it allows `interaction` on `resource_type`.

        Raises OAuthHTTPException: 401 with Epic's WWW-Authenticate for a missing, unknown or expired token;
        403 with an OperationOutcome when the token's scopes do not cover the call.
        """
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._refusals.add("fhir", None, "invalid_token", "no bearer token")
            raise invalid_token("no bearer token")
        record = self._tokens.access(token)
        if record is None:
            self._refusals.add("fhir", None, "invalid_token", "unknown or expired access token")
            raise invalid_token("unknown or expired access token")
        request.state.client_id = record.client_id
        if not covers(record.scopes, resource_type, interaction):
            reason = f"scopes {' '.join(record.scopes)!r} do not allow {interaction} on {resource_type}"
            self._refusals.add("fhir", record.client_id, "forbidden", reason)
            raise forbidden(resource_type, interaction, reason)
        return Grant(record.client_id, frozenset(record.scopes), record.expires_at, record.patient)
