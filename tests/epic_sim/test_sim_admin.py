"""The hospital's side: admin create/update/delete, background activity, the request log."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sim_support import Fhir, matches

from epic_sim.server import SimServer, run_simulator

DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
TYPES = ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference")


def test_admin_create_update_delete_visible_through_fhir(fhir: Fhir) -> None:
    admin = fhir.server.admin
    encounter = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "subject": {"reference": f"Patient/{DERRICK}"},
        "period": {"start": "2026-11-24T10:00:00Z"},
    }
    created = admin.post("/admin/resources/Encounter", json=encounter)
    assert created.status_code == 201
    eid = created.json()["id"]
    assert eid in {e["id"] for e in matches(fhir.search("Encounter", patient=DERRICK))}
    before = fhir.get(f"Encounter/{eid}").json()
    changed = dict(before, status="finished")
    assert admin.put(f"/admin/resources/Encounter/{eid}", json=changed).status_code == 200
    after = fhir.get(f"Encounter/{eid}").json()
    assert after["status"] == "finished" and after != before
    assert admin.delete(f"/admin/resources/Encounter/{eid}").status_code == 204
    assert fhir.get(f"Encounter/{eid}").status_code == 404
    assert admin.delete(f"/admin/resources/Encounter/{eid}").status_code == 404
    assert admin.post("/admin/resources/Medication", json={"resourceType": "Medication"}).status_code == 404


def test_admin_create_with_given_id_and_conflict(fhir: Fhir) -> None:
    admin = fhir.server.admin
    body = {"resourceType": "Patient", "id": "eMyOwn.Id-13", "name": [{"family": "Own"}]}
    assert admin.post("/admin/resources/Patient", json=body).status_code == 201
    assert admin.post("/admin/resources/Patient", json=body).status_code == 409
    assert fhir.get("Patient/eMyOwn.Id-13").json()["name"][0]["family"] == "Own"


def test_activity_steps_create_and_update_all_five_types(fhir: Fhir) -> None:
    admin = fhir.server.admin
    counts_before = fhir.server.stats()["counts"]
    snapshot = {
        rid: fhir.get(f"Patient/{rid}").json() for rid in admin.get("/admin/resources/Patient").json()["ids"]
    }
    changes = admin.post("/admin/activity/step", json={"count": 300}).json()["changes"]
    kinds = {c.split("/", 1)[0] for c in changes}
    assert {f"{t}.{op}" for t in TYPES for op in ("create", "update")} <= kinds
    counts_after = fhir.server.stats()["counts"]
    assert all(counts_after[t] > counts_before[t] for t in TYPES)
    updated_patients = {c.split("/", 1)[1] for c in changes if c.startswith("Patient.update/")}
    changed = [
        rid
        for rid in updated_patients
        if rid in snapshot and fhir.get(f"Patient/{rid}").json() != snapshot[rid]
    ]
    assert changed  # an update changes content, so a fingerprinting poller sees it


def test_background_activity_rate(epic_sim_factory: Any) -> None:
    server: SimServer = epic_sim_factory(patients=3, activity_rate=50)
    time.sleep(0.6)
    assert server.admin.get("/admin/activity").json()["total"] >= 5
    server.admin.put("/admin/activity", json={"rate_per_s": 0}).raise_for_status()
    time.sleep(0.1)
    settled = server.admin.get("/admin/activity").json()["total"]
    time.sleep(0.3)
    assert server.admin.get("/admin/activity").json()["total"] == settled
    server.admin.put("/admin/activity", json={"rate_per_s": 100}).raise_for_status()
    time.sleep(0.3)
    assert server.admin.get("/admin/activity").json()["total"] > settled


def test_seeded_data_is_deterministic_and_realistic() -> None:
    snapshots = []
    for _ in range(2):
        with run_simulator(patients=5, seed=9) as server:
            ids = server.admin.get("/admin/resources/Observation", params={"limit": 1000}).json()["ids"]
            snapshots.append((ids, server.admin.get(f"/admin/resources/Observation/{ids[7]}").json()))
            counts = server.stats()["counts"]
    assert snapshots[0] == snapshots[1]
    assert counts["Patient"] == 5 and counts["Observation"] == 5 * 29 and counts["DocumentReference"] == 20
    assert all(c.isalnum() or c in ".-" for rid in snapshots[0][0] for c in rid)
    with run_simulator(patients=5, seed=10) as other:
        assert (
            other.admin.get("/admin/resources/Observation", params={"limit": 1000}).json()["ids"]
            != snapshots[0][0]
        )


def test_request_log_since(fhir: Fhir) -> None:
    fhir.get(f"Patient/{DERRICK}")
    mark = fhir.server.requests()[-1]["seq"]
    fhir.get("Patient/eMissing3")
    fhir.get("Nope")
    newer = fhir.server.requests(since=mark)
    assert [(r["path"].rsplit("/", 1)[-1], r["status"]) for r in newer] == [("eMissing3", 404), ("Nope", 404)]
    assert all(r["seq"] > mark for r in newer)


@pytest.mark.parametrize("body", [{"client_id": ""}, {"auth_methods": ["private_key_jwt"]}])
def test_bad_client_registration_is_400(epic_sim: SimServer, body: dict[str, Any]) -> None:
    assert epic_sim.admin.post("/admin/clients", json=body).status_code == 400


def test_search_quirk_settings_at_run_time(fhir: Fhir) -> None:
    admin = fhir.server.admin
    assert admin.get("/admin/settings").json() == {"short_page_rate": 0.15, "warning_rate": 0.0}
    admin.put("/admin/settings", json={"short_page_rate": 0, "warning_rate": 1}).raise_for_status()
    bundles = fhir.search_all("Observation", patient=DERRICK, category="vital-signs", _count=3)
    assert [len(matches(b)) for b in bundles] == [3, 3, 3, 3, 3, 3, 2]
    assert admin.put("/admin/settings", json={"short_page_rate": 2}).status_code == 400
    assert admin.put("/admin/settings", json={"bogus": 0}).status_code == 400


def test_request_log_can_be_cleared(fhir: Fhir) -> None:
    fhir.get(f"Patient/{DERRICK}")
    last = fhir.server.requests()[-1]["seq"]
    assert fhir.server.admin.delete("/admin/requests").status_code == 204
    assert fhir.server.requests() == []
    fhir.get(f"Patient/{DERRICK}")
    assert [r["seq"] for r in fhir.server.requests()] == [last + 1]
