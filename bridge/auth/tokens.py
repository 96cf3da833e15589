"""Access tokens and the token endpoint client (bounded retries, typed errors)."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from bridge.auth.errors import (
    ERRORS_BY_CODE,
    BareBadRequestError,
    TokenEndpointError,
    TokenEndpointUnavailable,
)
from bridge.retry import RetryPolicy, Sleep, send_with_retry

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN_S = 300.0


@dataclass(frozen=True, repr=False, eq=False)
class Token:
    """An access token (and maybe a refresh token). The repr never shows token values."""

    access_token: SecretStr
    expires_at: float
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    scope: str | None = None
    refresh_token: SecretStr | None = None
    patient: str | None = None
    obtained_at: float = 0.0
    server_time_offset_s: float | None = None

    def __repr__(self) -> str:
        return (
            f"Token(type={self.token_type!r}, expires_at={self.expires_at:.0f}, scope={self.scope!r}, "
            f"refresh_token={'***' if self.refresh_token else None})"
        )

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset((self.scope or "").split())

    def expires_within(self, margin_s: float, now: float) -> bool:
        return now + margin_s >= self.expires_at

    def authorization_header(self) -> str:
        return f"Bearer {self.access_token.get_secret_value()}"


def _server_offset(response: httpx.Response, now: float) -> float | None:
    date = response.headers.get("Date")
    if not date:
        return None
    try:
        return email.utils.parsedate_to_datetime(date).timestamp() - now
    except (TypeError, ValueError):
        return None


def parse_token_response(body: dict[str, Any], *, now: float, offset: float | None = None) -> Token:
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenEndpointError(200, "invalid_response", "no access_token in the token response")
    try:
        expires_in = float(body.get("expires_in") or DEFAULT_EXPIRES_IN_S)
    except (TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN_S
    refresh = body.get("refresh_token")
    return Token(
        access_token=SecretStr(access),
        expires_at=now + expires_in,
        token_type=str(body.get("token_type") or "bearer"),
        scope=body.get("scope") if isinstance(body.get("scope"), str) else None,
        refresh_token=SecretStr(refresh) if isinstance(refresh, str) and refresh else None,
        patient=body.get("patient") if isinstance(body.get("patient"), str) else None,
        obtained_at=now,
        server_time_offset_s=offset,
    )


def _oauth_error(response: httpx.Response) -> tuple[str | None, str | None]:
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    desc = body.get("error_description")
    return (error if isinstance(error, str) else None), (desc if isinstance(desc, str) else None)


FormBuilder = Callable[[], dict[str, str]]


class TokenEndpoint:
    """POSTs grants to one token URL on the connection's shared httpx client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        token_url: str,
        *,
        policy: RetryPolicy | None = None,
        bare_400_retries: int = 3,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self.token_url = token_url
        self._policy = policy or RetryPolicy(max_attempts=4, base_delay_s=0.5, max_delay_s=10.0)
        self._bare_400_retries = bare_400_retries
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock

    def __repr__(self) -> str:
        return f"TokenEndpoint({self.token_url!r})"

    async def request(
        self, build_form: FormBuilder, *, auth: httpx.Auth | None = None, grant: str = ""
    ) -> Token:
        """Send a grant. ``build_form`` is called per attempt so each attempt has a fresh assertion/jti."""
        bare_400s = 0
        while True:

            async def send() -> httpx.Response:
                return await self._http.post(
                    self.token_url,
                    data=build_form(),
                    auth=auth or httpx.USE_CLIENT_DEFAULT,
                    headers={"Accept": "application/json"},
                )

            try:
                response = await send_with_retry(send, self._policy, sleep=self._sleep, rng=self._rng)
            except httpx.TransportError as exc:
                raise TokenEndpointUnavailable(
                    None, type(exc).__name__, str(exc) or None, token_url=self.token_url
                ) from None
            now = self._clock()
            log.info(
                "token endpoint %s answered HTTP %d (grant %s)", self.token_url, response.status_code, grant
            )
            if response.status_code == 200:
                try:
                    body = response.json()
                except ValueError:
                    raise TokenEndpointError(
                        200, "invalid_response", "token response is not JSON", token_url=self.token_url
                    ) from None
                if not isinstance(body, dict):
                    raise TokenEndpointError(
                        200,
                        "invalid_response",
                        "token response is not a JSON object",
                        token_url=self.token_url,
                    )
                return parse_token_response(body, now=now, offset=_server_offset(response, now))
            error, desc = _oauth_error(response)
            if error is None and response.status_code == 400:
                bare_400s += 1
                if bare_400s <= self._bare_400_retries:
                    wait = self._policy.backoff(bare_400s, self._rng)
                    log.warning(
                        "token endpoint answered a bare HTTP 400; retry %d of %d in %.2fs",
                        bare_400s,
                        self._bare_400_retries,
                        wait,
                    )
                    await self._sleep(wait)
                    continue
                raise BareBadRequestError(400, None, None, token_url=self.token_url)
            if response.status_code >= 500 or response.status_code == 429:
                raise TokenEndpointUnavailable(response.status_code, error, desc, token_url=self.token_url)
            cls = ERRORS_BY_CODE.get(error or "", TokenEndpointError)
            err = cls(response.status_code, error, desc, token_url=self.token_url)
            err.server_time_offset_s = _server_offset(response, now)
            raise err
