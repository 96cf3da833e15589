"""The ten actions end to end: commands on the real broker, the real sink, the simulator as Epic
(and as a generic FHIR server), results read back from the results topic."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sink_support import (
    ENCOUNTERS_SQL,
    RunningSink,
    bp_fields,
    encounter_of,
    kafka_context,
    mrn_of,
    next_weekday,
    resources_of,
    start_sink,
    write_connection,
)

pytestmark = pytest.mark.integration


@dataclass
class Env:
    sim: Any
    sink: RunningSink
    patient: str

    def posts(self, since: int) -> list[dict[str, Any]]:
        return [r for r in self.sim.requests(since) if r["method"] == "POST" and "/oauth2/" not in r["path"]]

    def fhir_requests(self, since: int) -> list[dict[str, Any]]:
        return [r for r in self.sim.requests(since) if "/api/FHIR/" in r["path"]]

    def last_seq(self) -> int:
        requests = self.sim.requests(0)
        return int(requests[-1]["seq"]) if requests else 0

    def count(self, rtype: str) -> int:
        return int(self.sim.stats()["counts"][rtype])


async def _env(factory: Any, profile: str, tmp_path: Path, bootstrap: str, registry_url: str) -> Env:
    sim = factory(profile=profile, patients=3, seed=11, short_page_rate=0)
    config = write_connection(sim, tmp_path / "cfg", f"{profile}-sink")
    sink = await start_sink(config, kafka_context(bootstrap, registry_url, tmp_path / "state"))
    return Env(sim, sink, sim.sim.store.ids("Patient", limit=1)[0])


@pytest.fixture
async def epic(
    epic_sim_factory: Any, tmp_path: Path, kafka_bootstrap: str, registry_url: str
) -> AsyncIterator[Env]:
    env = await _env(epic_sim_factory, "epic", tmp_path, kafka_bootstrap, registry_url)
    yield env
    await env.sink.close()


@pytest.fixture
async def generic(
    epic_sim_factory: Any, tmp_path: Path, kafka_bootstrap: str, registry_url: str
) -> AsyncIterator[Env]:
    env = await _env(epic_sim_factory, "generic", tmp_path, kafka_bootstrap, registry_url)
    yield env
    await env.sink.close()


# -- Patient -------------------------------------------------------------------------------------------
async def test_patient_create_find_and_ensure_on_epic(epic: Env) -> None:
    before = epic.count("Patient")
    created = await epic.sink.run(
        "Patient",
        "CREATE",
        correlation_id="corr-1",
        fields={
            "family_name": "Okafor",
            "given_names": ["Ada"],
            "gender": "female",
            "birth_date": dt.date(1980, 2, 29),
            "phone": "+1 555 0100",
        },
    )
    assert (created["status"], created["effect"], created["correlation_id"]) == (
        "SUCCEEDED",
        "CREATED",
        "corr-1",
    )
    [new_id] = created["resource_ids"]
    [patient] = resources_of(created)  # Epic answered 201 with an empty body: the sink read it back
    assert patient["id"] == new_id and patient["birthDate"] == "1980-02-29"
    mrn = mrn_of(patient)
    assert mrn is not None  # Epic gave it an MRN
    assert epic.count("Patient") == before + 1

    found = await epic.sink.run("Patient", "FIND", criteria={"identifier": f"{mrn[0]}|{mrn[1]}"})
    assert (found["status"], found["effect"], found["resource_ids"]) == ("SUCCEEDED", "MATCHED", [new_id])

    nothing = await epic.sink.run("Patient", "FIND", criteria={"identifier": "urn:oid:1.2.3|does-not-exist"})
    assert (nothing["status"], nothing["resource_ids"], nothing["error"]) == ("NOT_FOUND", [], None)

    seq = epic.last_seq()
    matched = await epic.sink.run(
        "Patient",
        "ENSURE",
        criteria={"identifier": f"{mrn[0]}|{mrn[1]}"},
        fields={"family_name": "Okafor", "given_names": ["Ada"]},
    )
    assert (matched["status"], matched["effect"], matched["resource_ids"]) == (
        "SUCCEEDED",
        "MATCHED",
        [new_id],
    )
    assert epic.posts(seq) == []  # matched: nothing created

    ensured = await epic.sink.run(
        "Patient",
        "ENSURE",
        criteria={"identifier": "urn:oid:2.16.840.1.113883.4.1|999-00-1234"},
        fields={
            "family_name": "Novak",
            "identifiers": [{"system": "urn:oid:2.16.840.1.113883.4.1", "value": "999-00-1234"}],
        },
    )
    assert (ensured["status"], ensured["effect"]) == ("SUCCEEDED", "CREATED")
    assert epic.count("Patient") == before + 2
    again = await epic.sink.run(
        "Patient",
        "ENSURE",
        criteria={"identifier": "urn:oid:2.16.840.1.113883.4.1|999-00-1234"},
        fields={"family_name": "Novak"},
    )
    assert (again["effect"], again["resource_ids"]) == ("MATCHED", ensured["resource_ids"])
    assert epic.count("Patient") == before + 2


async def test_patient_create_from_resource_json_on_epic(epic: Env) -> None:
    resource = {
        "resourceType": "Patient",
        "name": [{"family": "Reyes", "given": ["Luz"]}],
        "identifier": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14", "value": "555001"}],
    }
    result = await epic.sink.run("Patient", "CREATE", resource_json=json.dumps(resource))
    assert (result["status"], result["effect"]) == ("SUCCEEDED", "CREATED")
    [patient] = resources_of(result)
    assert mrn_of(patient) == ("urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14", "555001")


async def test_ensure_with_several_matches_fails_with_the_ids_and_creates_nothing(epic: Env) -> None:
    for _ in range(2):
        epic.sim.admin.post(
            "/admin/resources/Patient",
            json={
                "resourceType": "Patient",
                "name": [{"family": "Twin", "given": ["Sam"]}],
                "birthDate": "1990-01-01",
            },
        ).raise_for_status()
    before = epic.count("Patient")
    result = await epic.sink.run(
        "Patient",
        "ENSURE",
        criteria={"family": "Twin", "given": "Sam", "birthdate": "1990-01-01"},
        fields={"family_name": "Twin", "given_names": ["Sam"], "birth_date": dt.date(1990, 1, 1)},
    )
    assert result["status"] == "FAILED"
    assert len(result["resource_ids"]) == 2
    assert "2 Patient resources match" in result["error"]["message"]
    assert epic.count("Patient") == before


# -- Observation -----------------------------------------------------------------------------------------
async def test_observation_create_find_and_ensure_on_epic(epic: Env) -> None:
    encounter = encounter_of(epic.sim, epic.patient)
    at = dt.datetime(2031, 1, 2, 10, 0, tzinfo=dt.UTC)
    before = epic.count("Observation")
    created = await epic.sink.run("Observation", "CREATE", fields=bp_fields(epic.patient, at, encounter))
    assert (created["status"], created["effect"]) == ("SUCCEEDED", "CREATED"), created["error"]
    [obs] = resources_of(created)
    assert obs["code"]["coding"][0]["code"] == "85354-9" and len(obs["component"]) == 2
    assert epic.count("Observation") == before + 1

    criteria = {"patient": epic.patient, "code": "85354-9", "date": "eq2031-01-02T10:00:00Z"}
    found = await epic.sink.run("Observation", "FIND", criteria=criteria)
    assert (found["status"], found["resource_ids"]) == ("SUCCEEDED", created["resource_ids"])

    matched = await epic.sink.run(
        "Observation", "ENSURE", criteria=criteria, fields=bp_fields(epic.patient, at)
    )
    assert (matched["effect"], matched["resource_ids"]) == ("MATCHED", created["resource_ids"])

    later = dt.datetime(2031, 1, 3, 10, 0, tzinfo=dt.UTC)
    ensured = await epic.sink.run(
        "Observation",
        "ENSURE",
        criteria={**criteria, "date": "eq2031-01-03T10:00:00Z"},
        fields=bp_fields(epic.patient, later),
    )
    assert ensured["effect"] == "CREATED"
    assert epic.count("Observation") == before + 2


async def test_observation_find_follows_every_page_and_says_when_the_cap_cut_it(epic: Env) -> None:
    criteria = {"patient": epic.patient, "category": "vital-signs", "_count": "2"}
    total = epic.sim.sim.store.scalar(
        "SELECT count(*) FROM resources WHERE type='Observation' AND patient=? AND category='vital-signs'",
        (epic.patient,),
    )
    assert total > 4
    found = await epic.sink.run("Observation", "FIND", criteria=criteria)
    assert found["status"] == "SUCCEEDED"
    assert len(found["resource_ids"]) == min(total, 2 * epic.sink.harness.config.sink.find_max_pages)
    assert len(set(found["resource_ids"])) == len(found["resource_ids"])
    assert found["truncated"] == (total > 20)


# -- DocumentReference ---------------------------------------------------------------------------------
async def test_document_reference_create_find_and_ensure_on_epic(epic: Env) -> None:
    encounter = encounter_of(epic.sim, epic.patient)
    note = {
        "patient_id": epic.patient,
        "encounter_id": encounter,
        "note_text": "Seen today. Doing well.",
        "date": dt.datetime(2031, 2, 3, 9, 30, tzinfo=dt.UTC),
    }
    created = await epic.sink.run("DocumentReference", "CREATE", fields=note)
    assert (created["status"], created["effect"]) == ("SUCCEEDED", "CREATED"), created["error"]
    [doc] = resources_of(created)
    assert doc["context"]["encounter"][0]["reference"] == f"Encounter/{encounter}"

    criteria = {"patient": epic.patient, "date": "eq2031-02-03T09:30:00Z"}
    found = await epic.sink.run("DocumentReference", "FIND", criteria=criteria)
    assert found["resource_ids"] == created["resource_ids"]
    matched = await epic.sink.run("DocumentReference", "ENSURE", criteria=criteria, fields=note)
    assert (matched["effect"], matched["resource_ids"]) == ("MATCHED", created["resource_ids"])
    other = {**note, "date": dt.datetime(2031, 2, 4, 9, 30, tzinfo=dt.UTC)}
    ensured = await epic.sink.run(
        "DocumentReference", "ENSURE", criteria={**criteria, "date": "eq2031-02-04T09:30:00Z"}, fields=other
    )
    assert ensured["effect"] == "CREATED"

    seq = epic.last_seq()
    no_encounter = await epic.sink.run("DocumentReference", "CREATE", fields={**note, "encounter_id": None})
    assert no_encounter["status"] == "REJECTED"
    assert "context.encounter" in no_encounter["error"]["message"]
    assert epic.posts(seq) == []  # refused before any request


# -- Encounter -----------------------------------------------------------------------------------------------
async def test_encounter_create_is_rejected_on_epic_and_find_works(epic: Env) -> None:
    seq = epic.last_seq()
    create = await epic.sink.run(
        "Encounter", "CREATE", fields={"patient_id": epic.patient, "class_code": "AMB"}
    )
    assert create["status"] == "REJECTED"
    assert "Epic does not allow creating an Encounter" in create["error"]["message"]
    assert create["error"]["http_status"] is None  # never a raw 405
    ensure = await epic.sink.run(
        "Encounter", "ENSURE", criteria={"patient": epic.patient}, fields={"patient_id": epic.patient}
    )
    assert ensure["status"] == "REJECTED"
    assert epic.posts(seq) == []

    found = await epic.sink.run("Encounter", "FIND", criteria={"patient": epic.patient})
    assert found["status"] == "SUCCEEDED"
    expected = {r.id for r in epic.sim.sim.store.query(ENCOUNTERS_SQL, (epic.patient,))}
    assert set(found["resource_ids"]) == expected


# -- Appointment -------------------------------------------------------------------------------------------
async def test_appointment_create_through_find_and_book_on_epic(epic: Env) -> None:
    day = next_weekday(dt.date(2031, 3, 1))
    start = dt.datetime.combine(day, dt.time(9, 0), dt.UTC)
    seq = epic.last_seq()
    booked = await epic.sink.run(
        "Appointment",
        "CREATE",
        fields={
            "patient_id": epic.patient,
            "start": start,
            "end": start + dt.timedelta(hours=2),
            "note": "follow-up",
        },
    )
    assert (booked["status"], booked["effect"]) == ("SUCCEEDED", "CREATED"), booked["error"]
    [appointment] = resources_of(booked)
    assert appointment["status"] == "booked" and appointment["start"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    paths = [r["path"] for r in epic.posts(seq)]
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["$find", "$book"]  # no R4 create was tried
    assert all("/STU3/" in p for p in paths)

    criteria = {"patient": epic.patient, "date": f"eq{appointment['start']}"}
    found = await epic.sink.run("Appointment", "FIND", criteria=criteria)
    assert found["resource_ids"] == booked["resource_ids"]
    matched = await epic.sink.run(
        "Appointment", "ENSURE", criteria=criteria, fields={"patient_id": epic.patient, "start": start}
    )
    assert (matched["effect"], matched["resource_ids"]) == ("MATCHED", booked["resource_ids"])
    next_day = start + dt.timedelta(days=1)
    ensured = await epic.sink.run(
        "Appointment",
        "ENSURE",
        criteria={"patient": epic.patient, "date": f"eq{next_day.strftime('%Y-%m-%dT%H:%M:%SZ')}"},
        fields={"patient_id": epic.patient, "start": next_day},
    )
    assert ensured["effect"] == "CREATED"
    no_slot = await epic.sink.run(
        "Appointment",
        "CREATE",
        fields={"patient_id": epic.patient, "start": start, "end": start + dt.timedelta(minutes=30)},
    )
    assert no_slot["status"] == "FAILED" and "no free slot" in no_slot["error"]["message"]


# -- the generic profile: plain FHIR create for all five --------------------------------------------------
async def test_create_all_five_on_a_generic_server(generic: Env) -> None:
    patient, when = generic.patient, dt.datetime(2031, 4, 7, 14, 0, tzinfo=dt.UTC)
    encounter = encounter_of(generic.sim, patient)
    commands = {
        "Patient": {"family_name": "Generic", "given_names": ["Gene"]},
        "Appointment": {"patient_id": patient, "start": when, "end": when + dt.timedelta(minutes=30)},
        "Encounter": {"patient_id": patient, "class_code": "AMB", "period_start": when},
        "Observation": bp_fields(patient, when),
        "DocumentReference": {"patient_id": patient, "encounter_id": encounter, "note_text": "note"},
    }
    seq = generic.last_seq()
    sent = {rtype: generic.sink.send(rtype, "CREATE", fields=fields) for rtype, fields in commands.items()}
    for rtype, record in sent.items():
        result = await generic.sink.result_of(record)
        assert (result["status"], result["effect"]) == ("SUCCEEDED", "CREATED"), (rtype, result["error"])
        [resource] = resources_of(result)
        assert resource["resourceType"] == rtype and resource["id"] == result["resource_ids"][0]
    posts = sorted(r["path"].rsplit("/", 1)[-1] for r in generic.posts(seq))
    assert posts == sorted(commands)  # one plain R4 create each, no $find/$book
    reads = [r for r in generic.fhir_requests(seq) if r["method"] == "GET" and "metadata" not in r["path"]]
    assert reads == []  # the generic server answers with the body: nothing to read back


async def test_the_sink_counts_commands_dead_letters_and_lag(
    epic_sim_factory: Any, tmp_path: Path, kafka_bootstrap: str, registry_url: str
) -> None:
    from prometheus_client import CollectorRegistry

    from bridge.metrics import Metrics

    registry = CollectorRegistry()
    sim = epic_sim_factory(profile="epic", patients=1, seed=2, short_page_rate=0)
    config = write_connection(sim, tmp_path / "cfg", "metrics")
    sink = await start_sink(
        config, kafka_context(kafka_bootstrap, registry_url, tmp_path / "state"), Metrics(registry)
    )
    try:
        patient = sim.sim.store.ids("Patient", limit=1)[0]
        await sink.run("Patient", "FIND", criteria={"_id": patient})
        sink.harness.send_raw("Patient", b"garbage")
        await sink.harness.wait_for(lambda: len(sink.harness.dead) == 1, task=sink.task)
        await asyncio.sleep(5.5)  # lag is reported every 5 s
        labels = {"connection": "metrics", "resource": "patient", "action": "FIND", "status": "SUCCEEDED"}
        assert registry.get_sample_value("epic_bridge_commands_total", labels) == 1
        assert (
            registry.get_sample_value(
                "epic_bridge_dlq_records_total", {"connection": "metrics", "reason": "undecodable"}
            )
            == 1
        )
        topic = sink.harness.topic_of("Patient")
        assert (
            registry.get_sample_value(
                "epic_bridge_command_consumer_lag_records", {"connection": "metrics", "topic": topic}
            )
            == 0
        )
    finally:
        await sink.close()
