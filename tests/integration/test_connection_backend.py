"""SMART backend services against the real simulator: real RS384 signatures, the simulator fetching the
JWK Set from the bridge's own HTTP server, key rotation, token refresh, retries, and the resilient FHIR
client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt as pyjwt
import pytest
from connection_support import (
    BridgeSide,
    backend_connection,
    backend_raw,
    register_backend,
)

from bridge.auth.errors import BareBadRequestError, InvalidClientError
from bridge.connection import Connection

PROFILES = ["epic", "generic"]


def token_requests(sim: Any, since: int = 0) -> list[dict[str, Any]]:
    return [r for r in sim.requests(since) if r["path"].endswith("/oauth2/token")]


@pytest.mark.parametrize("profile", PROFILES)
async def test_backend_services_end_to_end(
    epic_sim_factory: Any, bridge_side: BridgeSide, profile: str
) -> None:
    sim = epic_sim_factory(profile=profile, patients=4, seed=3, short_page_rate=0)
    cfg = backend_connection(sim, bridge_side, "bridge-e2e")
    async with await Connection.open(cfg) as conn:
        caps = await conn.fhir.capabilities()
        assert caps.profile(cfg.server_profile) == profile
        patient_id = sim.sim.store.ids("Patient", limit=1)[0]
        patient = await conn.fhir.read("Patient", patient_id)
        assert patient["id"] == patient_id
        params = [("patient", patient_id), ("category", "vital-signs"), ("_count", "2")]
        params = [(k, v) for k, v in params if caps.supports_search_param("Observation", k)]
        pages = [p async for p in conn.fhir.search_pages("Observation", params)]
        assert sum(len(p.resources) for p in pages) >= 1
        assert all(r["resourceType"] == "Observation" for p in pages for r in p.resources)
        created = await conn.fhir.create(
            "Patient",
            {
                "resourceType": "Patient",
                "name": [{"family": "Bridge", "given": ["Test"]}],
                "gender": "female",
                "birthDate": "1990-01-02",
                "identifier": [{"system": "urn:oid:1.2.3.4", "value": f"T{int(time.time())}"}],
            },
        )
        assert created.id and (await conn.fhir.read("Patient", created.id))["id"] == created.id
    assert bridge_side.jwks_hits >= 1  # the simulator fetched our JWK Set over loopback
    log = sim.requests()
    fhir = [r for r in log if "/api/FHIR/R4/" in r["path"]]
    assert fhir and all(r["status"] < 500 for r in fhir)
    assert all(
        r.get("epic_client_id") == "bridge-e2e"
        for r in fhir
        if not r["path"].endswith("metadata") and "smart-configuration" not in r["path"]
    )
    [tok] = token_requests(sim)
    assert tok["status"] == 200


async def test_assertion_is_fresh_and_signed_per_request(epic_sim: Any, bridge_side: BridgeSide) -> None:
    cfg = backend_connection(epic_sim, bridge_side, "bridge-jti")
    async with await Connection.open(cfg) as conn:
        forms: list[str] = []
        for _ in range(3):
            conn.tokens.invalidate()
            await conn.tokens.get()
            forms.append(conn.keys.signing_key.kid)  # type: ignore[union-attr]
    assert len(token_requests(epic_sim)) == 3  # three distinct assertions accepted: no jti replay refusal


async def test_key_rotation(epic_sim: Any, bridge_side: BridgeSide) -> None:
    sim, side = epic_sim, bridge_side
    old = side.new_key("old")
    side.publish("rot", [old])
    register_backend(sim, side, "bridge-rot")
    cfg = side.write_config("rot", backend_raw(sim, "bridge-rot", [old]))
    async with await Connection.open(cfg) as conn:
        await conn.fhir.capabilities()
        assert (await conn.tokens.get()).access_token

    # step 1: publish both keys, sign with the new one (the old one still listed)
    new = side.new_key("new")
    side.publish("rot", [new, old])
    cfg = side.write_config("rot", backend_raw(sim, "bridge-rot", [new, old]))
    async with await Connection.open(cfg) as conn:
        assert conn.keys is not None and conn.keys.signing_key.kid == new.kid
        assert (await conn.tokens.get()).access_token
        patient_id = sim.sim.store.ids("Patient", limit=1)[0]
        await conn.fhir.read("Patient", patient_id)
    # step 2: the old key is retired; the new one alone still works
    side.publish("rot", [new])
    cfg = side.write_config("rot", backend_raw(sim, "bridge-rot", [new]))
    async with await Connection.open(cfg) as conn:
        assert (await conn.tokens.get()).access_token
    # a key the server never saw is refused as what it is
    stranger = side.new_key("stranger")
    cfg = side.write_config("rot", backend_raw(sim, "bridge-rot", [stranger]))
    async with await Connection.open(cfg) as conn:
        with pytest.raises(InvalidClientError):
            await conn.tokens.get()


async def test_refresh_before_expiry(epic_sim: Any, bridge_side: BridgeSide) -> None:
    sim, side = epic_sim, bridge_side
    key = side.new_key("exp")
    side.publish("exp", [key])
    register_backend(sim, side, "bridge-exp", token_lifetime_s=3)
    cfg = side.write_config("exp", backend_raw(sim, "bridge-exp", [key], token_refresh_margin_s=1.5))
    patient_id = sim.sim.store.ids("Patient", limit=1)[0]
    async with await Connection.open(cfg) as conn:
        first = await conn.tokens.get()
        await conn.fhir.read("Patient", patient_id)
        await asyncio.sleep(1.7)  # now inside the refresh margin, token not yet expired
        await conn.fhir.read("Patient", patient_id)
        second = await conn.tokens.get()
    assert second is not first
    log = [r for r in sim.requests() if "/Patient/" in r["path"]]
    assert [r["status"] for r in log] == [200, 200]  # refreshed proactively: no 401 was ever seen
    assert len(token_requests(sim)) >= 2


async def test_refresh_once_on_401(epic_sim: Any, bridge_side: BridgeSide) -> None:
    sim = epic_sim
    cfg = backend_connection(sim, bridge_side, "bridge-401")
    patient_id = sim.sim.store.ids("Patient", limit=1)[0]
    async with await Connection.open(cfg) as conn:
        await conn.fhir.read("Patient", patient_id)
        before = sim.requests()[-1]["seq"]
        sim.expire_tokens()
        # several tasks hit the 401 at once: one refresh, each retries once
        results = await asyncio.gather(*(conn.fhir.read("Patient", patient_id) for _ in range(4)))
        assert all(r["id"] == patient_id for r in results)
    after = sim.requests(before)
    statuses = [r["status"] for r in after if "/Patient/" in r["path"]]
    assert statuses.count(401) == 4 and statuses.count(200) == 4
    assert len(token_requests(sim, before)) == 1


async def test_token_endpoint_bare_400_bounded_retry(epic_sim: Any, bridge_side: BridgeSide) -> None:
    sim = epic_sim
    cfg = backend_connection(sim, bridge_side, "bridge-b400")
    sim.admin.post("/admin/oauth/bare400", json={"count": 2}).raise_for_status()
    async with await Connection.open(cfg) as conn:
        assert (await conn.tokens.get()).access_token
    assert [r["status"] for r in token_requests(sim)] == [400, 400, 200]
    sim.admin.post("/admin/oauth/bare400", json={"count": 50}).raise_for_status()
    async with await Connection.open(cfg) as conn:
        with pytest.raises(BareBadRequestError):
            await conn.tokens.get()
    assert len(token_requests(sim)) == 3 + 1 + cfg.retry.token_bare_400_retries


@pytest.mark.parametrize("profile", PROFILES)
async def test_retries_honour_retry_after(
    epic_sim_factory: Any, bridge_side: BridgeSide, profile: str
) -> None:
    sim = epic_sim_factory(profile=profile, patients=3, seed=5)
    cfg = backend_connection(sim, bridge_side, "bridge-retry")
    patient_id = sim.sim.store.ids("Patient", limit=1)[0]
    async with await Connection.open(cfg) as conn:
        await conn.fhir.read("Patient", patient_id)
        sim.set_faults(
            rules=[
                {"kind": "429", "retry_after": "1", "count": 1, "resource": "Patient"},
                {"kind": "503", "retry_after": "1", "count": 1, "resource": "Patient"},
                {"kind": "drop", "count": 1, "resource": "Patient"},
                {"kind": "truncate", "count": 1, "resource": "Patient"},
            ]
        )
        before = sim.requests()[-1]["seq"]
        started = time.monotonic()
        assert (await conn.fhir.read("Patient", patient_id))["id"] == patient_id
        elapsed = time.monotonic() - started
        budget = conn.fhir.budget
        assert budget.throttles == 2 and budget.rate < budget.max_rate  # slowed down for everyone
    statuses = [r["status"] for r in sim.requests(before) if "/Patient/" in r["path"]]
    # 0 = the dropped connection; the first 200 had its body cut short (truncate), the second is whole
    assert statuses == [429, 503, 0, 200, 200]
    assert elapsed >= 2.0  # waited at least Retry-After each time


async def test_unsupported_is_not_retried_and_errors_are_typed(
    epic_sim: Any, bridge_side: BridgeSide
) -> None:
    from bridge.fhir.errors import FHIRBadRequest, FHIRNotFound

    cfg = backend_connection(epic_sim, bridge_side, "bridge-errors")
    async with await Connection.open(cfg) as conn:
        with pytest.raises(FHIRNotFound) as nf:
            await conn.fhir.read("Patient", "does-not-exist")
        assert nf.value.status == 404 and nf.value.code == "59008"
        with pytest.raises(FHIRBadRequest) as br:
            await conn.fhir.send("GET", "Patient", params={"gender": "female"})
        assert br.value.code == "59159"
        page = await conn.fhir.search_pages("Patient", {"_id": "nobody-here"}).__anext__()
        assert page.resources == [] and any(m.code == "4101" for m in page.messages)
    assert sum(1 for r in epic_sim.requests() if r["path"].endswith("/Patient")) == 2


def test_assertion_claims_seen_by_a_verifier(bridge_side: BridgeSide) -> None:
    """The header and claims a strict verifier (PyJWT, not the signing library) sees."""
    from bridge.auth.assertion import build_client_assertion

    key = bridge_side.new_key("claims")
    ks = key.keyset()
    url = "http://127.0.0.1:1/interconnect-fhir-oauth/oauth2/token"
    token = build_client_assertion(ks.signing_key, client_id="c", token_url=url)
    public = pyjwt.PyJWK(ks.jwks()["keys"][0]).key
    claims = pyjwt.decode(token, public, algorithms=["RS384"], audience=url, issuer="c")
    assert claims["sub"] == "c" and claims["exp"] - claims["iat"] <= 300


async def test_one_rate_limit_for_everything_on_the_connection(
    epic_sim: Any, bridge_side: BridgeSide
) -> None:
    """Pollers and actions share the connection's request budget: together they never exceed its rate."""
    cfg = backend_connection(
        epic_sim, bridge_side, "bridge-rate", rate_limit={"requests_per_second": 10, "burst": 1}
    )
    patient_id = epic_sim.sim.store.ids("Patient", limit=1)[0]
    async with await Connection.open(cfg) as conn:
        await conn.fhir.read("Patient", patient_id)  # token + first request
        poller, actions = conn.fhir, conn.fhir_client()
        started = time.monotonic()
        await asyncio.gather(
            *(poller.read("Patient", patient_id) for _ in range(10)),
            *(actions.read("Patient", patient_id) for _ in range(10)),
        )
        elapsed = time.monotonic() - started
    assert elapsed >= 1.8  # 20 requests at 10/s, burst 1
