"""Polling behaviour against the simulator: only supported parameters reach Epic, initial sync modes,
roster variants, and a failing patient that is retried without holding up the others."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from source_support import (
    RESOURCES,
    SourceRun,
    connection_config,
    kafka_context,
    read_all_events,
    sim_read,
    sim_resources,
    sim_update,
    topic_of,
)

from bridge.config.models import ConnectionConfig
from bridge.kafka.topics import offsets_topic, state_topic, topic_config

pytestmark = pytest.mark.integration

MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"


def all_events(
    kafka_bootstrap: str, registry: SchemaRegistryClient, cfg: ConnectionConfig, expect: int = 0
) -> dict[str, list[dict[str, Any]]]:
    found = read_all_events(kafka_bootstrap, registry, [topic_of(cfg, r) for r in RESOURCES], expect)
    return {r: found[topic_of(cfg, r)] for r in RESOURCES}


def patient_of(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    ref = resource.get("subject") or resource["participant"][0]["actor"]
    return str(ref["reference"]).split("/")[-1]


def sim_ids_by_patient(sim: Any, patients: set[str]) -> dict[str, set[str]]:
    """What the simulator holds for these patients, per resource type."""
    out: dict[str, set[str]] = {}
    for rtype in RESOURCES:
        out[rtype] = {
            rid for rid in sim_resources(sim, rtype) if patient_of(sim_read(sim, rtype, rid)) in patients
        }
    return out


def capability_params(sim: Any) -> dict[str, set[str]]:
    statement = httpx.get(sim.fhir_base + "metadata", headers={"Accept": "application/fhir+json"}).json()
    return {
        r["type"]: {p["name"] for p in r.get("searchParam", [])}
        for rest in statement["rest"]
        for r in rest["resource"]
    }


def test_only_supported_search_parameters_reach_epic(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    registry_url: str,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    sim = epic_sim_factory(profile="epic", patients=3, seed=3)
    supported = capability_params(sim)
    # every kind of query: Patient by _id, categories, _lastUpdated (DocumentReference), a date window
    cfg = connection_config(
        sim,
        tmp_path,
        prefix=unique_name("src"),
        initial_sync="from-now",
        source={"page_size": 5, "date_window_days": 400, "full_scan_interval_s": 3600},
        resources={
            "Patient": {},
            "Appointment": {},
            "Encounter": {},
            "Observation": {"categories": ["vital-signs", "laboratory", "social-history"]},
            "DocumentReference": {"categories": ["clinical-note"]},
        },
    )
    run = SourceRun(cfg, kafka_context(kafka_bootstrap, registry_url, tmp_path / "state"))
    try:
        run.cycles(2)  # the initial sync, then an incremental cycle (date window, _lastUpdated bounds)
    finally:
        run.close()

    searches = [
        r
        for r in sim.requests()
        if r["method"] == "GET" and "/api/FHIR/R4/" in r["path"] and r["path"].rsplit("/", 1)[-1] in RESOURCES
    ]
    assert searches, "no searches were logged"
    sent: dict[str, set[str]] = collections.defaultdict(set)
    for request in searches:
        rtype = request["path"].rsplit("/", 1)[-1]
        names = set(request["query"])
        if names == {"sessionID"}:  # an opaque next link, followed exactly as the server gave it
            continue
        unsupported = names - supported[rtype]
        assert not unsupported, f"{rtype}: sent unsupported {unsupported} in {request['query']}"
        assert request["status"] == 200, request
        if rtype == "Patient":
            assert "_id" in names  # Epic forbids unanchored Patient searches
        else:
            assert "patient" in names  # every clinical search is anchored to a patient
        if rtype == "Observation":
            assert "category" in names  # Epic: "Must have either code or category"
        sent[rtype] |= names
    assert "_lastUpdated" in sent["DocumentReference"]
    assert all("date" in sent[r] for r in ("Appointment", "Encounter", "Observation", "DocumentReference"))
    assert all("_count" in sent[r] for r in RESOURCES)
    assert not any(r["status"] >= 400 for r in sim.requests() if "/api/FHIR/" in r["path"])


def test_snapshot_emits_what_exists_and_from_now_records_it_silently(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    sim = epic_sim_factory(profile="epic", patients=3, seed=4)
    kafka = kafka_context(kafka_bootstrap, registry_url, tmp_path / "state")
    prefix = unique_name("src")
    snap = connection_config(sim, tmp_path, name="snap", prefix=prefix, initial_sync="snapshot")
    quiet = connection_config(sim, tmp_path, name="quiet", prefix=prefix, initial_sync="from-now")
    runs = [SourceRun(snap, kafka), SourceRun(quiet, kafka)]
    try:
        for run in runs:
            run.cycles(1)
        everything = {r: set(sim_resources(sim, r)) for r in RESOURCES}
        snapshot = all_events(kafka_bootstrap, schema_registry, snap, sum(map(len, everything.values())))
        for rtype in RESOURCES:
            assert sorted(e["resource_id"] for e in snapshot[rtype]) == sorted(everything[rtype])
            assert {e["trigger"] for e in snapshot[rtype]} == {"CREATED"}
        assert all(v == [] for v in all_events(kafka_bootstrap, schema_registry, quiet).values())
        # created on start: compacted internal topics, event subjects pinned to BACKWARD
        admin = kafka.admin
        for internal in (state_topic(prefix), offsets_topic(prefix)):
            assert topic_config(admin, internal)["cleanup.policy"] == "compact"
        for rtype in RESOURCES:
            assert schema_registry.get_compatibility(f"{topic_of(snap, rtype)}-value") == "BACKWARD"

        encounter = sim_read(sim, "Encounter", sim_resources(sim, "Encounter")[0])
        encounter["status"] = "cancelled"
        sim_update(sim, encounter)
        for run in runs:
            run.cycles(1)
        after = all_events(kafka_bootstrap, schema_registry, snap)
        assert [
            (e["resource_id"], e["trigger"]) for e in after["Encounter"] if e["trigger"] == "UPDATED"
        ] == [(encounter["id"], "UPDATED")]
        assert sum(map(len, after.values())) == sum(map(len, snapshot.values())) + 1
        quiet_events = all_events(kafka_bootstrap, schema_registry, quiet, 1)
        assert [(e["resource_id"], e["trigger"]) for v in quiet_events.values() for e in v] == [
            (encounter["id"], "UPDATED")
        ]
    finally:
        for run in runs:
            run.close()


def _roster_events(
    sim: Any,
    roster: dict[str, Any],
    kafka_bootstrap: str,
    registry_url: str,
    registry: SchemaRegistryClient,
    prefix: str,
    folder: Path,
) -> dict[str, set[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = connection_config(sim, folder, prefix=prefix, roster=roster, initial_sync="snapshot")
    run = SourceRun(cfg, kafka_context(kafka_bootstrap, registry_url, folder / "state"))
    try:
        run.cycles(1)
    finally:
        run.close()
    return {r: {e["resource_id"] for e in v} for r, v in all_events(kafka_bootstrap, registry, cfg).items()}


@pytest.mark.parametrize("variant", ["static-ids", "static-mrns", "group"])
def test_roster_variants_scan_exactly_their_patients(
    variant: str,
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    sim = epic_sim_factory(profile="epic", patients=6, seed=9)
    # the public sandbox patients come first in the simulator's data
    lin, lopez = "eq081-VQEgP8drUUqCWzHfw3", "erXuFYUfucBZaryVksYEcMg3"
    rosters: dict[str, tuple[dict[str, Any], set[str]]] = {
        "static-ids": ({"source": "static", "patient_ids": [lopez, "no-such-patient"]}, {lopez}),
        "static-mrns": (
            {"source": "static", "mrns": ["203711", "203713", "999999"], "mrn_system": MRN_SYSTEM},
            {lin, lopez},
        ),
        "group": (
            {"source": "group", "group_id": sim.stats()["sandbox_group"]},
            {
                m["entity"]["reference"].split("/")[-1]
                for m in sim_read(sim, "Group", sim.stats()["sandbox_group"])["member"]
            },
        ),
    }
    roster, patients = rosters[variant]
    got = _roster_events(
        sim, roster, kafka_bootstrap, registry_url, schema_registry, unique_name("src"), tmp_path
    )
    assert got == sim_ids_by_patient(sim, patients)
    assert all(got[r] for r in RESOURCES)


def test_seen_patients_roster_follows_the_patients_already_tracked(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """A connection first run with a static roster, then switched to `seen-patients`: it keeps polling
    the patients on its Patient stream (rebuilt from the `_state` topic, not from the config)."""
    sim = epic_sim_factory(profile="epic", patients=5, seed=10)
    lopez = "erXuFYUfucBZaryVksYEcMg3"
    prefix = unique_name("src")
    first = _roster_events(
        sim,
        {"source": "static", "patient_ids": [lopez]},
        kafka_bootstrap,
        registry_url,
        schema_registry,
        prefix,
        tmp_path / "a",
    )
    assert first["Patient"] == {lopez}
    appointment = next(
        a for a in sim_resources(sim, "Appointment") if patient_of(sim_read(sim, "Appointment", a)) == lopez
    )
    changed = sim_read(sim, "Appointment", appointment)
    changed["status"] = "noshow"
    sim_update(sim, changed)
    other = next(
        a for a in sim_resources(sim, "Appointment") if patient_of(sim_read(sim, "Appointment", a)) != lopez
    )
    changed_other = sim_read(sim, "Appointment", other)
    changed_other["status"] = "noshow"
    sim_update(sim, changed_other)

    (tmp_path / "b").mkdir()
    cfg = connection_config(
        sim, tmp_path / "b", prefix=prefix, roster={"source": "seen-patients"}, initial_sync="snapshot"
    )
    run = SourceRun(
        cfg, kafka_context(kafka_bootstrap, registry_url, tmp_path / "b" / "state")
    )  # fresh cache
    try:
        run.cycles(1)
    finally:
        run.close()
    events = all_events(kafka_bootstrap, schema_registry, cfg)
    updates = [
        (e["resource_id"], e["trigger"]) for v in events.values() for e in v if e["trigger"] == "UPDATED"
    ]
    assert updates == [(appointment, "UPDATED")]  # the other patient is not on the roster


def test_a_failing_patient_is_retried_and_reported_without_blocking_the_others(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = epic_sim_factory(profile="epic", patients=4, seed=12)
    cfg = connection_config(
        sim,
        tmp_path,
        prefix=unique_name("src"),
        initial_sync="snapshot",
        source={"patient_retries": 2, "patient_retry_delay_s": 0.2},
    )
    cfg = cfg.model_copy(update={"retry": cfg.retry.model_copy(update={"max_attempts": 1})})
    # the first two Encounter searches fail (the client itself does not retry: max_attempts 1): the
    # first two patients fail, the others go on, and the two come through on the retry pass
    sim.set_faults(rules=[{"kind": "500", "resource": "Encounter", "count": 2}])
    run = SourceRun(cfg, kafka_context(kafka_bootstrap, registry_url, tmp_path / "state"))
    caplog.set_level(logging.INFO, logger="bridge.source")
    try:
        run.cycles(1)
    finally:
        run.close()
    encounters = {e["resource_id"] for e in all_events(kafka_bootstrap, schema_registry, cfg)["Encounter"]}
    assert encounters == set(sim_resources(sim, "Encounter"))
    messages = [r.getMessage() for r in caplog.records if "sim/encounter" in r.getMessage()]
    failures = [m for m in messages if "failed (attempt 1)" in m]
    assert len(failures) == 2
    assert any("retrying 2 failed patient(s)" in m for m in messages)
    assert not any("still failing" in m for m in messages)

    # patients that keep failing are reported and left for the next cycle; the other tasks go on
    sim.set_faults(rules=[{"kind": "500", "resource": "Encounter", "count": 1000}])
    encounter = sim_read(sim, "Encounter", sim_resources(sim, "Encounter")[-1])
    encounter["status"] = "cancelled"
    sim_update(sim, encounter)
    appointment = sim_read(sim, "Appointment", sim_resources(sim, "Appointment")[-1])
    appointment["status"] = "noshow"
    sim_update(sim, appointment)
    caplog.clear()
    run = SourceRun(cfg, kafka_context(kafka_bootstrap, registry_url, tmp_path / "state"))
    try:
        run.cycles(1)
        assert any("4 patient(s) still failing after 2 retries" in r.getMessage() for r in caplog.records)
        events = all_events(kafka_bootstrap, schema_registry, cfg)
        assert [e["resource_id"] for e in events["Appointment"] if e["trigger"] == "UPDATED"] == [
            appointment["id"]
        ]
        assert [e for e in events["Encounter"] if e["trigger"] == "UPDATED"] == []
        sim.clear_faults()
        run.cycles(1)  # the next cycle catches up
    finally:
        run.close()
    events = all_events(kafka_bootstrap, schema_registry, cfg)
    assert [e["resource_id"] for e in events["Encounter"] if e["trigger"] == "UPDATED"] == [encounter["id"]]
