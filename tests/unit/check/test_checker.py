"""`check` diagnoses with a mock server (what the simulator cannot stage: a skewed clock, a bad base URL)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx

from bridge.check import run_check
from bridge.config import ConnectionConfig

BASE = "https://epic.example.org/interconnect-fhir-oauth/api/FHIR/R4/"
TOKEN_URL = "https://epic.example.org/interconnect-fhir-oauth/oauth2/token"
SMART = {"token_endpoint": TOKEN_URL, "authorization_endpoint": TOKEN_URL.replace("token", "authorize")}


def server(
    *,
    skew_s: float = 0.0,
    smart_status: int = 200,
    token: tuple[int, dict[str, Any]] = (200, {"access_token": "t", "expires_in": 300}),
) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        date = email.utils.formatdate(time.time() + skew_s, usegmt=True)
        if request.url.path.endswith("smart-configuration"):
            return httpx.Response(
                smart_status, json=SMART if smart_status == 200 else {}, headers={"Date": date}
            )
        if request.url.path.endswith("/token"):
            return httpx.Response(token[0], json=token[1], headers={"Date": date})
        if request.url.path.endswith("/metadata"):
            return httpx.Response(
                200,
                headers={"Content-Type": "application/fhir+json"},
                json={
                    "resourceType": "CapabilityStatement",
                    "software": {"name": "Epic"},
                    "fhirVersion": "4.0.1",
                    "rest": [
                        {
                            "mode": "server",
                            "resource": [
                                {
                                    "type": "Patient",
                                    "interaction": [
                                        {"code": "read"},
                                        {"code": "search-type"},
                                        {"code": "create"},
                                    ],
                                    "searchParam": [{"name": "_id"}],
                                }
                            ],
                        }
                    ],
                },
            )
        if request.method == "POST":
            return httpx.Response(
                400,
                headers={"Content-Type": "application/fhir+json"},
                json={"resourceType": "OperationOutcome", "issue": []},
            )
        if request.url.path.endswith("/Patient"):
            return httpx.Response(
                200,
                headers={"Content-Type": "application/fhir+json"},
                json={"resourceType": "Bundle", "type": "searchset", "entry": []},
            )
        return httpx.Response(
            404,
            headers={"Content-Type": "application/fhir+json"},
            json={"resourceType": "OperationOutcome", "issue": []},
        )

    return handle


async def check(cfg: ConnectionConfig, handler: Callable[[httpx.Request], httpx.Response]) -> Any:
    return await run_check(cfg, store=None, transport=httpx.MockTransport(handler))


async def test_all_ok(make_config: Callable[..., ConnectionConfig]) -> None:
    report = await check(make_config(), server())
    assert report.ok, report.failures()
    assert [(r.subject, r.capability) for r in report.resources] == [
        ("Patient", "read"),
        ("Patient", "search"),
        ("Patient", "create"),
    ]


async def test_clock_skew_named(make_config: Callable[..., ConnectionConfig]) -> None:
    report = await check(make_config(), server(skew_s=600, token=(400, {"error": "invalid_client"})))
    assert not report.ok
    fixes = [r.fix or "" for r in report.failures()]
    assert any("clock skew" in f and "behind" in f for f in fixes)
    token = next(r for r in report.steps if r.subject == "token")
    assert "clock skew" in (token.fix or "")


async def test_wrong_base_url_or_environment(make_config: Callable[..., ConnectionConfig]) -> None:
    auth = {"method": "backend_services", "client_id": "c", "keys": [{"private_key": {"file": "key.pem"}}]}
    report = await check(make_config(auth=auth), server(smart_status=404))
    row = next(r for r in report.steps if r.subject == "smart-configuration")
    assert row.status == "failed" and "wrong FHIR base URL or wrong environment" in (row.fix or "")
    assert not report.ok


async def test_no_smart_configuration_is_fine_with_configured_endpoints(
    make_config: Callable[..., ConnectionConfig],
) -> None:
    report = await check(make_config(), server(smart_status=404))
    row = next(r for r in report.steps if r.subject == "smart-configuration")
    assert row.status == "skipped" and report.ok


async def test_invalid_client_without_skew_points_at_key_and_environment(
    make_config: Callable[..., ConnectionConfig],
) -> None:
    report = await check(make_config(), server(token=(401, {"error": "invalid_client"})))
    token = next(r for r in report.steps if r.subject == "token")
    assert "register the JWK Set URL" in (token.fix or "") and "wrong environment" in (token.fix or "")
    assert all(r.status == "skipped" for r in report.resources)
