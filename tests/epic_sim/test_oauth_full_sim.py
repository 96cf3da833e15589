"""The OAuth server inside the full simulator (`epic_sim` fixture of `epic_sim.pytest_plugin`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from test_oauth_support import (
    EXACT_WWW_AUTHENTICATE,
    JWT_BEARER,
    JwksHost,
    SigningKey,
    basic,
    parse_consent_form,
    pkce_pair,
    redirect_query,
    rsa_key,
)

from epic_sim.server import SimServer

JSON = {"Accept": "application/fhir+json"}
MRN = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14|203711"


@pytest.fixture
def jwks_host() -> Iterator[JwksHost]:
    host = JwksHost()
    host.thread.start(host.app())
    yield host
    host.thread.stop()


def signed(sim: SimServer, key: SigningKey, client_id: str) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": sim.token_url,
        "jti": uuid.uuid4().hex,
        "exp": now + 240,
    }
    return jwt.encode(claims, key.private_key, algorithm="RS384", headers={"kid": key.kid, "typ": "JWT"})


def token_request(sim: SimServer, http: httpx.Client, key: SigningKey, client_id: str) -> httpx.Response:
    return http.post(
        sim.token_url,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": signed(sim, key, client_id),
        },
    )


def test_backend_services_through_the_full_simulator(epic_sim: SimServer, jwks_host: JwksHost) -> None:
    key = rsa_key(0, kid="full-sim")
    jwks_host.keys.append(key.public_jwk)
    epic_sim.register_client(
        client_id="bridge-backend",
        auth_methods=["private_key_jwt"],
        jwks_url=jwks_host.url,
        jwks=None,
        client_secret=None,
        scopes=["system/Patient.rs", "system/Observation.rs"],
        redirect_uris=[],
        token_lifetime_s=None,
    )
    discovery = httpx.get(epic_sim.fhir_base + ".well-known/smart-configuration", headers=JSON)
    assert discovery.json()["token_endpoint"] == epic_sim.token_url
    since = epic_sim.requests()[-1]["seq"] if epic_sim.requests() else 0

    with httpx.Client(timeout=30) as http:
        response = token_request(epic_sim, http, key, "bridge-backend")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["token_type"] == "bearer" and body["scope"] == "system/Patient.rs system/Observation.rs"
        auth = {**JSON, "Authorization": f"Bearer {body['access_token']}"}

        found = http.get(epic_sim.fhir_base + "Patient", params={"identifier": MRN}, headers=auth)
        assert found.status_code == 200, found.text

        forbidden = http.get(epic_sim.fhir_base + "Encounter", params={"patient": "x"}, headers=auth)
        assert forbidden.status_code == 403
        assert forbidden.json()["resourceType"] == "OperationOutcome"

        epic_sim.expire_tokens()
        expired = http.get(epic_sim.fhir_base + "Patient", params={"identifier": MRN}, headers=auth)
        assert expired.status_code == 401
        assert expired.headers["www-authenticate"] == EXACT_WWW_AUTHENTICATE

        epic_sim.admin.post("/admin/oauth/bare400", json={"count": 1}).raise_for_status()
        bare = token_request(epic_sim, http, key, "bridge-backend")
        assert bare.status_code == 400 and bare.content == b""
        assert token_request(epic_sim, http, key, "bridge-backend").status_code == 200

        wrong_aud = http.post(
            epic_sim.token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": jwt.encode(
                    {
                        "iss": "bridge-backend",
                        "sub": "bridge-backend",
                        "aud": epic_sim.fhir_base,
                        "jti": uuid.uuid4().hex,
                        "exp": int(time.time()) + 60,
                    },
                    key.private_key,
                    algorithm="RS384",
                    headers={"kid": key.kid},
                ),
            },
        )
        assert wrong_aud.status_code == 401
        assert wrong_aud.json() == {"error": "invalid_client", "error_description": None}
        assert "is not the token URL" in epic_sim.sim.oauth.last_error.reason

    logged = [r for r in epic_sim.requests(since) if r["path"].endswith("/oauth2/token")]
    assert [r["status"] for r in logged] == [200, 400, 200, 401]
    assert [r["auth_client_id"] for r in logged] == [
        "bridge-backend",
        None,
        "bridge-backend",
        "bridge-backend",
    ]
    assert jwks_host.hits == 1


def test_authorization_code_through_the_full_simulator(epic_sim: SimServer) -> None:
    callback = "http://127.0.0.1:9/cb"
    epic_sim.register_client(
        client_id="clinic-app",
        auth_methods=["client_secret_basic"],
        jwks_url=None,
        jwks=None,
        client_secret="clinic-secret",
        scopes=["user/Patient.read"],
        redirect_uris=[callback],
        token_lifetime_s=3240,
    )
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code",
        "client_id": "clinic-app",
        "redirect_uri": callback,
        "scope": "openid user/Patient.read",
        "state": "s1",
        "aud": epic_sim.fhir_base,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    with httpx.Client(timeout=30, follow_redirects=False) as http:
        page = http.get(epic_sim.authorize_url, params=params)
        assert page.status_code == 200
        form = parse_consent_form(page.text)
        allowed = http.post(epic_sim.url + form.action, data={**form.fields, "decision": "allow"})
        code = redirect_query(allowed)["code"]
        response = http.post(
            epic_sim.token_url,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": callback,
                "code_verifier": verifier,
            },
            headers={"Authorization": basic("clinic-app", "clinic-secret")},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["expires_in"] == 3240 and "refresh_token" in body
        auth = {**JSON, "Authorization": f"Bearer {body['access_token']}"}
        found = http.get(epic_sim.fhir_base + "Patient", params={"identifier": MRN}, headers=auth)
        assert found.status_code == 200, found.text
