"""Every fault mode, set at start-up or at run time through PUT /admin/faults."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from sim_support import JSON, JWT_BEARER, Fhir, backend_token, client_assertion, register_backend

from epic_sim.server import SimServer

DERRICK = "eq081-VQEgP8drUUqCWzHfw3"


@pytest.mark.parametrize(
    "kind, retry_after", [("429", "3"), ("429", None), ("503", "1"), ("503", None), ("500", None)]
)
def test_error_statuses_with_and_without_retry_after(fhir: Fhir, kind: str, retry_after: str | None) -> None:
    rule: dict[str, Any] = {"kind": kind, "count": 2, "resource": "Patient"}
    if retry_after is not None:
        rule["retry_after"] = retry_after
    fhir.server.set_faults(rules=[rule])
    for _ in range(2):
        response = fhir.get(f"Patient/{DERRICK}")
        assert response.status_code == int(kind)
        assert response.headers.get("retry-after") == retry_after
    assert fhir.get(f"Patient/{DERRICK}").status_code == 200  # the next-2 budget is spent
    logged = [r for r in fhir.server.requests() if r["fault"]]
    assert [r["status"] for r in logged] == [int(kind)] * 2


def test_faults_target_by_resource_and_path(fhir: Fhir) -> None:
    fhir.server.set_faults(
        rules=[
            {"kind": "503", "resource": "Encounter"},
            {"kind": "500", "path": r"/Observation$", "method": "GET"},
        ]
    )
    assert fhir.get("Encounter", params={"patient": DERRICK}).status_code == 503
    assert fhir.get("Observation", params={"patient": DERRICK, "category": "laboratory"}).status_code == 500
    assert fhir.get(f"Patient/{DERRICK}").status_code == 200
    fhir.server.clear_faults()
    assert fhir.get("Encounter", params={"patient": DERRICK}).status_code == 200


def test_probability_is_seeded_and_repeatable(fhir: Fhir) -> None:
    runs = []
    for _ in range(2):
        fhir.server.set_faults(rules=[{"kind": "429", "probability": 0.5}], seed=7)
        runs.append([fhir.get(f"Patient/{DERRICK}").status_code for _ in range(20)])
    assert runs[0] == runs[1]
    assert 3 < runs[0].count(429) < 17


def test_added_latency(fhir: Fhir) -> None:
    started = time.monotonic()
    fhir.get(f"Patient/{DERRICK}")
    baseline = time.monotonic() - started
    fhir.server.set_faults(rules=[{"kind": "latency", "latency_ms": 400, "count": 1}])
    started = time.monotonic()
    assert fhir.get(f"Patient/{DERRICK}").status_code == 200
    assert time.monotonic() - started >= 0.4 > baseline


def test_dropped_connection(fhir: Fhir) -> None:
    fhir.server.set_faults(rules=[{"kind": "drop", "count": 1}])
    with pytest.raises(httpx.RemoteProtocolError):
        fhir.get(f"Patient/{DERRICK}")
    assert fhir.get(f"Patient/{DERRICK}").status_code == 200
    assert [r["fault"] for r in fhir.server.requests() if r["fault"]] == ["drop"]


def test_truncated_body(fhir: Fhir) -> None:
    fhir.server.set_faults(rules=[{"kind": "truncate", "count": 1, "resource": "Observation"}])
    with pytest.raises(httpx.RemoteProtocolError):
        fhir.get("Observation", params={"patient": DERRICK, "category": "vital-signs"})
    with (
        httpx.Client() as raw,
        raw.stream("GET", f"{fhir.server.fhir_base}Patient/{DERRICK}", headers=dict(fhir.http.headers)) as ok,
    ):
        assert ok.status_code == 200
    fhir.server.set_faults(rules=[{"kind": "truncate", "count": 1}])
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.Client() as raw,
        raw.stream(
            "GET", f"{fhir.server.fhir_base}Patient/{DERRICK}", headers=dict(fhir.http.headers)
        ) as response,
    ):
        assert response.status_code == 200
        expected = int(response.headers["content-length"])
        for chunk in response.iter_raw():
            received += chunk
    assert 0 < len(received) < expected


def test_token_expiry_mid_run(fhir: Fhir) -> None:
    assert fhir.get(f"Patient/{DERRICK}").status_code == 200
    fhir.server.expire_tokens()
    expired = fhir.get(f"Patient/{DERRICK}")
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    fhir.refresh()
    assert fhir.get(f"Patient/{DERRICK}").status_code == 200


def test_token_endpoint_faults_and_bare_400(fhir: Fhir) -> None:
    fhir.server.set_faults(rules=[{"kind": "503", "path": "/oauth2/token", "count": 1, "retry_after": "2"}])
    response = httpx.post(fhir.server.token_url, data={"grant_type": "client_credentials"})
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    fhir.server.admin.post("/admin/oauth/bare400", json={"count": 1}).raise_for_status()
    with pytest.raises(AssertionError):
        backend_token(fhir.server, fhir.client_id, fhir.key)
    assert backend_token(fhir.server, fhir.client_id, fhir.key)


def test_faults_configured_at_start_up(epic_sim_factory: Any) -> None:
    server: SimServer = epic_sim_factory(patients=2, faults=[{"kind": "503", "count": 1, "retry_after": "5"}])
    first = httpx.get(f"{server.fhir_base}metadata", headers={"Accept": JSON})
    assert first.status_code == 503 and first.headers["retry-after"] == "5"
    assert httpx.get(f"{server.fhir_base}metadata", headers={"Accept": JSON}).status_code == 200


def test_admin_api_is_never_faulted_and_rejects_bad_rules(fhir: Fhir) -> None:
    fhir.server.set_faults(rules=[{"kind": "500"}])
    assert fhir.server.admin.get("/admin/stats").status_code == 200
    bad = fhir.server.admin.put("/admin/faults", json={"rules": [{"kind": "explode"}]})
    assert bad.status_code == 400
    assert fhir.server.admin.get("/admin/faults").json()["rules"][0]["kind"] == "500"


def test_configured_token_lifetime(epic_sim_factory: Any, connect: Any) -> None:
    fhir: Fhir = connect(epic_sim_factory(patients=2, token_lifetime_s=1))
    assert fhir.get(f"Patient/{DERRICK}").status_code == 200
    time.sleep(1.3)
    assert fhir.get(f"Patient/{DERRICK}").status_code == 401


def test_skewed_server_clock(epic_sim_factory: Any, rsa_key: Any) -> None:
    server: SimServer = epic_sim_factory(patients=1, clock_offset_s=600)
    response = httpx.get(f"{server.fhir_base}metadata", headers={"Accept": JSON})
    assert len(response.headers.get_list("date")) == 1
    skew = parsedate_to_datetime(response.headers["date"]).timestamp() - time.time()
    assert 590 < skew < 610
    register_backend(server, rsa_key)
    refused = httpx.post(
        server.token_url,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": client_assertion(server, "sim-tests", rsa_key),
        },
    )
    assert refused.status_code in (400, 401) and refused.json()["error"] == "invalid_client"
    server.set_faults(rules=[{"kind": "drop", "count": 1}])  # dropping still works behind the Date wrapper
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.fhir_base}metadata")
