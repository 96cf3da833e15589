"""The generic-FHIR profile: versioned meta, _lastUpdated/_sort everywhere, no patient anchor, create all."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sim_support import JSON, Fhir, matches, next_link

from epic_sim.server import SimServer

TYPES = ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference")
DERRICK = "eq081-VQEgP8drUUqCWzHfw3"


@pytest.fixture
def generic(epic_sim_factory: Any) -> SimServer:
    server: SimServer = epic_sim_factory(profile="generic", patients=6, seed=1)
    return server


def test_meta_version_and_last_updated(generic: SimServer, connect: Any) -> None:
    fhir: Fhir = connect(generic)
    patient = fhir.get(f"Patient/{DERRICK}").json()
    assert patient["meta"]["versionId"] == "1" and patient["meta"]["lastUpdated"]
    patient["telecom"] = [{"system": "phone", "value": "608-555-7777"}]
    generic.admin.put(f"/admin/resources/Patient/{DERRICK}", json=patient).raise_for_status()
    again = fhir.get(f"Patient/{DERRICK}").json()
    assert again["meta"]["versionId"] == "2" and again["meta"]["lastUpdated"] > patient["meta"]["lastUpdated"]


@pytest.mark.parametrize("rtype", TYPES)
def test_search_without_patient_and_last_updated(generic: SimServer, connect: Any, rtype: str) -> None:
    fhir: Fhir = connect(generic)
    bundles = fhir.search_all(rtype, _count=50)
    everything = [r for b in bundles for r in matches(b)]
    assert everything and bundles[0]["total"] == len(everything)
    assert all("versionId" in r["meta"] for r in everything)
    mark = max(r["meta"]["lastUpdated"] for r in everything)
    assert matches(fhir.search(rtype, _lastUpdated=f"gt{mark}")) == []
    time.sleep(0.01)
    target = everything[0]
    generic.admin.put(f"/admin/resources/{rtype}/{target['id']}", json=target).raise_for_status()
    assert [r["id"] for r in matches(fhir.search(rtype, _lastUpdated=f"gt{mark}"))] == [target["id"]]


@pytest.mark.parametrize("rtype", TYPES)
def test_sort(generic: SimServer, connect: Any, rtype: str) -> None:
    fhir: Fhir = connect(generic)
    ascending = [
        r["meta"]["lastUpdated"] for r in matches(fhir.search(rtype, _sort="_lastUpdated", _count=200))
    ]
    assert ascending == sorted(ascending)
    ids = [r["id"] for b in fhir.search_all(rtype, _sort="-_id", _count=7) for r in matches(b)]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))


@pytest.mark.parametrize("rtype", TYPES)
def test_create_on_all_five_returns_the_body(generic: SimServer, connect: Any, rtype: str) -> None:
    fhir: Fhir = connect(generic)
    body: dict[str, Any] = {"resourceType": rtype, "status": "booked" if rtype == "Appointment" else "final"}
    if rtype != "Patient":
        body["subject"] = {"reference": f"Patient/{DERRICK}"}
    response = fhir.post(rtype, json=body)
    assert response.status_code == 201
    created = response.json()
    assert created["id"] and created["meta"]["versionId"] == "1"
    assert response.headers["location"].startswith(f"{generic.fhir_base}{rtype}/{created['id']}")
    assert fhir.get(f"{rtype}/{created['id']}").json()["id"] == created["id"]


def test_normal_paging_links(generic: SimServer, connect: Any) -> None:
    fhir: Fhir = connect(generic)
    first = fhir.search("Observation", _count=40)
    link = next_link(first)
    assert link and "_getpages=" in link
    assert first["total"] > 40 and len(matches(first)) == 40
    pages = fhir.search_all("Observation", _count=40)
    assert sum(len(matches(p)) for p in pages) == first["total"]
    assert all(len(matches(p)) == 40 for p in pages[:-1])  # no short pages


def test_capability_statement_and_json_default(generic: SimServer) -> None:
    statement = httpx.get(f"{generic.fhir_base}metadata").json()  # JSON without asking
    assert statement["software"]["name"] != "Epic"
    for resource in statement["rest"][0]["resource"]:
        if resource["type"] in TYPES:
            names = {p["name"] for p in resource["searchParam"]}
            assert {"_lastUpdated", "_sort", "_id"} <= names
            assert "create" in {i["code"] for i in resource["interaction"]}


def test_unknown_parameter_ignored_by_default_and_refused_when_strict(
    generic: SimServer, connect: Any
) -> None:
    fhir: Fhir = connect(generic)
    assert fhir.get("Patient", params={"bogus": "1"}).status_code == 200
    strict = fhir.get("Patient", params={"bogus": "1"}, headers={"Prefer": "handling=strict", "Accept": JSON})
    assert strict.status_code == 400
