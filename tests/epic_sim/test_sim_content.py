"""Content negotiation, errors, discovery and authorization as Epic answers them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest
from sim_support import JSON, Fhir, epic_codes, matches

from epic_sim.outcomes import EPIC_OO_SYSTEM
from epic_sim.server import SimServer

DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
FHIR_NS = "{http://hl7.org/fhir}"


@pytest.mark.parametrize("accept", [None, "*/*", "text/html", "application/octet-stream"])
def test_xml_unless_json_is_asked_for(fhir: Fhir, accept: str | None) -> None:
    headers = dict(fhir.http.headers)
    headers.pop("accept", None)
    if accept is not None:
        headers["Accept"] = accept
    response = httpx.get(f"{fhir.server.fhir_base}Patient/{DERRICK}", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+xml")
    root = ET.fromstring(response.content)
    assert root.tag == f"{FHIR_NS}Patient"
    assert root.find(f"{FHIR_NS}id").get("value") == DERRICK
    assert root.find(f"{FHIR_NS}birthDate").get("value") == "1973-06-03"


def test_xml_search_bundle(fhir: Fhir) -> None:
    headers = {"Authorization": fhir.http.headers["authorization"], "Accept": "application/xml+unknown"}
    response = httpx.get(f"{fhir.server.fhir_base}Encounter", params={"patient": DERRICK}, headers=headers)
    root = ET.fromstring(response.content)
    assert root.tag == f"{FHIR_NS}Bundle"
    resources = root.findall(f"{FHIR_NS}entry/{FHIR_NS}resource/{FHIR_NS}Encounter")
    assert len(resources) == 4


@pytest.mark.parametrize("accept", ["application/fhir+json", "application/json"])
def test_json_when_asked(fhir: Fhir, accept: str) -> None:
    response = fhir.get(f"Patient/{DERRICK}", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.json()["id"] == DERRICK


def test_no_version_or_last_updated_in_epic_profile(fhir: Fhir) -> None:
    patient = fhir.get(f"Patient/{DERRICK}").json()
    assert "versionId" not in patient.get("meta", {}) and "lastUpdated" not in patient.get("meta", {})
    for rtype, params in [
        ("Observation", {"category": "laboratory"}),
        ("Encounter", {}),
        ("Appointment", {}),
        ("DocumentReference", {}),
    ]:
        for resource in matches(fhir.search(rtype, patient=DERRICK, **params)):
            assert "meta" not in resource
    assert "etag" not in fhir.get(f"Patient/{DERRICK}").headers


def test_unknown_resource_type_is_an_html_404(fhir: Fhir) -> None:
    for path in ("Medication", "Medication/abc", "Frobnicate?patient=x"):
        response = fhir.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        assert "<html>" in response.text


def test_read_of_missing_id_is_59008(fhir: Fhir) -> None:
    response = fhir.get("Patient/eDoesNotExist3")
    assert response.status_code == 404
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert epic_codes(outcome) == ["59008"]
    assert outcome["issue"][0]["details"]["coding"][0]["system"] == EPIC_OO_SYSTEM


def test_capability_statement(epic_sim: SimServer) -> None:
    statement = httpx.get(f"{epic_sim.fhir_base}metadata", headers={"Accept": JSON}).json()
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["software"]["name"] == "Epic"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    params = {t: {p["name"] for p in r.get("searchParam", [])} for t, r in resources.items()}
    assert "_lastUpdated" in params["DocumentReference"]
    assert not any(
        "_lastUpdated" in params[t] for t in ("Patient", "Observation", "Encounter", "Appointment")
    )
    assert not any("_sort" in p for p in params.values())
    assert params["Encounter"] == {"patient", "subject", "date", "identifier", "_count"}
    interactions = {t: {i["code"] for i in r["interaction"]} for t, r in resources.items()}
    assert "create" in interactions["Patient"] and "create" in interactions["DocumentReference"]
    assert "create" not in interactions["Encounter"] and "create" not in interactions["Appointment"]
    assert interactions["Group"] == {"read"}
    oauth = statement["rest"][0]["security"]["extension"][0]["extension"]
    assert {"url": "token", "valueUri": epic_sim.token_url} in oauth


def test_smart_configuration(epic_sim: SimServer) -> None:
    config = httpx.get(f"{epic_sim.fhir_base}.well-known/smart-configuration").json()
    assert config["token_endpoint"] == epic_sim.token_url
    assert config["authorization_endpoint"] == epic_sim.authorize_url


def test_no_token_is_401_with_epic_www_authenticate(epic_sim: SimServer) -> None:
    response = httpx.get(f"{epic_sim.fhir_base}Patient/{DERRICK}", headers={"Accept": JSON})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="The access token provided is not valid"'
    )
    bad = httpx.get(f"{epic_sim.fhir_base}Patient/{DERRICK}", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


def test_resource_outside_scopes_is_403(epic_sim: SimServer, connect: Any) -> None:
    fhir: Fhir = connect(epic_sim, scopes=["system/Patient.rs"], client_id="patients-only")
    assert fhir.get(f"Patient/{DERRICK}").status_code == 200
    denied = fhir.get("Encounter", params={"patient": DERRICK})
    assert denied.status_code == 403
    assert denied.json()["resourceType"] == "OperationOutcome"
    create = fhir.post("Patient", json={"resourceType": "Patient", "name": [{"family": "X"}]})
    assert create.status_code == 403


def test_request_log_records_query_and_epic_client_id(fhir: Fhir) -> None:
    since = fhir.server.requests()[-1]["seq"]
    fhir.search("Appointment", patient=DERRICK, status="booked", bogus="1")
    logged = fhir.server.requests(since=since)
    assert len(logged) == 1
    entry = logged[0]
    assert entry["method"] == "GET" and entry["path"].endswith("/api/FHIR/R4/Appointment")
    assert entry["query"] == {"patient": [DERRICK], "status": ["booked"], "bogus": ["1"]}
    assert entry["status"] == 200
    assert entry["client_id"] == "sim-tests" and entry["epic_client_id"] == "sim-tests"
    assert entry["auth_client_id"] == "sim-tests"
    token_calls = [r for r in fhir.server.requests() if r["path"].endswith("/oauth2/token")]
    assert token_calls and token_calls[0]["status"] == 200
