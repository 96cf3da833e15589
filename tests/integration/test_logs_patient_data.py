"""No patient data in the bridge's log lines: real poll cycles and real commands against the simulator,
with failures on the way, logged through the bridge's own handler at DEBUG (the bridge's loggers and
httpx/httpcore, which log every URL). No patient FHIR id, MRN or text of an OperationOutcome appears;
pseudonyms of the ids do, so lines about one patient still correlate. With EPIC_BRIDGE_LOG_PATIENT_DATA=1
the ids and Epic's text are there."""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sink_support import kafka_context as sink_kafka
from sink_support import start_sink, write_connection
from source_support import SourceRun, connection_config, kafka_context

from bridge.logs import log_handler, pseudonym

pytestmark = pytest.mark.integration

MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"
UNKNOWN_MRN = "990099"
EPIC_TEXT = "Injected HTTP 422"  # the OperationOutcome text the simulator answers the injected fault with
READ_BACK_TEXT = "Injected HTTP 400"
LOGGERS = ("bridge", "httpx", "httpcore")


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """The bridge's JSON handler on the root logger, everything at DEBUG."""
    stream = io.StringIO()
    handler = log_handler("json", stream)
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    root.addHandler(handler)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def run_flows(
    sim: Any, tmp_path: Path, bootstrap: str, registry_url: str, unique_name: Callable[[str], str]
) -> list[str]:
    """A poll cycle with failing patients and an unmatched MRN; a create whose read-back fails. Returns
    the FHIR ids of the patients involved."""
    patients = sim.sim.store.ids("Patient", limit=3)
    (tmp_path / "source").mkdir()
    sim.set_faults(rules=[{"kind": "status", "status": 422, "resource": "Encounter"}])
    roster = {"source": "static", "patient_ids": patients, "mrns": [UNKNOWN_MRN], "mrn_system": MRN_SYSTEM}
    cfg = connection_config(
        sim,
        tmp_path / "source",
        prefix=unique_name("logs"),
        roster=roster,
        resources={"Patient": {}, "Encounter": {}},
        source={"patient_retries": 0},
    )
    run = SourceRun(cfg, kafka_context(bootstrap, registry_url, tmp_path / "source-state"))
    try:
        run.cycles(1)
    finally:
        run.close()
        sim.clear_faults()

    async def create_with_a_failing_read_back() -> str:
        config = write_connection(sim, tmp_path / "sink", f"logs-{uuid.uuid4().hex[:6]}")
        sink = await start_sink(config, sink_kafka(bootstrap, registry_url, tmp_path / "sink-state"))
        try:
            sim.set_faults(
                rules=[{"kind": "status", "status": 400, "method": "GET", "path": r"/Patient/[^/]+$"}]
            )
            patient = {
                "resourceType": "Patient",
                "identifier": [{"system": MRN_SYSTEM, "value": "990100"}],
                "name": [{"family": "Logline", "given": ["Lena"]}],
                "gender": "female",
                "birthDate": "1980-01-02",
            }
            result = await sink.run("Patient", "CREATE", resource_json=patient)
            assert result["status"] == "SUCCEEDED", result
            return str(result["resource_ids"][0])
        finally:
            sim.clear_faults()
            await sink.close()

    created = asyncio.run(create_with_a_failing_read_back())
    return [*patients, created]


@pytest.mark.parametrize("switch", [False, True], ids=["default", "EPIC_BRIDGE_LOG_PATIENT_DATA=1"])
def test_no_patient_id_and_no_epic_text_in_any_log_line_unless_switched_on(
    switch: bool,
    epic_sim_factory: Any,
    lines: io.StringIO,
    tmp_path: Path,
    kafka_bootstrap: str,
    registry_url: str,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if switch:
        monkeypatch.setenv("EPIC_BRIDGE_LOG_PATIENT_DATA", "1")
    else:
        monkeypatch.delenv("EPIC_BRIDGE_LOG_PATIENT_DATA", raising=False)
    sim = epic_sim_factory(profile="epic", patients=4, seed=21, short_page_rate=0)
    ids = run_flows(sim, tmp_path, kafka_bootstrap, registry_url, unique_name)
    text = lines.getvalue()
    assert text.count("\n") > 50, "the run should have logged plenty"
    assert "failed (attempt 1)" in text and "could not read it back" in text  # the failures were logged
    if switch:
        assert all(pid in text for pid in ids)
        assert EPIC_TEXT in text and UNKNOWN_MRN in text
        return
    for pid in ids:
        assert pid not in text, f"patient id {pid} in the logs"
    for pid in ids[:3]:
        assert pseudonym(pid) in text  # the failing patients, still told apart
    assert pseudonym(ids[-1]) in text  # the created one
    assert UNKNOWN_MRN not in text
    assert EPIC_TEXT not in text and READ_BACK_TEXT not in text
