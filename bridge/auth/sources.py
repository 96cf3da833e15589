"""Where access tokens come from: the backend-services grant, or a stored refresh token."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import httpx
from pydantic import SecretStr

from bridge.auth.assertion import assertion_form
from bridge.auth.errors import InvalidGrantError, NotConnectedError
from bridge.auth.keys import KeySet
from bridge.auth.tokens import Token, TokenEndpoint
from bridge.credentials import CredentialStore, StoredCredentials

log = logging.getLogger(__name__)


class TokenSource(Protocol):
    async def fetch(self) -> Token:
        """Obtain a new access token."""
        ...

    async def cached(self) -> Token | None:
        """A previously stored token, if any (may be expired)."""
        ...


class ClientAuthenticator:
    """How a client proves itself at the token endpoint (secret basic/post, private_key_jwt, or none)."""

    def __init__(
        self,
        method: str,
        client_id: str,
        *,
        secret: SecretStr | None = None,
        keys: KeySet | None = None,
        token_url: str = "",
        assertion_lifetime_s: int = 240,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.method = method
        self.client_id = client_id
        self._secret = secret
        self._keys = keys
        self._token_url = token_url
        self._lifetime = assertion_lifetime_s
        self._clock = clock

    def __repr__(self) -> str:
        return f"ClientAuthenticator(method={self.method!r}, client_id={self.client_id!r})"

    def form(self) -> dict[str, str]:
        if self.method == "client_secret_post":
            assert self._secret is not None
            return {"client_id": self.client_id, "client_secret": self._secret.get_secret_value()}
        if self.method == "private_key_jwt":
            assert self._keys is not None
            return {
                "client_id": self.client_id,
                **assertion_form(
                    self._keys.signing_key,
                    client_id=self.client_id,
                    token_url=self._token_url,
                    lifetime_s=self._lifetime,
                    clock=self._clock,
                ),
            }
        if self.method == "none":
            return {"client_id": self.client_id}
        return {}

    def http_auth(self) -> httpx.Auth | None:
        if self.method == "client_secret_basic":
            assert self._secret is not None
            return httpx.BasicAuth(self.client_id, self._secret.get_secret_value())
        return None


class BackendServicesSource:
    """SMART backend services: client_credentials + a freshly signed private_key_jwt each time."""

    def __init__(
        self,
        endpoint: TokenEndpoint,
        keys: KeySet,
        client_id: str,
        *,
        scopes: list[str] | None = None,
        assertion_lifetime_s: int = 240,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._endpoint = endpoint
        self._keys = keys
        self._client_id = client_id
        self._scopes = scopes or []
        self._lifetime = assertion_lifetime_s
        self._clock = clock

    def __repr__(self) -> str:
        return f"BackendServicesSource(client_id={self._client_id!r}, keys={self._keys!r})"

    def _form(self) -> dict[str, str]:
        form = {
            "grant_type": "client_credentials",
            **assertion_form(
                self._keys.signing_key,
                client_id=self._client_id,
                token_url=self._endpoint.token_url,
                lifetime_s=self._lifetime,
                clock=self._clock,
            ),
        }
        if self._scopes:
            form["scope"] = " ".join(self._scopes)
        return form

    async def fetch(self) -> Token:
        return await self._endpoint.request(self._form, grant="client_credentials")

    async def cached(self) -> Token | None:
        return None


def token_to_stored(token: Token, previous_refresh: SecretStr | None = None) -> StoredCredentials:
    return StoredCredentials(
        access_token=token.access_token,
        expires_at=token.expires_at,
        refresh_token=token.refresh_token or previous_refresh,
        scope=token.scope,
        patient=token.patient,
    )


class RefreshTokenSource:
    """Authorization-code connections: exchange the stored refresh token; keep the store current."""

    def __init__(
        self, endpoint: TokenEndpoint, client: ClientAuthenticator, store: CredentialStore, connection: str
    ) -> None:
        self._endpoint = endpoint
        self._client = client
        self._store = store
        self._connection = connection

    def __repr__(self) -> str:
        return f"RefreshTokenSource(connection={self._connection!r})"

    async def cached(self) -> Token | None:
        creds = self._store.load(self._connection)
        if creds is None or creds.access_token is None or creds.expires_at is None:
            return None
        return Token(
            access_token=creds.access_token,
            expires_at=creds.expires_at,
            scope=creds.scope,
            refresh_token=creds.refresh_token,
            patient=creds.patient,
            obtained_at=creds.stored_at,
        )

    async def fetch(self) -> Token:
        creds = self._store.load(self._connection)
        if creds is None or creds.refresh_token is None:
            raise NotConnectedError(
                f"connection {self._connection} has no stored refresh token: run "
                f"`epic-bridge connect {self._connection}` once to sign in"
            )
        refresh = creds.refresh_token

        def form() -> dict[str, str]:
            return {
                "grant_type": "refresh_token",
                "refresh_token": refresh.get_secret_value(),
                **self._client.form(),
            }

        try:
            token = await self._endpoint.request(form, auth=self._client.http_auth(), grant="refresh_token")
        except InvalidGrantError as exc:
            exc.args = (f"{exc.args[0]}; run `epic-bridge connect {self._connection}` to sign in again",)
            raise
        self._store.save(self._connection, token_to_stored(token, refresh))
        return token
