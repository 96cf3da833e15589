"""authorization_code (consent page + PKCE) and refresh_token grants, through real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from test_oauth_support import (
    AUTHORIZE_PATH,
    TOKEN_PATH,
    OAuthEnv,
    basic,
    oauth_env,
    parse_consent_form,
    pkce_pair,
    redirect_query,
)

CALLBACK = "http://127.0.0.1:9/callback"
SECRET = "s3cret-value"


@pytest.fixture
def env() -> Iterator[OAuthEnv]:
    with oauth_env() as e:
        e.register_confidential()
        yield e


def authorize_params(
    env: OAuthEnv, challenge: str | None = None, method: str = "S256", **extra: str
) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": "web-app",
        "redirect_uri": CALLBACK,
        "scope": "openid fhirUser user/Patient.read user/Observation.rs",
        "state": "st-42 &<x>",
        "aud": env.fhir_base,
    }
    if challenge is not None:
        params["code_challenge"] = challenge
        params["code_challenge_method"] = method
    params.update(extra)
    return params


def get_code(env: OAuthEnv, **kw: str) -> str:
    query = redirect_query(env.consent(authorize_params(env, **kw)))
    assert query["state"] == "st-42 &<x>"
    return query["code"]


def redeem_basic(env: OAuthEnv, code: str, verifier: str | None = None, **extra: str) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, **extra}
    if verifier is not None:
        data["code_verifier"] = verifier
    return env.http.post(TOKEN_PATH, data=data, headers={"Authorization": basic("web-app", SECRET)})


def assert_oauth_error(env: OAuthEnv, response: httpx.Response, error: str, reason_part: str) -> None:
    status = 401 if error == "invalid_client" else 400
    assert response.status_code == status, response.text
    assert response.json() == {"error": error, "error_description": None}
    last = env.oauth.last_error
    assert last is not None and last.error == error and reason_part in last.reason, last


def test_consent_page_carries_every_parameter(env: OAuthEnv) -> None:
    params = authorize_params(env, pkce_pair()[1])
    page = env.http.get(AUTHORIZE_PATH, params=params)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    form = parse_consent_form(page.text)
    assert form.action == AUTHORIZE_PATH
    assert form.fields == params
    assert form.decisions == ["allow", "deny"]
    assert form.visible == []  # no patient context asked for


def test_full_flow_with_pkce_s256_and_basic_auth(env: OAuthEnv) -> None:
    verifier, challenge = pkce_pair("S256")
    allowed = env.consent(authorize_params(env, challenge))
    location = allowed.headers["location"]
    assert location.startswith(CALLBACK + "?")
    code = redirect_query(allowed)["code"]

    response = redeem_basic(env, code, verifier)
    assert response.status_code == 200, env.oauth.last_error
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "refresh_token"}
    assert body["token_type"] == "bearer"
    assert body["scope"] == "openid fhirUser user/Patient.read user/Observation.rs"
    probe = env.get("Patient/eq081-VQEgP8drUUqCWzHfw3", body["access_token"])
    assert probe.status_code == 200 and probe.json()["client_id"] == "web-app"


def test_flow_with_plain_pkce_and_client_secret_post(env: OAuthEnv) -> None:
    verifier, challenge = pkce_pair("plain")
    code = get_code(env, challenge=challenge, method="plain")
    response = env.http.post(
        TOKEN_PATH,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
            "client_id": "web-app",
            "client_secret": SECRET,
        },
    )
    assert response.status_code == 200, env.oauth.last_error


def test_missing_verifier_refused(env: OAuthEnv) -> None:
    _, challenge = pkce_pair()
    assert_oauth_error(
        env, redeem_basic(env, get_code(env, challenge=challenge)), "invalid_grant", "verifier missing"
    )


def test_wrong_verifier_refused(env: OAuthEnv) -> None:
    _, challenge = pkce_pair()
    other_verifier, _ = pkce_pair()
    response = redeem_basic(env, get_code(env, challenge=challenge), other_verifier)
    assert_oauth_error(env, response, "invalid_grant", "does not match")


def test_verifier_without_challenge_refused(env: OAuthEnv) -> None:
    verifier, _ = pkce_pair()
    response = redeem_basic(env, get_code(env), verifier)
    assert_oauth_error(env, response, "invalid_grant", "no code_challenge")


def test_code_reuse_refused_and_first_tokens_revoked(env: OAuthEnv) -> None:
    verifier, challenge = pkce_pair()
    code = get_code(env, challenge=challenge)
    first = redeem_basic(env, code, verifier)
    assert first.status_code == 200
    token, refresh = first.json()["access_token"], first.json()["refresh_token"]
    assert env.get("Patient/x", token).status_code == 200

    assert_oauth_error(env, redeem_basic(env, code, verifier), "invalid_grant", "reused")
    # RFC 6749 4.1.2: what the first redemption issued is revoked.
    assert env.get("Patient/x", token).status_code == 401
    again = env.http.post(
        TOKEN_PATH,
        data={"grant_type": "refresh_token", "refresh_token": refresh},
        headers={"Authorization": basic("web-app", SECRET)},
    )
    assert_oauth_error(env, again, "invalid_grant", "unknown, revoked or expired refresh token")


def test_code_expires_after_five_minutes(env: OAuthEnv) -> None:
    code = get_code(env)
    env.clock.advance(301)
    assert_oauth_error(env, redeem_basic(env, code), "invalid_grant", "expired")


def test_code_bound_to_client_and_redirect_uri(env: OAuthEnv) -> None:
    env.register_confidential("other-app", secret="other-secret")
    code = get_code(env)
    stolen = env.http.post(
        TOKEN_PATH,
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
        headers={"Authorization": basic("other-app", "other-secret")},
    )
    assert_oauth_error(env, stolen, "invalid_grant", "another client")

    code = get_code(env)
    response = redeem_basic(env, code, redirect_uri="http://127.0.0.1:9/elsewhere")
    assert_oauth_error(env, response, "invalid_grant", "redirect_uri differs")


def test_unregistered_redirect_uri_never_redirects(env: OAuthEnv) -> None:
    evil = authorize_params(env, redirect_uri="https://evil.example/steal")
    page = env.http.get(AUTHORIZE_PATH, params=evil)
    assert page.status_code == 400
    assert "location" not in page.headers
    assert "text/html" in page.headers["content-type"]
    # Forged hidden fields on the POST are re-checked too.
    posted = env.http.post(AUTHORIZE_PATH, data={**evil, "decision": "allow"})
    assert posted.status_code == 400 and "location" not in posted.headers
    last = env.oauth.last_error
    assert last is not None and last.endpoint == "authorize" and "not registered" in last.reason


def test_unknown_client_never_redirects(env: OAuthEnv) -> None:
    page = env.http.get(AUTHORIZE_PATH, params=authorize_params(env, client_id="nobody"))
    assert page.status_code == 400 and "location" not in page.headers


def test_user_denies(env: OAuthEnv) -> None:
    query = redirect_query(env.consent(authorize_params(env), decision="deny"))
    assert query == {"error": "access_denied", "state": "st-42 &<x>"}


def test_request_errors_go_back_to_a_registered_redirect_uri(env: OAuthEnv) -> None:
    bad_type = env.http.get(AUTHORIZE_PATH, params=authorize_params(env, response_type="token"))
    assert redirect_query(bad_type) == {"error": "unsupported_response_type", "state": "st-42 &<x>"}
    bad_method = env.http.get(AUTHORIZE_PATH, params=authorize_params(env, pkce_pair()[1], method="S512"))
    assert redirect_query(bad_method)["error"] == "invalid_request"
    bad_scope = env.http.get(AUTHORIZE_PATH, params=authorize_params(env, scope="user/Encounter.read"))
    assert redirect_query(bad_scope)["error"] == "invalid_scope"


def test_patient_context_from_consent(env: OAuthEnv) -> None:
    params = authorize_params(env, scope="launch/patient patient/Patient.r")
    page = env.http.get(AUTHORIZE_PATH, params=params)
    assert parse_consent_form(page.text).visible == ["patient"]
    query = redirect_query(env.consent(params, patient="erXuFYUfucBZaryVksYEcMg3"))
    body = redeem_basic(env, query["code"]).json()
    assert body["patient"] == "erXuFYUfucBZaryVksYEcMg3"
    assert env.get("Patient/erXuFYUfucBZaryVksYEcMg3", body["access_token"]).json()["patient"] == (
        "erXuFYUfucBZaryVksYEcMg3"
    )


def test_refresh_token_grant(env: OAuthEnv) -> None:
    first = redeem_basic(env, get_code(env)).json()
    env.oauth.expire_all_tokens()
    assert env.get("Patient/x", first["access_token"]).status_code == 401
    for _ in range(2):  # the refresh token stays valid (no rotation)
        refreshed = env.http.post(
            TOKEN_PATH,
            data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
            headers={"Authorization": basic("web-app", SECRET)},
        )
        assert refreshed.status_code == 200, env.oauth.last_error
        body = refreshed.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
        assert body["scope"] == first["scope"]
        assert env.get("Patient/x", body["access_token"]).status_code == 200


def test_refresh_token_scope_can_narrow_not_widen(env: OAuthEnv) -> None:
    first = redeem_basic(env, get_code(env)).json()
    auth = {"Authorization": basic("web-app", SECRET)}
    narrow = env.http.post(
        TOKEN_PATH,
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "scope": "user/Patient.read",
        },
        headers=auth,
    )
    assert narrow.json()["scope"] == "user/Patient.read"
    wide = env.http.post(
        TOKEN_PATH,
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "scope": "user/*.read"},
        headers=auth,
    )
    assert_oauth_error(env, wide, "invalid_scope", "beyond the original grant")


def test_refresh_token_of_another_client_refused(env: OAuthEnv) -> None:
    env.register_confidential("other-app", secret="other-secret")
    first = redeem_basic(env, get_code(env)).json()
    response = env.http.post(
        TOKEN_PATH,
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        headers={"Authorization": basic("other-app", "other-secret")},
    )
    assert_oauth_error(env, response, "invalid_grant", "another client")


def test_wrong_secret_refused_with_basic_challenge(env: OAuthEnv) -> None:
    code = get_code(env)
    response = env.http.post(
        TOKEN_PATH,
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
        headers={"Authorization": basic("web-app", "wrong")},
    )
    assert_oauth_error(env, response, "invalid_client", "wrong client secret")
    assert response.headers["www-authenticate"].startswith("Basic")


def test_auth_method_must_be_registered(env: OAuthEnv) -> None:
    env.register_confidential("basic-only", methods=("client_secret_basic",))
    response = env.http.post(
        TOKEN_PATH,
        data={
            "grant_type": "refresh_token",
            "refresh_token": "x",
            "client_id": "basic-only",
            "client_secret": SECRET,
        },
    )
    assert_oauth_error(env, response, "invalid_client", "client_secret_post not allowed")


def test_two_auth_methods_at_once_refused(env: OAuthEnv) -> None:
    response = env.http.post(
        TOKEN_PATH,
        data={
            "grant_type": "authorization_code",
            "code": "x",
            "client_id": "web-app",
            "client_secret": SECRET,
        },
        headers={"Authorization": basic("web-app", SECRET)},
    )
    assert_oauth_error(env, response, "invalid_request", "more than one client authentication method")


def test_redirect_keeps_existing_query_of_redirect_uri(env: OAuthEnv) -> None:
    uri = "http://127.0.0.1:9/cb?tenant=a"
    env.register_confidential("q-app", redirect_uris=(uri,))
    params = {**authorize_params(env), "client_id": "q-app", "redirect_uri": uri}
    allowed = env.consent(params)
    parts = urlsplit(allowed.headers["location"])
    assert parts.path == "/cb"
    assert redirect_query(allowed)["tenant"] == "a"


def test_refresh_token_lifetime_is_configurable() -> None:
    with oauth_env(refresh_token_lifetime_s=1800) as env:
        env.register_confidential()
        first = redeem_basic(env, get_code(env)).json()
        data = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
        auth = {"Authorization": basic("web-app", SECRET)}
        env.clock.advance(1700)
        assert env.http.post(TOKEN_PATH, data=data, headers=auth).status_code == 200
        env.clock.advance(200)
        assert_oauth_error(
            env, env.http.post(TOKEN_PATH, data=data, headers=auth), "invalid_grant", "expired"
        )


def test_aud_must_name_the_fhir_base(env: OAuthEnv) -> None:
    no_slash = env.consent(authorize_params(env, aud=env.fhir_base.rstrip("/")))
    assert "code" in redirect_query(no_slash)
    wrong = env.http.get(
        AUTHORIZE_PATH, params=authorize_params(env, aud="https://fhir.epic.com/api/FHIR/R4/")
    )
    assert redirect_query(wrong)["error"] == "invalid_request"
    assert (
        env.oauth.last_error is not None and "is not this server's FHIR base" in env.oauth.last_error.reason
    )
    params = authorize_params(env)
    del params["aud"]
    missing = env.http.get(AUTHORIZE_PATH, params=params)
    assert redirect_query(missing)["error"] == "invalid_request"


def test_public_client_with_pkce(env: OAuthEnv) -> None:
    env.oauth.register_client(
        {
            "client_id": "spa",
            "auth_methods": ["none"],
            "scopes": ["patient/Patient.r", "patient/Observation.rs"],
            "redirect_uris": [CALLBACK],
        }
    )
    verifier, challenge = pkce_pair()
    params = {
        **authorize_params(env, challenge),
        "client_id": "spa",
        "scope": "launch/patient patient/Patient.r",
    }
    code = redirect_query(env.consent(params, patient="eq081-VQEgP8drUUqCWzHfw3"))["code"]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "client_id": "spa"}
    response = env.http.post(TOKEN_PATH, data={**data, "code_verifier": verifier})
    assert response.status_code == 200, env.oauth.last_error
    assert response.json()["patient"] == "eq081-VQEgP8drUUqCWzHfw3"
    # a public client cannot pretend to have a secret
    spoof = env.http.post(TOKEN_PATH, data={**data, "client_secret": "guess"})
    assert_oauth_error(env, spoof, "invalid_client", "client_secret_post not allowed")
