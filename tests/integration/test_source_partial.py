"""A partial answer (a 200 Bundle with Epic's 59204 warning) is not the truth for a patient: the scan counts
as failed, no per-patient mark moves past it, and the change it hid is published once the answer is whole."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from source_support import (
    SourceRun,
    connection_config,
    kafka_context,
    read_events,
    sim_read,
    sim_resources,
    sim_update,
    topic_of,
)

pytestmark = pytest.mark.integration


def test_a_partial_answer_moves_no_mark_and_the_hidden_change_is_published_later(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = epic_sim_factory(profile="epic", patients=2, seed=21)
    cfg = connection_config(
        sim,
        tmp_path,
        prefix=unique_name("src"),
        resources={"DocumentReference": {}},
        # no overlap: a mark moved past the change would hide it for good
        source={"last_updated_overlap_s": 0, "patient_retries": 0},
    )
    run = SourceRun(cfg, kafka_context(kafka_bootstrap, registry_url, tmp_path / "state"))
    try:
        run.cycles(1)
        document = sim_read(sim, "DocumentReference", sim_resources(sim, "DocumentReference")[0])
        document["description"] = "amended"
        sim_update(sim, document)
        time.sleep(1.5)  # the change is now older than the next cycle's start
        sim.admin.put(
            "/admin/partial",
            json={
                "rules": [{"client_id": cfg.auth.client_id, "resource": "DocumentReference", "hide": True}]
            },
        ).raise_for_status()
        caplog.set_level(logging.INFO, logger="bridge")
        run.cycles(1)
        partial = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{cfg.name}/")]
        partial = [m for m in partial if m.split(": ", 1)[1].startswith("partial answer")]
        assert partial and all("59204" in m and "DocumentReference" in m for m in partial)
        patient = document["subject"]["reference"].split("/")[-1]
        assert not any(patient in m or "authorized" in m for m in partial)  # code and type, no patient data

        sim.admin.delete("/admin/partial").raise_for_status()
        run.cycles(1)
    finally:
        run.close()
    events = read_events(kafka_bootstrap, schema_registry, topic_of(cfg, "DocumentReference"))
    assert [e["resource_id"] for e in events if e["trigger"] == "UPDATED"] == [document["id"]]
