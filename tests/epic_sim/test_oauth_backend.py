"""Backend services: client_credentials with a private_key_jwt assertion, through real HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
from test_oauth_support import JWT_BEARER, TOKEN_PATH, OAuthEnv, ec_key, oauth_env, rsa_key


@pytest.fixture
def env() -> Iterator[OAuthEnv]:
    with oauth_env() as e:
        yield e


def refused_because(env: OAuthEnv, response: httpx.Response, reason_part: str) -> None:
    """The wire says only invalid_client (401), Epic style; the server's log says why."""
    assert response.status_code == 401, response.text
    assert response.json() == {"error": "invalid_client", "error_description": None}
    assert response.headers["cache-control"] == "no-store"
    last = env.oauth.last_error
    assert last is not None and last.endpoint == "token" and last.error == "invalid_client"
    assert reason_part in last.reason, last.reason


@pytest.mark.parametrize("alg", ["RS384", "RS256", "RS512"])
def test_client_credentials_issues_token_with_registered_system_scopes(env: OAuthEnv, alg: str) -> None:
    key = env.register_backend()
    response = env.client_credentials(env.assertion(key, alg=alg))
    assert response.status_code == 200, env.oauth.last_error
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["scope"].split() == ["system/Patient.rs", "system/Observation.rs", "system/Observation.c"]
    assert response.headers["cache-control"] == "no-store"
    # The token is opaque, not a JWT, and it works on a FHIR call.
    assert body["access_token"].count(".") != 2
    probe = env.get("Patient/abc", body["access_token"])
    assert probe.status_code == 200
    assert probe.json()["client_id"] == "backend-app"
    assert env.jwks.hits == 1


def test_token_accepted_from_inline_jwks_without_fetching(env: OAuthEnv) -> None:
    key = env.register_backend(inline=True)
    assert env.backend_token(key)
    assert env.jwks.hits == 0


def test_jwks_is_cached_between_requests(env: OAuthEnv) -> None:
    key = env.register_backend()
    env.backend_token(key)
    env.backend_token(key)
    assert env.jwks.hits == 1
    assert env.oauth.jwks_fetch_count == 1


def test_requested_scope_is_intersected_with_registered(env: OAuthEnv) -> None:
    key = env.register_backend()
    response = env.client_credentials(
        env.assertion(key), scope="system/Patient.r system/Encounter.rs system/Observation.s"
    )
    assert response.status_code == 200
    assert response.json()["scope"] == "system/Patient.r system/Observation.s"

    nothing = env.client_credentials(env.assertion(key), scope="system/Encounter.rs")
    assert nothing.status_code == 400
    assert nothing.json() == {"error": "invalid_scope", "error_description": None}


def test_wrong_key_refused(env: OAuthEnv) -> None:
    env.register_backend(key=rsa_key(0))
    impostor = rsa_key(1, kid="rsa-0")  # same kid, different key
    refused_because(env, env.client_credentials(env.assertion(impostor)), "signature does not verify")


def test_expired_assertion_refused(env: OAuthEnv) -> None:
    key = env.register_backend()
    now = env.clock()
    stale = env.assertion(key, exp=int(now - 60), iat=int(now - 120))
    refused_because(env, env.client_credentials(stale), "expired")


def test_exp_more_than_five_minutes_ahead_refused(env: OAuthEnv) -> None:
    key = env.register_backend()
    refused_because(env, env.client_credentials(env.assertion(key, exp_in=400)), "more than 300 s ahead")
    # exactly 5 minutes is fine
    assert env.client_credentials(env.assertion(key, exp_in=300)).status_code == 200


def test_replayed_jti_refused(env: OAuthEnv) -> None:
    key = env.register_backend()
    jti = uuid.uuid4().hex
    assert env.client_credentials(env.assertion(key, jti=jti)).status_code == 200
    refused_because(env, env.client_credentials(env.assertion(key, jti=jti)), "jti already used")


def test_same_assertion_sent_twice_refused(env: OAuthEnv) -> None:
    key = env.register_backend()
    assertion = env.assertion(key)
    assert env.client_credentials(assertion).status_code == 200
    refused_because(env, env.client_credentials(assertion), "replayed")


def test_jti_reusable_after_its_exp(env: OAuthEnv) -> None:
    key = env.register_backend()
    assert env.client_credentials(env.assertion(key, jti="j-1", exp_in=60)).status_code == 200
    env.clock.advance(120)
    assert env.client_credentials(env.assertion(key, jti="j-1", exp_in=60)).status_code == 200


