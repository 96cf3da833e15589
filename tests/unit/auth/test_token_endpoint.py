from __future__ import annotations

import json
from urllib.parse import parse_qs

import httpx
import jwt as pyjwt
import pytest

from bridge.auth.errors import (
    BareBadRequestError,
    InvalidClientError,
    InvalidGrantError,
    TokenEndpointUnavailable,
)
from bridge.auth.keys import KeySet, SigningKey
from bridge.auth.sources import BackendServicesSource, ClientAuthenticator
from bridge.auth.tokens import TokenEndpoint
from bridge.retry import RetryPolicy

TOKEN_URL = "https://epic.example.org/oauth2/token"
OK = {
    "access_token": "at-123456789",
    "token_type": "bearer",
    "expires_in": 3600,
    "scope": "system/Patient.rs",
}


async def no_sleep(_: float) -> None:
    return None


def endpoint(handler: httpx.MockTransport, **kw: object) -> tuple[TokenEndpoint, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=handler)
    ep = TokenEndpoint(
        http,
        TOKEN_URL,
        sleep=no_sleep,
        policy=RetryPolicy(max_attempts=3, base_delay_s=0.01),
        clock=lambda: 1000.0,
        **kw,
    )  # type: ignore[arg-type]
    return ep, http


def form_of(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


async def test_backend_services_grant(signing_key: SigningKey) -> None:
    seen: list[dict[str, str]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(form_of(request))
        return httpx.Response(200, json=OK)

    ep, http = endpoint(httpx.MockTransport(handle))
    async with http:
        token = await BackendServicesSource(
            ep, KeySet([signing_key]), "client-1", scopes=["system/Patient.rs"]
        ).fetch()
    assert token.access_token.get_secret_value() == "at-123456789"
    assert token.expires_at == 1000.0 + 3600 and token.scopes == {"system/Patient.rs"}
    assert "at-123456789" not in repr(token)
    [form] = seen
    assert form["grant_type"] == "client_credentials" and form["scope"] == "system/Patient.rs"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert pyjwt.decode(form["client_assertion"], options={"verify_signature": False})["aud"] == TOKEN_URL


async def test_bare_400_retried_with_fresh_assertion(signing_key: SigningKey) -> None:
    jtis: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        jtis.append(
            pyjwt.decode(form_of(request)["client_assertion"], options={"verify_signature": False})["jti"]
        )
        return httpx.Response(400) if len(jtis) < 3 else httpx.Response(200, json=OK)

    ep, http = endpoint(httpx.MockTransport(handle), bare_400_retries=3)
    async with http:
        await BackendServicesSource(ep, KeySet([signing_key]), "c").fetch()
    assert len(jtis) == 3 and len(set(jtis)) == 3


async def test_bare_400_bounded(signing_key: SigningKey) -> None:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(400, text="")

    ep, http = endpoint(httpx.MockTransport(handle), bare_400_retries=2)
    async with http:
        with pytest.raises(BareBadRequestError):
            await BackendServicesSource(ep, KeySet([signing_key]), "c").fetch()
    assert calls == 3


@pytest.mark.parametrize(
    ("error", "cls"), [("invalid_client", InvalidClientError), ("invalid_grant", InvalidGrantError)]
)
async def test_oauth_errors_typed_and_not_retried(error: str, cls: type[Exception]) -> None:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(400, json={"error": error, "error_description": None})

    ep, http = endpoint(httpx.MockTransport(handle))
    async with http:
        with pytest.raises(cls) as exc:
            await ep.request(lambda: {"grant_type": "refresh_token", "refresh_token": "rt-secret"})
    assert calls == 1
    assert "rt-secret" not in str(exc.value)
    assert error in str(exc.value)


async def test_server_errors_retried_then_unavailable() -> None:
    statuses = [503, 502, 200]

    def handle(request: httpx.Request) -> httpx.Response:
        s = statuses.pop(0)
        return httpx.Response(s, json=OK if s == 200 else {})

    ep, http = endpoint(httpx.MockTransport(handle))
    async with http:
        await ep.request(lambda: {"grant_type": "client_credentials"})

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    ep, http = endpoint(httpx.MockTransport(down))
    async with http:
        with pytest.raises(TokenEndpointUnavailable):
            await ep.request(lambda: {"grant_type": "client_credentials"})


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "none"])
async def test_client_authentication_styles(method: str) -> None:
    from pydantic import SecretStr

    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={**OK, "refresh_token": "rt"})

    ep, http = endpoint(httpx.MockTransport(handle))
    client = ClientAuthenticator(method, "cid", secret=SecretStr("s3cret"))
    async with http:
        token = await ep.request(
            lambda: {"grant_type": "refresh_token", "refresh_token": "rt", **client.form()},
            auth=client.http_auth(),
        )
    assert token.refresh_token is not None
    form = form_of(seen[0])
    if method == "client_secret_basic":
        assert seen[0].headers["Authorization"].startswith("Basic ") and "client_secret" not in form
    elif method == "client_secret_post":
        assert form["client_secret"] == "s3cret" and "Authorization" not in seen[0].headers
    else:
        assert form["client_id"] == "cid" and "client_secret" not in form
    assert "s3cret" not in repr(client)


async def test_non_json_success_is_an_error() -> None:
    ep, http = endpoint(httpx.MockTransport(lambda r: httpx.Response(200, text="<html>")))
    async with http:
        with pytest.raises(Exception, match="not JSON"):
            await ep.request(dict)
    assert json.dumps(OK)
