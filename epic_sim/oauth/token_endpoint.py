"""`POST .../oauth2/token`: client_credentials, authorization_code and refresh_token grants."""

from __future__ import annotations

import logging
import threading
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .client_auth import AuthenticatedClient, ClientAuthenticator
from .clients import ClientRegistration
from .codes import CodeReused, CodeStore, code_family
from .errors import NO_STORE_HEADERS, OAuthError, token_error_response
from .forms import FormError, read_form
from .refusals import RefusalLog
from .scopes import narrow, registered_in_contexts, split_scope_param
from .tokens import TokenStore

logger = logging.getLogger("epic_sim.oauth")

GRANT_TYPES = ("authorization_code", "client_credentials", "refresh_token")


class BareFailures:
    """Counter for Epic's spurious bare 400s (`inject_bare_400`)."""

    def __init__(self) -> None:
        self._left = 0
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._left += count

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


class TokenEndpoint:
    def __init__(
        self,
        *,
        authenticator: ClientAuthenticator,
        codes: CodeStore,
        tokens: TokenStore,
        refusals: RefusalLog,
        bare_failures: BareFailures,
        default_lifetime_s: int,
        refresh_lifetime_s: int | None = None,
    ) -> None:
        self._auth = authenticator
        self._codes = codes
        self._tokens = tokens
        self._refusals = refusals
        self._bare = bare_failures
        self.default_lifetime_s = default_lifetime_s
        self.refresh_lifetime_s = refresh_lifetime_s

    async def handle(self, request: Request) -> Response:
        if self._bare.take():
            self._refusals.add("token", None, "bare_400", "injected bare 400")
            request.state.oauth_error = "bare_400"
            return Response(status_code=400, content=b"")
        basic_used = request.headers.get("authorization", "").lower().startswith("basic ")
        try:
            body = await self._handle(request)
        except OAuthError as err:
            self._refusals.add("token", err.client_id, err.error, err.reason)
            request.state.oauth_error = err.error
            request.state.oauth_reason = err.reason
            if err.client_id is not None:
                request.state.client_id = err.client_id
            return token_error_response(err, basic_auth_used=basic_used)
        return JSONResponse(body, headers=NO_STORE_HEADERS)

    async def _handle(self, request: Request) -> dict[str, Any]:
        try:
            form = await read_form(request)
        except FormError as exc:
            raise OAuthError("invalid_request", str(exc)) from None
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type missing", client_id=form.get("client_id"))
        if grant_type not in GRANT_TYPES:
            raise OAuthError(
                "unsupported_grant_type",
                f"grant_type {grant_type!r} not supported",
                client_id=form.get("client_id"),
            )
        authed = await self._auth.authenticate(form, request.headers.get("authorization"))
        request.state.client_id = authed.client.client_id
        if grant_type == "client_credentials":
            return self._client_credentials(form, authed)
        if grant_type == "authorization_code":
            return self._authorization_code(form, authed)
        return self._refresh_token(form, authed)

    def _lifetime(self, client: ClientRegistration) -> int:
        return client.token_lifetime_s or self.default_lifetime_s

    def _client_credentials(self, form: dict[str, str], authed: AuthenticatedClient) -> dict[str, Any]:
        client = authed.client
        if authed.method != "private_key_jwt":
            raise OAuthError(
                "unauthorized_client",
                f"client_credentials needs private_key_jwt, got {authed.method}",
                client_id=client.client_id,
            )
        registered = registered_in_contexts(client.scopes, {"system"})
        requested = split_scope_param(form.get("scope"))
        scopes = narrow(requested, registered, contexts={"system"}) if requested else registered
        if not scopes:
            raise OAuthError(
                "invalid_scope", "no registered system scope matches the request", client_id=client.client_id
            )
        lifetime = self._lifetime(client)
        token, _ = self._tokens.issue_access(client.client_id, tuple(scopes), lifetime)
        logger.info(
            "issued access token: client=%s grant=client_credentials lifetime=%ss scopes=%s",
            client.client_id,
            lifetime,
            " ".join(scopes),
        )
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": lifetime,
            "scope": " ".join(scopes),
        }

    def _authorization_code(self, form: dict[str, str], authed: AuthenticatedClient) -> dict[str, Any]:
        client = authed.client
        code = form.get("code")
        if not code:
            raise OAuthError("invalid_request", "code missing", client_id=client.client_id)
        try:
            grant = self._codes.redeem(
                code,
                client_id=client.client_id,
                redirect_uri=form.get("redirect_uri"),
                verifier=form.get("code_verifier"),
            )
        except CodeReused:
            self._tokens.revoke_family(code_family(code))
            raise
        family = code_family(code)
        lifetime = self._lifetime(client)
        token, _ = self._tokens.issue_access(
            client.client_id, grant.scopes, lifetime, patient=grant.patient, family=family
        )
        refresh = self._tokens.issue_refresh(
            client.client_id, grant.scopes, grant.patient, family, self.refresh_lifetime_s
        )
        logger.info(
            "issued access+refresh token: client=%s grant=authorization_code lifetime=%ss",
            client.client_id,
            lifetime,
        )
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": lifetime,
            "scope": " ".join(grant.scopes),
            "refresh_token": refresh,
        }
        if grant.patient:
            body["patient"] = grant.patient
        return body

    def _refresh_token(self, form: dict[str, str], authed: AuthenticatedClient) -> dict[str, Any]:
        client = authed.client
        value = form.get("refresh_token")
        if not value:
            raise OAuthError("invalid_request", "refresh_token missing", client_id=client.client_id)
        record = self._tokens.refresh(value)
        if record is None:
            raise OAuthError(
                "invalid_grant", "unknown, revoked or expired refresh token", client_id=client.client_id
            )
        if record.client_id != client.client_id:
            raise OAuthError(
                "invalid_grant", "refresh token was issued to another client", client_id=client.client_id
            )
        scopes = record.scopes
        requested = split_scope_param(form.get("scope"))
        if requested:
            extra = [s for s in requested if s not in record.scopes]
            if extra:
                raise OAuthError(
                    "invalid_scope", f"scope beyond the original grant: {extra}", client_id=client.client_id
                )
            scopes = tuple(requested)
        lifetime = self._lifetime(client)
        token, _ = self._tokens.issue_access(
            client.client_id, scopes, lifetime, patient=record.patient, family=record.family
        )
        logger.info(
            "issued access token: client=%s grant=refresh_token lifetime=%ss", client.client_id, lifetime
        )
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": lifetime,
            "scope": " ".join(scopes),
        }
        if record.patient:
            body["patient"] = record.patient
        return body
