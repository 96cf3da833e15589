"""Shared helpers for the OAuth server tests (no tests here).

`OAuthEnv` runs, on free loopback ports and in threads:
- the simulator's `OAuthServer` routes plus a small protected FHIR probe, under uvicorn;
- a second tiny HTTP server that serves the client's JWK Set, so the JWKS URL fetch is real HTTP.
The server clock is `env.clock` (real time plus an offset tests can advance); assertions are signed
with that same clock.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from epic_sim.oauth import Grant, OAuthHTTPException, OAuthServer
from epic_sim.oauth.scopes import Interaction

TOKEN_PATH = "/interconnect-fhir-oauth/oauth2/token"
AUTHORIZE_PATH = "/interconnect-fhir-oauth/oauth2/authorize"
FHIR_PATH = "/interconnect-fhir-oauth/api/FHIR/R4/"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXACT_WWW_AUTHENTICATE = (
    'Bearer error="invalid_token", error_description="The access token provided is not valid"'
)


# -- keys ---------------------------------------------------------------------------------------------


class SigningKey:
    """A private key with its kid and public JWK."""

    def __init__(self, private_key: Any, kid: str) -> None:
        self.private_key = private_key
        self.kid = kid
        if isinstance(private_key, rsa.RSAPrivateKey):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        else:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        self.public_jwk: dict[str, Any] = {**jwk, "kid": kid, "use": "sig"}


@functools.cache
def _rsa(n: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_key(n: int = 0, kid: str | None = None) -> SigningKey:
    """The n-th test RSA key (generated once per test session)."""
    return SigningKey(_rsa(n), kid or f"rsa-{n}")


def ec_key(kid: str = "ec-0") -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()), kid)


# -- clock and servers ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class ServerThread:
    """uvicorn on a socket bound up front (so the URL is known before the app is built)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, app: Starlette) -> None:
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self.sock.close()


