"""The ledger's window and what it keeps; results made to fit a Kafka record; the result schema."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro

from bridge.kafka.avro import load_schema
from bridge.kafka.table import CompactedTable
from bridge.kafka.txn import Record
from bridge.sink.fit import fit_result
from bridge.sink.ledger import DAY_MS, CommandLedger


def committed(table: CompactedTable, records: list[Record]) -> None:
    """Apply records to the cache as the transaction helper does once they committed."""
    offset = len(table) + 100
    table.apply((r.key or b"", r.value, 0, offset + n) for n, r in enumerate(records))


def _result(**over: Any) -> dict[str, Any]:
    base = {
        "command_id": "c1",
        "correlation_id": None,
        "connection": "conn",
        "resource_type": "Patient",
        "action": "FIND",
        "status": "SUCCEEDED",
        "effect": "MATCHED",
        "resource_ids": ["p1"],
        "resources_json": ['{"resourceType":"Patient","id":"p1","name":[{"family":"Secret"}]}'],
        "truncated": False,
        "partial": False,
        "warnings": [],
        "error": None,
        "attempts": 1,
        "replayed": False,
        "received_at": 1,
        "completed_at": 2,
    }
    return {**base, **over}


def test_the_ledger_keeps_no_resources_and_forgets_after_its_window(tmp_path: Path) -> None:
    now = [1_000 * DAY_MS]
    table = CompactedTable({}, "ledger", tmp_path / "ledger.db")
    ledger = CommandLedger(table, "conn", window_days=2, clock_ms=lambda: now[0])
    result = ledger.result("c1", _result(), ("t.commands", 0, 7))
    committed(table, [result])
    assert result.value is not None and b"Secret" not in result.value
    replay = ledger.lookup(["c1"])["c1"].result
    assert replay is not None and replay["resource_ids"] == ["p1"] and replay["resources_json"] == []
    assert "read the 1 resource(s) by id" in replay["warnings"][0]

    committed(table, [ledger.marker("Observation", False)])
    now[0] += 3 * DAY_MS
    assert ledger.lookup(["c1"]) == {}  # past the window: a re-sent id runs again
    assert ledger.prune() == 1
    assert ledger.count() == 1  # the marker observation stays
    assert ledger.marker_kept("Observation") is False and ledger.markers() == {"Observation": False}
    table.close()


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def test_a_result_that_fits_is_left_alone() -> None:
    result = _result()
    assert fit_result(result, _encode, 1_000_000) == (result, _encode(result))


def test_a_large_result_loses_its_resources_then_ids_then_becomes_failed() -> None:
    big = _result(resources_json=["x" * 50_000], resource_ids=[f"id{i}" for i in range(10)])
    fitted, value = fit_result(big, _encode, 20_000)
    assert fitted["resources_json"] == [] and fitted["resource_ids"] == big["resource_ids"]
    assert fitted["truncated"] and len(value) <= 20_000 - 4096
    many = _result(resources_json=[], resource_ids=[f"id-{i:08d}" for i in range(20_000)])
    fitted, value = fit_result(many, _encode, 100_000)
    assert 0 < len(fitted["resource_ids"]) < 20_000 and fitted["status"] == "SUCCEEDED"
    assert any("ids listed" in w for w in fitted["warnings"])
    huge_error = _result(
        status="FAILED", resource_ids=[], resources_json=[], warnings=["w" * 100_000] * 30, error=None
    )
    fitted, value = fit_result(huge_error, _encode, 10_000)
    assert fitted["status"] == "FAILED" and "too large" in fitted["error"]["message"]
    assert len(value) <= 10_000


def test_the_result_schema_reads_results_written_before_partial_and_warnings() -> None:
    new = json.loads(load_schema("command_result.avsc"))
    old = {**new, "fields": [f for f in new["fields"] if f["name"] not in ("partial", "warnings")]}
    buffer = io.BytesIO()
    record = {k: v for k, v in _result().items() if k not in ("partial", "warnings")}
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(old), record)
    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, fastavro.parse_schema(old), fastavro.parse_schema(new))
    assert read["partial"] is False and read["warnings"] == []  # type: ignore[index,call-overload]
