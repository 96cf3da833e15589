from __future__ import annotations

import httpx

from bridge.auth.keys import KeySet, SigningKey
from bridge.web import JWKS_PATH, WebResponse, WebServer, add_jwks_routes


def test_serves_jwks_and_route_table(signing_key: SigningKey) -> None:
    keys = {"a": KeySet([signing_key])}
    with WebServer() as server:
        add_jwks_routes(server, {name: ks.jwks for name, ks in keys.items()})
        server.add_route("/healthz", lambda: WebResponse(200, b"ok\n"))
        r = httpx.get(server.url + JWKS_PATH)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
        [jwk] = r.json()["keys"]
        assert jwk["kid"] == signing_key.kid and "d" not in jwk
        assert httpx.get(server.url + "/.well-known/jwks/a.json").json()["keys"][0]["kid"] == signing_key.kid
        assert httpx.get(server.url + "/healthz").text == "ok\n"
        assert httpx.get(server.url + "/nope").status_code == 404
        assert set(server.routes()) == {JWKS_PATH, "/.well-known/jwks/a.json", "/healthz"}


def test_broken_handler_answers_500() -> None:
    def boom() -> WebResponse:
        raise RuntimeError("x")

    with WebServer() as server:
        server.add_route("/boom", boom)
        assert httpx.get(server.url + "/boom").status_code == 500
        assert httpx.get(server.url + "/boom").status_code == 500  # still serving
