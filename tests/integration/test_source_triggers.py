"""The ten triggers: a change made through the simulator's admin API becomes exactly one event.

Epic profile (per-patient scans, Patient by _id, Observation per category, DocumentReference with a
per-patient _lastUpdated bound) and generic profile (one unanchored _lastUpdated search per type).
Events are read back by a plain confluent-kafka AvroDeserializer consumer with read_committed.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from source_support import (
    RESOURCES,
    SourceRun,
    connection_config,
    kafka_context,
    read_all_events,
    sim_create,
    sim_read,
    sim_resources,
    sim_update,
    topic_of,
)

from bridge.config.models import ConnectionConfig
from epic_sim.server import run_simulator

pytestmark = pytest.mark.integration


def ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def new_resource(sim: Any, rtype: str) -> dict[str, Any]:
    """A resource the hospital creates for a roster patient (or, for Patient, a new roster patient)."""
    group_id = sim.stats()["roster_group"]
    pid = sim_read(sim, "Group", group_id)["member"][0]["entity"]["reference"].split("/")[-1]
    encounter = next(
        e
        for e in sim_resources(sim, "Encounter")
        if sim_read(sim, "Encounter", e)["subject"] == ref("Patient", pid)
    )
    bodies: dict[str, dict[str, Any]] = {
        "Patient": {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14", "value": "990001"}],
            "name": [{"use": "official", "family": "Newcomer", "given": ["Ada"]}],
            "gender": "female",
            "birthDate": "1990-02-03",
        },
        "Appointment": {
            "resourceType": "Appointment",
            "status": "booked",
            "start": "2026-12-01T09:00:00Z",
            "end": "2026-12-01T09:30:00Z",
            "participant": [{"actor": ref("Patient", pid), "status": "accepted"}],
        },
        "Encounter": {
            "resourceType": "Encounter",
            "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": ref("Patient", pid),
            "period": {"start": "2026-11-25T08:00:00Z"},
        },
        "Observation": {
            "resourceType": "Observation",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": ref("Patient", pid),
            "effectiveDateTime": "2026-11-25T08:05:00Z",
            "valueQuantity": {
                "value": 71,
                "unit": "/min",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
        },
        "DocumentReference": {
            "resourceType": "DocumentReference",
            "status": "current",
            "docStatus": "final",
            "type": {
                "coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]
            },
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                            "code": "clinical-note",
                        }
                    ]
                }
            ],
            "subject": ref("Patient", pid),
            "date": "2026-11-25T08:10:00Z",
            "content": [{"attachment": {"contentType": "text/plain", "data": "bm90ZQ=="}}],
            "context": {"encounter": [ref("Encounter", encounter)]},
        },
    }
    created = sim_create(sim, bodies[rtype])
    if rtype == "Patient":  # the hospital adds the new patient to the roster Group
        group = sim_read(sim, "Group", group_id)
        group["member"].append({"entity": ref("Patient", created["id"])})
        group["quantity"] = len(group["member"])
        sim_update(sim, group)
    return created


_SEQ = itertools.count(1)


def trigger_seq() -> int:
    return next(_SEQ)


def changed_resource(sim: Any, rtype: str, n: int) -> dict[str, Any]:
    """An existing resource of a roster patient, changed by the hospital (a different one each call)."""
    rid = sim_resources(sim, rtype)[1]
    resource = sim_read(sim, rtype, rid)
    if rtype == "Patient":
        resource["telecom"] = [{"system": "phone", "value": f"555-{n:04d}", "use": "home"}]
    elif rtype == "Appointment":
        resource["status"] = "cancelled"
        resource["comment"] = f"change {n}"
    elif rtype == "Encounter":
        resource["status"] = "entered-in-error"
        resource["period"] = {**resource.get("period", {}), "end": f"2026-11-{n % 28 + 1:02d}T10:00:00Z"}
    elif rtype == "Observation":
        resource["status"] = "amended"
        resource["valueQuantity"] = {
            "value": 99.5,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        }
        resource.pop("valueString", None)
        resource.pop("component", None)
    else:
        resource["docStatus"] = "amended"
        resource["description"] = f"amended {n}"
    sim_update(sim, resource)
    return sim_read(sim, rtype, rid)


def check_projection(rtype: str, event: dict[str, Any], resource: dict[str, Any]) -> None:
    projection = event[rtype.lower()]
    if rtype == "Patient":
        assert projection["family_name"] == resource["name"][0]["family"]
        assert projection["gender"] == resource.get("gender")
        assert str(projection["birth_date"]) == resource["birthDate"]
    elif rtype == "Appointment":
        assert projection["status"] == resource["status"]
        assert projection["start"] is not None
    elif rtype == "Encounter":
        assert projection["status"] == resource["status"]
        assert projection["class_code"] == resource["class"]["code"]
    elif rtype == "Observation":
        assert projection["status"] == resource["status"]
        assert projection["code"]["code"] == resource["code"]["coding"][0]["code"]
        assert projection["categories"][0]["code"] in {"vital-signs", "laboratory", "social-history"}
    else:
        assert projection["doc_status"] == resource["docStatus"]
        assert projection["type"]["code"] == "11506-3"


@dataclass
class Bridge:
    sim: Any
    cfg: ConnectionConfig
    run: SourceRun
    topics: list[str]


@pytest.fixture(scope="module", params=["epic", "generic"])
def bridge(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Bridge]:
    """One simulator and one bridge source per profile, past its silent from-now baseline."""
    folder = tmp_path_factory.mktemp(f"triggers-{request.param}")
    with run_simulator(profile=request.param, patients=2, seed=11) as sim:
        prefix = f"t.triggers-{request.param}.{uuid.uuid4().hex[:8]}"
        cfg = connection_config(sim, folder, prefix=prefix, initial_sync="from-now")
        run = SourceRun(cfg, kafka_context(kafka_bootstrap, registry_url, folder / "state"))
        try:
            run.cycles(1)  # from-now: the baseline is recorded silently
            topics = [topic_of(cfg, r) for r in RESOURCES]
            assert all(v == [] for v in read_all_events(kafka_bootstrap, schema_registry, topics).values())
            yield Bridge(sim, cfg, run, topics)
        finally:
            run.close()


@pytest.mark.parametrize("trigger", ["CREATED", "UPDATED"])
@pytest.mark.parametrize("rtype", RESOURCES)
def test_one_change_gives_exactly_one_event(
    bridge: Bridge, rtype: str, trigger: str, kafka_bootstrap: str, schema_registry: SchemaRegistryClient
) -> None:
    sim, cfg = bridge.sim, bridge.cfg
    before = read_all_events(kafka_bootstrap, schema_registry, bridge.topics)
    seen = {e["event_id"] for v in before.values() for e in v}  # partitions interleave: compare by id

    resource = (
        new_resource(sim, rtype) if trigger == "CREATED" else changed_resource(sim, rtype, trigger_seq())
    )
    bridge.run.cycles(1)

    found = read_all_events(kafka_bootstrap, schema_registry, bridge.topics, expect=len(seen) + 1)
    new = {t: [e for e in v if e["event_id"] not in seen] for t, v in found.items()}
    events = new.pop(topic_of(cfg, rtype))
    assert [(e["resource_id"], e["trigger"]) for e in events] == [(resource["id"], trigger)]
    assert all(v == [] for v in new.values())  # nothing on the other topics
    event = events[0]
    assert event["connection"] == cfg.name and event["resource_type"] == rtype
    assert json.loads(event["resource_json"]) == resource
    expected_patient = (
        resource["id"]
        if rtype == "Patient"
        else (resource.get("subject") or resource["participant"][0]["actor"])["reference"].split("/")[-1]
    )
    assert event["patient_id"] == expected_patient
    assert len(event["fingerprint"]) == 64 and event["cursor"].startswith("cycle=")
    check_projection(rtype, event, resource)

    bridge.run.cycles(1)  # nothing changed since: nothing more
    again = read_all_events(kafka_bootstrap, schema_registry, bridge.topics)
    assert {t: len(v) for t, v in again.items()} == {t: len(v) for t, v in found.items()}


def test_a_resource_that_flips_back_and_forth_gets_a_new_event_id_for_each_change(
    bridge: Bridge, kafka_bootstrap: str, schema_registry: SchemaRegistryClient
) -> None:
    """booked → cancelled → booked → cancelled: four changes, four events, four ids (a consumer that
    deduplicates on event_id must not drop the revert, nor the second cancellation)."""
    sim, cfg = bridge.sim, bridge.cfg
    topic = topic_of(cfg, "Appointment")
    appointment = new_resource(sim, "Appointment")  # booked
    bridge.run.cycles(1)
    for status in ("cancelled", "booked", "cancelled"):
        sim_update(sim, {**sim_read(sim, "Appointment", appointment["id"]), "status": status})
        bridge.run.cycles(1)

    events = read_all_events(kafka_bootstrap, schema_registry, [topic])[topic]
    events = [e for e in events if e["resource_id"] == appointment["id"]]  # one key: in order
    assert [(e["trigger"], json.loads(e["resource_json"])["status"]) for e in events] == [
        ("CREATED", "booked"),
        ("UPDATED", "cancelled"),
        ("UPDATED", "booked"),
        ("UPDATED", "cancelled"),
    ]
    assert len({e["event_id"] for e in events}) == 4
    assert events[0]["fingerprint"] == events[2]["fingerprint"]  # the same content, yet another change