class JwksHost:
    """The client's JWKS endpoint: `/jwks.json` serves `keys`; `/moved.json` redirects to it."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.thread = ServerThread()
        self.url = self.thread.url + "/jwks.json"
        self.redirecting_url = self.thread.url + "/moved.json"

    def app(self) -> Starlette:
        async def jwks(request: Request) -> Response:
            self.hits += 1
            return JSONResponse({"keys": list(self.keys)})

        async def moved(request: Request) -> Response:
            self.hits += 1
            return RedirectResponse("/jwks.json", status_code=302)

        return Starlette(routes=[Route("/jwks.json", jwks), Route("/moved.json", moved)])


def probe_app(oauth: OAuthServer) -> Starlette:
    """OAuth routes plus a protected FHIR probe: read, search and create on any type."""

    def answer(grant: Grant) -> JSONResponse:
        return JSONResponse(
            {"client_id": grant.client_id, "scopes": sorted(grant.scopes), "patient": grant.patient}
        )

    async def read(request: Request) -> Response:
        try:
            return answer(oauth.authorize(request, request.path_params["type"], "read"))
        except OAuthHTTPException as exc:
            return exc.response

    async def search_or_create(request: Request) -> Response:
        interaction: Interaction = "create" if request.method == "POST" else "search"
        try:
            return answer(oauth.authorize(request, request.path_params["type"], interaction))
        except OAuthHTTPException as exc:
            return exc.response

    async def smart(request: Request) -> Response:
        return JSONResponse(oauth.smart_configuration())

    return Starlette(
        routes=[
            *oauth.routes(),
            Route(FHIR_PATH + ".well-known/smart-configuration", smart),
            Route(FHIR_PATH + "{type}/{id}", read),
            Route(FHIR_PATH + "{type}", search_or_create, methods=["GET", "POST"]),
        ]
    )


# -- the environment ------------------------------------------------------------------------------------


class OAuthEnv:
    def __init__(
        self,
        default_token_lifetime_s: int = 3600,
        refresh_token_lifetime_s: int | None = None,
        jwks_fetch: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.clock = Clock()
        self.jwks = JwksHost()
        self._sim = ServerThread()
        self.url = self._sim.url
        self.token_url = self.url + TOKEN_PATH
        self.authorize_url = self.url + AUTHORIZE_PATH
        self.fhir_base = self.url + FHIR_PATH
        self.oauth = OAuthServer(
            token_url=self.token_url,
            authorize_url=self.authorize_url,
            default_token_lifetime_s=default_token_lifetime_s,
            refresh_token_lifetime_s=refresh_token_lifetime_s,
            fhir_base=self.fhir_base,
            jwks_fetch=jwks_fetch,
            clock=self.clock,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10, follow_redirects=False)

    def __enter__(self) -> OAuthEnv:
        self.jwks.thread.start(self.jwks.app())
        try:
            self._sim.start(probe_app(self.oauth))
        except BaseException:
            self.jwks.thread.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self._sim.stop()
        self.jwks.thread.stop()

    # -- backend-services clients -------------------------------------------------------------------

    def register_backend(
        self,
        client_id: str = "backend-app",
        key: SigningKey | None = None,
        *,
        scopes: list[str] | None = None,
        inline: bool = False,
        token_lifetime_s: int | None = None,
    ) -> SigningKey:
        """Register a private_key_jwt client; its public key goes to the JWKS host (or inline)."""
        key = key or rsa_key(0)
        if not inline and key.public_jwk not in self.jwks.keys:
            self.jwks.keys.append(key.public_jwk)
        self.oauth.register_client(
            {
                "client_id": client_id,
                "auth_methods": ["private_key_jwt"],
                "jwks_url": None if inline else self.jwks.url,
                "jwks": {"keys": [key.public_jwk]} if inline else None,
                "client_secret": None,
                "scopes": scopes
                if scopes is not None
                else ["system/Patient.rs", "system/Observation.rs", "system/Observation.c"],
                "redirect_uris": [],
                "token_lifetime_s": token_lifetime_s,
            }
        )
        return key

    def assertion(
        self,
        key: SigningKey,
        client_id: str = "backend-app",
        *,
        alg: str = "RS384",
        exp_in: float = 240,
        header: dict[str, Any] | None = None,
        omit: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        """A signed client assertion; keyword claims override the correct ones (`aud=...`, `sub=...`)."""
        now = self.clock()
        body: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": self.token_url,
            "jti": uuid.uuid4().hex,
            "exp": int(now + exp_in),
            "iat": int(now),
        }
        body.update(claims)
        for name in omit:
            body.pop(name, None)
        headers = {"kid": key.kid, "typ": "JWT", **(header or {})}
        return jwt.encode(body, key.private_key, algorithm=alg, headers=headers)

    def client_credentials(self, assertion: str, **form: str) -> httpx.Response:
        data = {
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
            **form,
        }
        return self.http.post(TOKEN_PATH, data=data)

    def backend_token(self, key: SigningKey, client_id: str = "backend-app", **kw: Any) -> str:
        response = self.client_credentials(self.assertion(key, client_id, **kw))
        assert response.status_code == 200, (response.status_code, response.text, self.oauth.last_error)
        return str(response.json()["access_token"])

    # -- confidential (secret) clients ---------------------------------------------------------------

    def register_confidential(
        self,
        client_id: str = "web-app",
        *,
        secret: str = "s3cret-value",
        methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post"),
        redirect_uris: tuple[str, ...] = ("http://127.0.0.1:9/callback",),
        scopes: tuple[str, ...] = ("user/Patient.read", "user/Observation.rs", "patient/Patient.r"),
        token_lifetime_s: int | None = None,
    ) -> None:
        self.oauth.register_client(
            {
                "client_id": client_id,
                "auth_methods": list(methods),
                "jwks_url": None,
                "jwks": None,
                "client_secret": secret,
                "scopes": list(scopes),
                "redirect_uris": list(redirect_uris),
                "token_lifetime_s": token_lifetime_s,
            }
        )

    def consent(self, params: dict[str, str], decision: str = "allow", **extra: str) -> httpx.Response:
        """Play the user: GET the consent page, post its form back with `decision`."""
        page = self.http.get(AUTHORIZE_PATH, params=params)
        assert page.status_code == 200, (page.status_code, page.text)
        form = parse_consent_form(page.text)
        assert form.action == AUTHORIZE_PATH
        assert form.decisions == ["allow", "deny"]
        return self.http.post(form.action, data={**form.fields, "decision": decision, **extra})

    def get(self, path: str, token: str | None) -> httpx.Response:
        headers = {"Accept": "application/fhir+json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.get(FHIR_PATH + path, headers=headers)


@contextmanager
def oauth_env(**kw: Any) -> Iterator[OAuthEnv]:
    with OAuthEnv(**kw) as env:
        yield env


# -- consent page and PKCE --------------------------------------------------------------------------------


class ConsentForm(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms = 0
        self.action = ""
        self.method = ""
        self.fields: dict[str, str] = {}
        self.visible: list[str] = []
        self.decisions: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms += 1
            self.action, self.method = a.get("action", ""), a.get("method", "")
        elif tag == "input" and a.get("type") == "hidden":
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "input":
            self.visible.append(a["name"])
        elif tag == "button" and a.get("name") == "decision":
            self.decisions.append(a.get("value", ""))


def parse_consent_form(text: str) -> ConsentForm:
    form = ConsentForm()
    form.feed(text)
    assert form.forms == 1 and form.method == "post", text
    return form


def pkce_pair(method: str = "S256") -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    if method == "plain":
        return verifier, verifier
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def redirect_query(response: httpx.Response) -> dict[str, str]:
    """The query of a 302's Location, one value per name."""
    assert response.status_code == 302, (response.status_code, response.text)
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
