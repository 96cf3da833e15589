"""Partial answers on the sink side: a 200 search Bundle with Epic's 59204 warning. A find says it is partial;
an ensure never creates on a partial "no match" (the patient may well exist, hidden from this client)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sink_support import kafka_context, mrn_of, start_sink, write_connection

from bridge.metrics import Metrics

pytestmark = pytest.mark.integration


async def test_find_says_partial_and_ensure_does_not_create_on_a_partial_no_match(
    epic_sim_factory: Any, tmp_path: Path, kafka_bootstrap: str, registry_url: str
) -> None:
    sim = epic_sim_factory(profile="epic", patients=2, seed=4, short_page_rate=0)
    config = write_connection(sim, tmp_path / "cfg", "partial")
    registry = CollectorRegistry()
    sink = await start_sink(
        config, kafka_context(kafka_bootstrap, registry_url, tmp_path / "state"), Metrics(registry)
    )
    try:
        patient = json.loads(sim.sim.store.get("Patient", sim.sim.store.ids("Patient", limit=1)[0]).json)
        system, mrn = mrn_of(patient)  # type: ignore[misc]
        criteria = {"identifier": f"{system}|{mrn}"}

        rule = {"client_id": config.auth.client_id, "resource": "Patient"}
        sim.admin.put("/admin/partial", json={"rules": [rule]}).raise_for_status()
        found = await sink.run("Patient", "FIND", criteria=criteria)
        assert (found["status"], found["resource_ids"], found["partial"]) == (
            "SUCCEEDED",
            [patient["id"]],
            True,
        )
        assert any(w.startswith("59204: ") for w in found["warnings"]), found["warnings"]

        sim.admin.put("/admin/partial", json={"rules": [{**rule, "hide": True}]}).raise_for_status()
        patients = sim.sim.store.count("Patient")
        ensured = await sink.run(
            "Patient", "ENSURE", criteria=criteria, fields={"family_name": "Hidden", "given_names": ["Not"]}
        )
        assert (ensured["status"], ensured["effect"], ensured["partial"]) == ("FAILED", "NONE", True)
        assert ensured["error"]["epic_code"] == "59204" and "partial" in ensured["error"]["message"]
        assert sim.sim.store.count("Patient") == patients  # nothing created

        sim.admin.delete("/admin/partial").raise_for_status()
        whole = await sink.run("Patient", "ENSURE", criteria=criteria, fields={"family_name": "X"})
        assert (whole["effect"], whole["resource_ids"], whole["partial"]) == (
            "MATCHED",
            [patient["id"]],
            False,
        )
        labels = {"connection": "partial", "side": "sink", "resource": "patient", "code": "59204"}
        assert registry.get_sample_value("epic_bridge_partial_answers_total", labels) == 2
    finally:
        await sink.close()
