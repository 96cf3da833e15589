"""Safety against the real simulator: a next link to another origin is refused before any request (the
bearer token never leaves the connection's server), and nothing secret reaches any log line of an
authenticated run."""

from __future__ import annotations

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

from bridge.check import render, run_check
from bridge.config.settings import BridgeSettings
from bridge.connection import Connection
from bridge.fhir.errors import CrossOriginLinkError


class Attacker:
    """A listener on another origin that records anything sent to it."""

    def __init__(self) -> None:
        seen = self.seen = []  # type: list[dict[str, str]]

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(dict(self.headers))
                self.send_response(200)
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
) -> None:
    """Everything logged at DEBUG by every logger (bridge, httpx, httpcore, asyncio, the in-process
    simulator) and everything printed, during authenticated runs of both grants, refreshes, 401s, retries
    and `check`."""
    from rich.console import Console

    sim = epic_sim
    caplog.set_level(logging.DEBUG)  # root: every logger
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
