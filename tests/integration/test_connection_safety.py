"""Safety against the real simulator: a next link to another origin is refused before any request (the
bearer token never leaves the connection's server), and nothing secret reaches any log line of an
authenticated run."""

from __future__ import annotations

import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from connection_support import (
    SECRET,
    BridgeSide,
    authcode_connection,
    backend_connection,
    connect,
    log_text,
    pem_fragments,
    store_of,
)

from bridge.auth.errors import UnsafeEndpointError
from bridge.check import render, run_check
from bridge.config.settings import BridgeSettings
from bridge.connection import Connection
from bridge.fhir.errors import CrossOriginLinkError
from bridge.logs import log_handler, pseudonym


class Attacker:
    """A listener on another origin that records anything sent to it."""

    def __init__(self) -> None:
        seen = self.seen = []  # type: list[dict[str, str]]

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(dict(self.headers))
                self.send_response(200)
                self.end_headers()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                seen.append({**self.headers, "body": body.decode("utf-8", "replace")})
                self.send_response(400)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.origin = f"http://localhost:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ForeignNextLinks(httpx.AsyncBaseTransport):
    """Between the bridge and the real simulator: rewrites Bundle next links to point at another origin
    (what a compromised or misconfigured proxy could do)."""

    def __init__(self, foreign_origin: str) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._foreign = foreign_origin

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        body = await response.aread()
        if b'"Bundle"' in body:
            doc = json.loads(body)
            for link in doc.get("link", []):
                if link.get("relation") == "next":
                    link["url"] = self._foreign + httpx.URL(link["url"]).raw_path.decode()
            body = json.dumps(doc).encode()
        headers = [
            (k, v)
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "content-encoding")
        ]
        return httpx.Response(response.status_code, headers=headers, content=body)

    async def aclose(self) -> None:
        await self._inner.aclose()


THIEF = "token-thief.example"


class HijackedDiscovery(httpx.AsyncBaseTransport):
    """Between the bridge and the real simulator: the smart-configuration names a token or authorize
    endpoint on another host over plain http (what a compromised proxy or a wrong server could answer).
    Requests to that host reach the attacker's listener on loopback."""

    def __init__(self, attacker_port: int, key: str) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._port = attacker_port
        self._key = key

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == THIEF:
            request.url = request.url.copy_with(host="127.0.0.1")
            return await self._inner.handle_async_request(request)
        response = await self._inner.handle_async_request(request)
        if not request.url.path.endswith("/.well-known/smart-configuration"):
            return response
        doc = json.loads(await response.aread())
        doc[self._key] = f"http://{THIEF}:{self._port}{httpx.URL(doc[self._key]).path}"
        return httpx.Response(200, json=doc)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("key", ["token_endpoint", "authorization_endpoint"])
async def test_a_discovered_plain_http_endpoint_is_refused_before_any_credential_goes_there(
    epic_sim: Any, bridge_side: BridgeSide, key: str
) -> None:
    cfg = backend_connection(epic_sim, bridge_side, f"bridge-discovery-{key[:5]}")
    attacker = Attacker()
    port = attacker.server.server_address[1]
    try:
        with pytest.raises(UnsafeEndpointError) as refused:
            async with await Connection.open(cfg, transport=HijackedDiscovery(port, key)) as conn:
                await conn.tokens.get()  # the client assertion would go to the token endpoint
    finally:
        attacker.stop()
    assert attacker.seen == []
    message = str(refused.value)
    assert f"http://{THIEF}:{port}" in message and "must use https" in message
    assert "auth.token_url" in message if key == "token_endpoint" else "auth.authorize_url" in message


async def test_with_a_configured_token_url_discovery_is_not_used(
    epic_sim: Any, bridge_side: BridgeSide
) -> None:
    """The fix the error names: with auth.token_url set, an unsafe advertised endpoint is never read."""
    cfg = backend_connection(epic_sim, bridge_side, "bridge-configured")
    raw = json.loads((bridge_side.folder / f"{cfg.name}.json").read_text())
    raw["auth"]["token_url"] = epic_sim.token_url
    cfg = bridge_side.write_config(cfg.name, {k: v for k, v in raw.items() if k != "name"})
    attacker = Attacker()
    try:
        transport = HijackedDiscovery(attacker.server.server_address[1], "token_endpoint")
        async with await Connection.open(cfg, transport=transport) as conn:
            assert (await conn.tokens.get()).access_token.get_secret_value()
    finally:
        attacker.stop()
    assert attacker.seen == []


async def test_check_names_a_discovered_plain_http_token_endpoint_and_the_fix(
    epic_sim: Any, bridge_side: BridgeSide
) -> None:
    cfg = backend_connection(epic_sim, bridge_side, "bridge-check-discovery")
    attacker = Attacker()
    try:
        transport = HijackedDiscovery(attacker.server.server_address[1], "token_endpoint")
        report = await run_check(cfg, store=None, transport=transport)
    finally:
        attacker.stop()
    assert attacker.seen == []
    [row] = [r for r in report.steps if r.subject == "smart-configuration"]
    assert row.status == "failed" and "must use https" in row.detail and THIEF in row.detail
    assert row.fix is not None and "auth.token_url" in row.fix and "fhir_base_url" in row.fix
    assert not any(r.subject == "token" and r.status == "ok" for r in report.steps)
    assert report.resources and all(r.status == "skipped" for r in report.resources)