@pytest.mark.parametrize(
    "aud",
    ["https://fhir.epic.com/interconnect-fhir-oauth/oauth2/token", "TRAILING_SLASH", "FHIR_BASE"],
)
def test_wrong_aud_refused(env: OAuthEnv, aud: str) -> None:
    key = env.register_backend()
    aud = {"TRAILING_SLASH": env.token_url + "/", "FHIR_BASE": env.fhir_base}.get(aud, aud)
    refused_because(env, env.client_credentials(env.assertion(key, aud=aud)), "is not the token URL")


def test_iss_differs_from_sub_refused(env: OAuthEnv) -> None:
    key = env.register_backend()
    refused_because(env, env.client_credentials(env.assertion(key, sub="someone-else")), "sub")


def test_unknown_client_refused(env: OAuthEnv) -> None:
    key = env.register_backend()
    response = env.client_credentials(env.assertion(key, "not-registered"))
    refused_because(env, response, "unknown client")
    assert env.oauth.last_error is not None and env.oauth.last_error.client_id == "not-registered"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"omit": ("jti",)}, "jti missing"),
        ({"jti": "x" * 152}, "longer than 151"),
        ({"omit": ("exp",)}, "exp missing"),
        ({"nbf": int(time.time() + 120)}, "nbf in the future"),
        ({"iat": int(time.time() + 120)}, "iat in the future"),
        ({"header": {"typ": "JOSE+JSON"}}, "not JWT"),
        ({"header": {"kid": "no-such-kid"}}, "no RSA key with kid 'no-such-kid'"),
    ],
)
def test_malformed_assertions_refused(env: OAuthEnv, kwargs: dict[str, object], reason: str) -> None:
    key = env.register_backend()
    refused_because(env, env.client_credentials(env.assertion(key, **kwargs)), reason)  # type: ignore[arg-type]


def test_jti_of_151_chars_accepted(env: OAuthEnv) -> None:
    key = env.register_backend()
    assert env.client_credentials(env.assertion(key, jti="y" * 151)).status_code == 200


def test_hs256_and_none_algorithms_refused(env: OAuthEnv) -> None:
    env.register_backend()
    claims = {
        "iss": "backend-app",
        "sub": "backend-app",
        "aud": env.token_url,
        "jti": "h",
        "exp": time.time() + 60,
    }
    hs = jwt.encode(claims, "a-shared-secret-of-enough-length-32b", algorithm="HS256")
    refused_because(env, env.client_credentials(hs), "alg 'HS256' not accepted")
    none = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    refused_because(env, env.client_credentials(none), "alg 'none' not accepted")


def test_es256_only_with_a_jwks_url(env: OAuthEnv) -> None:
    key = ec_key()
    env.register_backend("ec-url", key)
    assert env.backend_token(key, "ec-url", alg="ES256")
    env.register_backend("ec-inline", key, inline=True)
    refused_because(env, env.client_credentials(env.assertion(key, "ec-inline", alg="ES256")), "not accepted")


def test_key_rotation_new_kid_triggers_one_refetch(env: OAuthEnv) -> None:
    old = env.register_backend(key=rsa_key(0, kid="2026-01"))
    env.backend_token(old)
    assert env.jwks.hits == 1
    # The client publishes a new key and starts signing with it.
    new = rsa_key(2, kid="2026-02")
    env.jwks.keys.append(new.public_jwk)
    env.backend_token(new)
    assert env.jwks.hits == 2
    env.backend_token(old)
    env.backend_token(new)
    assert env.jwks.hits == 2
    # An unknown kid that is not published either: one refetch, then refused.
    stranger = rsa_key(3, kid="2026-03")
    refused_because(env, env.client_credentials(env.assertion(stranger)), "no RSA key with kid '2026-03'")
    assert env.jwks.hits == 3


def test_jwks_redirect_not_followed(env: OAuthEnv) -> None:
    key = rsa_key(0)
    env.jwks.keys.append(key.public_jwk)
    env.oauth.register_client(
        {
            "client_id": "moved",
            "auth_methods": ["private_key_jwt"],
            "jwks_url": env.jwks.redirecting_url,
            "scopes": ["system/Patient.rs"],
        }
    )
    refused_because(env, env.client_credentials(env.assertion(key, "moved")), "redirects are not followed")
    assert env.jwks.hits == 1


def test_unreachable_jwks_url_refused(env: OAuthEnv) -> None:
    key = rsa_key(0)
    env.oauth.register_client(
        {
            "client_id": "gone",
            "auth_methods": ["private_key_jwt"],
            "jwks_url": env.jwks.thread.url + "/missing.json",
            "scopes": ["system/Patient.rs"],
        }
    )
    refused_because(env, env.client_credentials(env.assertion(key, "gone")), "HTTP 404")


