"""Recovering an interrupted create where the server drops the bridge's marker identifier.

Every create is read back and checked for the marker; what was seen is recorded per connection and resource
type in the ledger (it survives a restart) and in a metric. Where the marker is dropped, an interrupted
create is looked for by its natural key (Observation: patient + code + effective time); one match is the
earlier attempt's, several are answered FAILED with the candidates, and nothing is created a second time.
The simulator's switch that drops unknown identifier systems on create shows that path; Patient keeps the
marker on the same server and shows the other.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry
from sink_support import bp_fields, encounter_of, kafka_context, start_sink, write_connection

from bridge.metrics import Metrics
from bridge.sink.builders import build
from bridge.sink.ledger import ledger_key

pytestmark = pytest.mark.integration


def kept(registry: CollectorRegistry, resource: str) -> float | None:
    labels = {"connection": "marker", "resource": resource}
    return registry.get_sample_value("epic_bridge_create_marker_kept", labels)


async def test_a_dropped_marker_is_noticed_remembered_and_recovery_uses_the_natural_key(
    epic_sim_factory: Any, tmp_path: Path, kafka_bootstrap: str, registry_url: str
) -> None:
    sim = epic_sim_factory(
        profile="epic", patients=2, seed=5, short_page_rate=0, drop_unknown_identifiers=["Observation"]
    )
    config = write_connection(sim, tmp_path / "cfg", "marker")
    kafka = kafka_context(kafka_bootstrap, registry_url, tmp_path / "state")
    patient = sim.sim.store.ids("Patient", limit=1)[0]
    encounter = encounter_of(sim, patient)
    first_registry = CollectorRegistry()
    sink = await start_sink(config, kafka, Metrics(first_registry))
    try:
        at = dt.datetime(2031, 3, 4, 9, 30, tzinfo=dt.UTC)
        created = await sink.run("Observation", "CREATE", fields=bp_fields(patient, at, encounter))
        assert created["effect"] == "CREATED"
        person = await sink.run(
            "Patient",
            "CREATE",
            fields={"family_name": "Marked", "given_names": ["Kept"], "birth_date": "1990-01-02"},
        )
        assert person["effect"] == "CREATED"
        assert (kept(first_registry, "observation"), kept(first_registry, "patient")) == (0, 1)
    finally:
        await sink.close()

    # What interrupted creates leave behind: intents without results, and what Epic created (no marker).
    recovered_at = dt.datetime(2031, 3, 5, 8, 0, tzinfo=dt.UTC)
    twice_at = dt.datetime(2031, 3, 6, 8, 0, tzinfo=dt.UTC)
    earlier = [
        sim.admin.post(
            "/admin/resources/Observation", json=build("Observation", bp_fields(patient, when, encounter))
        ).json()["id"]
        for when in (recovered_at, twice_at, twice_at)
    ]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for command_id in ("obs-crashed", "obs-ambiguous"):
        producer.produce(
            sink.harness.topics.ledger,
            key=ledger_key(config.name, command_id),
            value=b'{"state":"intent","at":0}',
        )
    assert producer.flush(10) == 0

    second_registry = CollectorRegistry()
    sink = await start_sink(config, kafka, Metrics(second_registry))  # a restart: knowledge from the ledger
    try:
        observations = sim.sim.store.count("Observation")
        recovered = await sink.run(
            "Observation",
            "CREATE",
            command_id="obs-crashed",
            fields=bp_fields(patient, recovered_at, encounter),
        )
        assert (recovered["status"], recovered["effect"], recovered["resource_ids"]) == (
            "SUCCEEDED",
            "CREATED",
            [earlier[0]],
        )
        assert kept(second_registry, "observation") == 0  # from the ledger: no create was read back
        ambiguous = await sink.run(
            "Observation",
            "CREATE",
            command_id="obs-ambiguous",
            fields=bp_fields(patient, twice_at, encounter),
        )
        assert ambiguous["status"] == "FAILED", ambiguous
        assert all(rid in ambiguous["error"]["message"] for rid in earlier[1:])
        assert sim.sim.store.count("Observation") == observations  # nothing created a second time
    finally:
        await sink.close()
