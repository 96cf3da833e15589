"""The OAuth server as wired into the simulator: both grants end in FHIR calls on the assembled app."""

from __future__ import annotations

import base64
import hashlib
import secrets
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from sim_support import JSON, JWT_BEARER, client_assertion, public_jwks

from epic_sim.server import SimServer

DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
REDIRECT = "http://127.0.0.1:9/callback"


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = values.get("action", "")
        elif tag == "input" and values.get("type") == "hidden":
            self.fields[values["name"]] = values.get("value", "")


def test_authorization_code_with_pkce_then_fhir_then_refresh(epic_sim: SimServer) -> None:
    epic_sim.register_client(
        client_id="web-app",
        auth_methods=["client_secret_basic"],
        jwks_url=None,
        jwks=None,
        client_secret="s3cret",
        scopes=["user/Patient.read"],
        redirect_uris=[REDIRECT],
        token_lifetime_s=None,
    )
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    page = httpx.get(
        epic_sim.authorize_url,
        params={
            "response_type": "code",
            "client_id": "web-app",
            "redirect_uri": REDIRECT,
            "scope": "user/Patient.read",
            "state": "xyz",
            "aud": epic_sim.fhir_base,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    assert page.status_code == 200
    form = _Form()
    form.feed(page.text)
    consent = httpx.post(f"{epic_sim.url}{form.action}", data={**form.fields, "decision": "allow"})
    assert consent.status_code == 302
    query = parse_qs(urlsplit(consent.headers["location"]).query)
    assert query["state"] == ["xyz"]
    token = httpx.post(
        epic_sim.token_url,
        auth=("web-app", "s3cret"),
        data={
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
    )
    assert token.status_code == 200, token.text
    grant: dict[str, Any] = token.json()
    headers = {"Authorization": f"Bearer {grant['access_token']}", "Accept": JSON}
    assert httpx.get(f"{epic_sim.fhir_base}Patient/{DERRICK}", headers=headers).status_code == 200
    assert (
        httpx.get(f"{epic_sim.fhir_base}Encounter", params={"patient": DERRICK}, headers=headers).status_code
        == 403
    )
    epic_sim.expire_tokens()
    assert httpx.get(f"{epic_sim.fhir_base}Patient/{DERRICK}", headers=headers).status_code == 401
    refreshed = httpx.post(
        epic_sim.token_url,
        auth=("web-app", "s3cret"),
        data={
            "grant_type": "refresh_token",
            "refresh_token": grant["refresh_token"],
        },
    )
    assert refreshed.status_code == 200
    headers["Authorization"] = f"Bearer {refreshed.json()['access_token']}"
    assert httpx.get(f"{epic_sim.fhir_base}Patient/{DERRICK}", headers=headers).status_code == 200


def test_backend_assertion_refusals_through_the_app(epic_sim: SimServer, rsa_key: rsa.RSAPrivateKey) -> None:
    epic_sim.register_client(
        client_id="backend",
        auth_methods=["private_key_jwt"],
        jwks_url=None,
        jwks=public_jwks(rsa_key),
        client_secret=None,
        scopes=["system/Patient.rs"],
        redirect_uris=[],
        token_lifetime_s=None,
    )
    assertion = client_assertion(epic_sim, "backend", rsa_key)
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
    }
    assert httpx.post(epic_sim.token_url, data=form).status_code == 200
    replay = httpx.post(epic_sim.token_url, data=form)
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong = {**form, "client_assertion": client_assertion(epic_sim, "backend", other_key)}
    assert httpx.post(epic_sim.token_url, data=wrong).json()["error"] == "invalid_client"
    logged = [r for r in epic_sim.requests() if r["path"].endswith("/oauth2/token")]
    assert [r["status"] for r in logged] == [200, replay.status_code, replay.status_code]
    assert logged[0]["auth_client_id"] == "backend"
