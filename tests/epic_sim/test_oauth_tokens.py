"""Access tokens on FHIR calls (401/403), lifetimes, expiry, injected bare 400s, discovery, registration."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from test_oauth_support import (
    EXACT_WWW_AUTHENTICATE,
    FHIR_PATH,
    TOKEN_PATH,
    OAuthEnv,
    oauth_env,
    rsa_key,
)

from epic_sim.oauth import InvalidRegistration

EPIC_OID = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"


@pytest.fixture
def env() -> Iterator[OAuthEnv]:
    with oauth_env(default_token_lifetime_s=600) as e:
        yield e


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == EXACT_WWW_AUTHENTICATE


def test_missing_and_unknown_tokens_get_epics_401(env: OAuthEnv) -> None:
    assert_invalid_token(env.get("Patient/abc", None))
    assert_invalid_token(env.get("Patient/abc", "not-a-token"))
    assert_invalid_token(env.http.get(FHIR_PATH + "Patient/abc", headers={"Authorization": "Basic eDp5"}))
    last = env.oauth.last_error
    assert last is not None and last.endpoint == "fhir" and last.error == "invalid_token"


def test_server_default_lifetime_and_expiry(env: OAuthEnv) -> None:
    key = env.register_backend()
    response = env.client_credentials(env.assertion(key))
    assert response.json()["expires_in"] == 600
    token = response.json()["access_token"]
    env.clock.advance(599)
    assert env.get("Patient/abc", token).status_code == 200
    env.clock.advance(2)
    assert_invalid_token(env.get("Patient/abc", token))


def test_per_client_lifetime_overrides_default(env: OAuthEnv) -> None:
    key = env.register_backend(token_lifetime_s=3240)
    response = env.client_credentials(env.assertion(key))
    assert response.json()["expires_in"] == 3240
    token = response.json()["access_token"]
    env.clock.advance(3000)
    assert env.get("Patient/abc", token).status_code == 200
    env.clock.advance(300)
    assert_invalid_token(env.get("Patient/abc", token))


def test_default_lifetime_can_change_at_run_time(env: OAuthEnv) -> None:
    key = env.register_backend()
    env.oauth.default_token_lifetime_s = 5
    assert env.client_credentials(env.assertion(key)).json()["expires_in"] == 5


def test_expire_all_tokens_then_new_token_works(env: OAuthEnv) -> None:
    key = env.register_backend()
    token = env.backend_token(key)
    other = env.backend_token(key)
    env.oauth.expire_all_tokens()
    assert_invalid_token(env.get("Patient/abc", token))
    assert_invalid_token(env.get("Observation?patient=abc&category=vital-signs", other))
    fresh = env.backend_token(key)
    assert env.get("Patient/abc", fresh).status_code == 200


def test_scope_not_covering_the_resource_gets_403_operation_outcome(env: OAuthEnv) -> None:
    key = env.register_backend(scopes=["system/Patient.r"])
    token = env.backend_token(key)
    assert env.get("Patient/abc", token).status_code == 200
    for path in ("Encounter/abc", "Patient?_id=abc"):  # other type; search without s
        response = env.get(path, token)
        assert response.status_code == 403, path
        assert response.headers["content-type"].startswith("application/fhir+json")
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        issue = outcome["issue"][0]
        assert issue["severity"] == "fatal" and issue["code"] == "forbidden"
        assert issue["details"]["coding"][0]["system"] == EPIC_OID
    create = env.http.post(
        FHIR_PATH + "Patient", json={"resourceType": "Patient"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert create.status_code == 403
    last = env.oauth.last_error
    assert last is not None and last.error == "forbidden" and "create on Patient" in last.reason


def test_v1_and_wildcard_scopes_on_fhir_calls(env: OAuthEnv) -> None:
    key = env.register_backend(scopes=["system/Patient.read", "system/Observation.write", "system/*.s"])
    token = env.backend_token(key)
    auth = {"Authorization": f"Bearer {token}"}
    assert env.get("Patient/a", token).status_code == 200  # read covers r
    assert env.get("Patient?_id=a", token).status_code == 200  # read covers s
    assert env.get("Encounter?patient=a", token).status_code == 200  # *.s
    assert env.get("Encounter/a", token).status_code == 403  # no r on Encounter
    assert (
        env.http.post(FHIR_PATH + "Observation", json={}, headers=auth).status_code == 200
    )  # write covers c
    assert env.http.post(FHIR_PATH + "Encounter", json={}, headers=auth).status_code == 403


def test_bare_400_injection(env: OAuthEnv) -> None:
    key = env.register_backend()
    env.oauth.inject_bare_400(2)
    for _ in range(2):
        response = env.client_credentials(env.assertion(key))
        assert response.status_code == 400
        assert response.content == b""
        assert "www-authenticate" not in response.headers
    assert env.client_credentials(env.assertion(key)).status_code == 200
    last = [r for r in env.oauth.refusals() if r.error == "bare_400"]
    assert len(last) == 2


def test_bare_400_does_not_consume_the_assertion(env: OAuthEnv) -> None:
    """The injected 400 answers before anything is read: a retry of the same assertion is not a replay."""
    key = env.register_backend()
    assertion = env.assertion(key)
    env.oauth.inject_bare_400(1)
    assert env.client_credentials(assertion).status_code == 400
    assert env.client_credentials(assertion).status_code == 200


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        ({}, "invalid_request", "grant_type missing"),
        ({"grant_type": "password"}, "unsupported_grant_type", "'password' not supported"),
        (
            {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"},
            "unsupported_grant_type",
            "not supported",
        ),
        ({"grant_type": "client_credentials"}, "invalid_client", "no client authentication"),
    ],
)
def test_token_endpoint_request_errors(env: OAuthEnv, data: dict[str, str], error: str, reason: str) -> None:
    response = env.http.post(TOKEN_PATH, data=data)
    assert response.status_code == (401 if error == "invalid_client" else 400)
    assert response.json() == {"error": error, "error_description": None}
    assert env.oauth.last_error is not None and reason in env.oauth.last_error.reason


def test_token_endpoint_wants_a_urlencoded_post(env: OAuthEnv) -> None:
    as_json = env.http.post(TOKEN_PATH, json={"grant_type": "client_credentials"})
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    repeated = env.http.post(
        TOKEN_PATH,
        content=b"grant_type=client_credentials&grant_type=client_credentials",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert repeated.json()["error"] == "invalid_request"
    assert env.http.get(TOKEN_PATH).status_code == 405


def test_smart_configuration(env: OAuthEnv) -> None:
    response = env.http.get(FHIR_PATH + ".well-known/smart-configuration")
    config = response.json()
    assert config["token_endpoint"] == env.token_url
    assert config["authorization_endpoint"] == env.authorize_url
    assert config["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ]
    assert {"RS256", "RS384", "RS512"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])
    assert set(config["grant_types_supported"]) == {
        "authorization_code",
        "client_credentials",
        "refresh_token",
    }
    assert "S256" in config["code_challenge_methods_supported"]
    assert "client-confidential-asymmetric" in config["capabilities"]
    assert "launch-standalone" in config["capabilities"]
    assert "offline_access" in config["scopes_supported"]


def test_no_secret_in_refusal_reasons(env: OAuthEnv) -> None:
    key = env.register_backend()
    env.register_confidential()
    assertion = env.assertion(key, aud="https://wrong.example/token")
    env.client_credentials(assertion)
    env.http.post(
        TOKEN_PATH,
        data={
            "grant_type": "refresh_token",
            "refresh_token": "rt-value-xyz",
            "client_id": "web-app",
            "client_secret": "typo-secret",
        },
    )
    token = env.backend_token(key)
    env.get("Encounter/x", token)
    reasons = " ".join(r.reason for r in env.oauth.refusals())
    for secret in (assertion, "rt-value-xyz", "typo-secret", "s3cret-value", token):
        assert secret not in reasons


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"client_id": ""}, "client_id"),
        ({"auth_methods": ["magic"]}, "unsupported auth_methods"),
        ({"jwks_url": None, "jwks": None}, "needs jwks_url or jwks"),
        ({"jwks_url": "ftp://x/jwks"}, "absolute http(s) URL"),
        ({"scopes": ["system/Patient.xyz"]}, "unknown permissions"),
        ({"scopes": ["system/Patient"]}, "malformed resource scope"),
        ({"redirect_uris": ["/relative"]}, "must be absolute"),
        ({"token_lifetime_s": 0}, "positive integer"),
        ({"colour": "blue"}, "unknown registration fields"),
        (
            {"jwks_url": None, "jwks": {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}]}},
            "public keys",
        ),
        ({"auth_methods": ["client_secret_basic"]}, "need client_secret"),
    ],
)
def test_registration_is_validated(env: OAuthEnv, change: dict[str, object], message: str) -> None:
    registration: dict[str, object] = {
        "client_id": "x",
        "auth_methods": ["private_key_jwt"],
        "jwks_url": env.jwks.url,
        "jwks": None,
        "client_secret": None,
        "scopes": ["system/Patient.rs"],
        "redirect_uris": [],
        "token_lifetime_s": None,
        **change,
    }
    with pytest.raises(InvalidRegistration, match=message.replace("(", r"\(").replace(")", r"\)")):
        env.oauth.register_client(registration)


def test_reregistration_replaces_the_client(env: OAuthEnv) -> None:
    key = env.register_backend(scopes=["system/Patient.rs"])
    env.register_backend(key=rsa_key(0), scopes=["system/Encounter.rs"])
    response = env.client_credentials(env.assertion(key))
    assert response.json()["scope"] == "system/Encounter.rs"