def test_client_id_parameter_must_match_iss(env: OAuthEnv) -> None:
    key = env.register_backend()
    response = env.client_credentials(env.assertion(key), client_id="another-app")
    refused_because(env, response, "client_id parameter differs")


def test_wrong_assertion_type_refused(env: OAuthEnv) -> None:
    key = env.register_backend()
    response = env.http.post(
        TOKEN_PATH,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            "client_assertion": env.assertion(key),
        },
    )
    refused_because(env, response, "unsupported client_assertion_type")


def test_assertion_signed_by_authlib_accepted(env: OAuthEnv) -> None:
    """Interop with the library the bridge signs with, including its 1-hour default exp (refused)."""
    from authlib.oauth2.rfc7523 import private_key_jwt_sign
    from cryptography.hazmat.primitives import serialization
    from joserfc.jwk import RSAKey

    signing = rsa_key(0)
    env.register_backend(key=signing)
    pem = RSAKey.import_key(
        signing.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    good = private_key_jwt_sign(
        pem, "backend-app", env.token_url, alg="RS384", header={"kid": "rsa-0"}, expires_in=300
    )
    ok = env.client_credentials(good.decode() if isinstance(good, bytes) else good)
    assert ok.status_code == 200, env.oauth.last_error
    default = private_key_jwt_sign(pem, "backend-app", env.token_url, alg="RS384", header={"kid": "rsa-0"})
    refused = env.client_credentials(default.decode() if isinstance(default, bytes) else default)
    refused_because(env, refused, "more than 300 s ahead")


def test_client_credentials_needs_private_key_jwt(env: OAuthEnv) -> None:
    env.register_confidential("secret-only")
    response = env.http.post(
        TOKEN_PATH,
        data={
            "grant_type": "client_credentials",
            "client_id": "secret-only",
            "client_secret": "s3cret-value",
        },
    )
    assert response.status_code == 400
    assert response.json() == {"error": "unauthorized_client", "error_description": None}
    assert env.oauth.last_error is not None and "needs private_key_jwt" in env.oauth.last_error.reason


def test_assertion_type_without_assertion_is_invalid_request(env: OAuthEnv) -> None:
    env.register_backend()
    response = env.http.post(
        TOKEN_PATH, data={"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER}
    )
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": None}


def test_clock_skew_of_ten_seconds_is_tolerated(env: OAuthEnv) -> None:
    key = env.register_backend()
    now = env.clock()
    assert env.client_credentials(env.assertion(key, exp_in=308)).status_code == 200
    assert env.client_credentials(env.assertion(key, iat=int(now + 5), nbf=int(now + 5))).status_code == 200
    refused_because(env, env.client_credentials(env.assertion(key, iat=int(now + 30))), "iat in the future")


def test_concurrent_replays_of_one_assertion_yield_one_token(env: OAuthEnv) -> None:
    key = env.register_backend()
    env.backend_token(key)  # warm the JWKS cache so all requests race on the jti only
    assertion = env.assertion(key)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: env.client_credentials(assertion).status_code, range(8)))
    assert sorted(statuses) == [200] + [401] * 7


def test_jwks_cache_expires_after_29_hours(env: OAuthEnv) -> None:
    key = env.register_backend()
    env.backend_token(key)
    env.clock.advance(28 * 3600)
    env.backend_token(key)
    assert env.jwks.hits == 1
    env.clock.advance(1.5 * 3600)
    env.backend_token(key)
    assert env.jwks.hits == 2


def test_custom_jwks_fetch_is_used() -> None:
    fetched: list[str] = []
    key = rsa_key(0)

    async def fetch(url: str) -> dict[str, Any]:
        fetched.append(url)
        return {"keys": [key.public_jwk]}

    with oauth_env(jwks_fetch=fetch) as env:
        env.oauth.register_client(
            {
                "client_id": "backend-app",
                "auth_methods": ["private_key_jwt"],
                "jwks_url": "https://keys.example.org/jwks.json",
                "scopes": ["system/Patient.rs"],
            }
        )
        assert env.backend_token(key)
        assert fetched == ["https://keys.example.org/jwks.json"]


def test_skewed_server_clock_refuses_a_correct_client_clock(env: OAuthEnv) -> None:
    """A client whose clock is 10 minutes behind the server signs assertions that are already expired."""
    key = env.register_backend()
    client_now = time.time()
    env.clock.advance(600)
    assertion = env.assertion(key, exp=int(client_now + 240), iat=int(client_now))
    refused_because(env, env.client_credentials(assertion), "assertion expired")