@pytest.mark.parametrize("profile", ["epic", "generic"])
async def test_cross_origin_next_link_refused(
    epic_sim_factory: Any, bridge_side: BridgeSide, profile: str
) -> None:
    sim = epic_sim_factory(profile=profile, patients=2, seed=4, short_page_rate=0)
    cfg = backend_connection(sim, bridge_side, "bridge-origin")
    attacker = Attacker()
    try:
        patient_id = sim.sim.store.ids("Patient", limit=1)[0]
        async with await Connection.open(cfg, transport=ForeignNextLinks(attacker.origin)) as conn:
            caps = await conn.fhir.capabilities()
            params = [("patient", patient_id), ("category", "vital-signs"), ("_count", "1")]
            params = [(k, v) for k, v in params if caps.supports_search_param("Observation", k)]
            pages = []
            with pytest.raises(CrossOriginLinkError, match="localhost"):
                async for page in conn.fhir.search_pages("Observation", params):
                    pages.append(page)
            assert len(pages) == 1 and pages[0].next_url and pages[0].next_url.startswith(attacker.origin)
    finally:
        attacker.stop()
    assert attacker.seen == []  # nothing, let alone a bearer token, went to the other origin


async def test_nothing_secret_in_logs(
    epic_sim: Any,
    bridge_side: BridgeSide,
    monkeypatch: pytest.MonkeyPatch,
    settings: BridgeSettings,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Everything logged at DEBUG by every logger (bridge, httpx, httpcore, asyncio, the in-process
    simulator) and everything printed, during authenticated runs of both grants, refreshes, 401s, retries
    and `check`. The lines the bridge's own handler writes carry no patient id either (see also
    test_logs_patient_data.py)."""
    from rich.console import Console

    sim = epic_sim
    caplog.set_level(logging.DEBUG)  # root: every logger
    bridge_lines = io.StringIO()
    handler = log_handler("json", bridge_lines)
    logging.getLogger().addHandler(handler)
    request.addfinalizer(lambda: logging.getLogger().removeHandler(handler))
    for name in ("httpx", "httpcore", "bridge", "epic_sim", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    secrets: dict[str, str] = {"client secret": SECRET}

    # backend services: private key, assertion, access token; a 401 refresh and a 429 retry on the way
    cfg = backend_connection(sim, bridge_side, "bridge-logs")
    key_pem = next(cfg.source_dir.glob("bridge-logs-*.pem")).read_bytes()  # type: ignore[union-attr]
    patient_id = sim.sim.store.ids("Patient", limit=1)[0]
    async with await Connection.open(cfg) as conn:
        await conn.fhir.read("Patient", patient_id)
        secrets["backend access token"] = (await conn.tokens.get()).access_token.get_secret_value()
        sim.expire_tokens()
        sim.set_faults(rules=[{"kind": "429", "retry_after": "0", "count": 1, "resource": "Patient"}])
        await conn.fhir.read("Patient", patient_id)
        secrets["backend access token 2"] = (await conn.tokens.get()).access_token.get_secret_value()
        sim.clear_faults()
    render(await run_check(cfg, store=None), Console(file=None, force_terminal=False, width=200))

    # authorization code: client secret, code, access and refresh tokens, a refresh after expiry
    ac = authcode_connection(sim, bridge_side, monkeypatch, client_id="bridge-logs-ac")
    await connect(ac, settings)
    stored = store_of(settings).load(ac.name)
    assert stored is not None and stored.refresh_token is not None and stored.access_token is not None
    secrets["refresh token"] = stored.refresh_token.get_secret_value()
    secrets["authcode access token"] = stored.access_token.get_secret_value()
    async with await Connection.open(ac, store=store_of(settings)) as conn:
        sim.expire_tokens()
        await conn.fhir.read("Patient", patient_id)
        secrets["refreshed access token"] = (await conn.tokens.get()).access_token.get_secret_value()
    render(await run_check(ac, store=store_of(settings)), Console(width=200))

    text = log_text(caplog, capfd)
    assert len(caplog.records) > 20, "the run should have logged plenty"
    for what, value in secrets.items():
        assert value and value not in text, f"{what} leaked into the logs"
    for fragment in pem_fragments(key_pem):
        assert fragment not in text, "private key material leaked into the logs"
    assert "client_assertion=" not in text and "eyJ" not in text  # no signed assertion or JWT-shaped token
    written = bridge_lines.getvalue()
    assert f"Patient/{pseudonym(patient_id)}" in written  # the reads were logged, the id pseudonymised
    assert patient_id not in written
    for what, value in secrets.items():
        assert value not in written, f"{what} in the bridge's log lines"
