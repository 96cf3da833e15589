"""The ground-truth log on its own: bounded memory, HL7 outcomes merged by seq, the file as written."""

from __future__ import annotations

import json
from pathlib import Path

from epic_sim.episodes.ground_truth import GroundTruth, canonical_digest, instant_ms


def test_records_outcomes_and_the_memory_bound(tmp_path: Path) -> None:
    path = tmp_path / "truth.jsonl"
    path.write_text("left over from an earlier run\n")
    truth = GroundTruth(str(path), keep=3)
    for seq in range(1, 6):
        truth.add({"seq": seq, "hl7_sent_at": None})
    truth.amend(5, {"hl7_sent_at": "2026-06-01T12:00:00.123Z", "hl7_ack": "AA"})
    truth.amend(1, {"hl7_dropped": True})  # no longer held in memory: only the file gets it
    assert [r["seq"] for r in truth.since(0, 100)] == [3, 4, 5]
    assert [r["seq"] for r in truth.since(3, 1)] == [4]
    assert truth.since(4, 10)[-1] == {"seq": 5, "hl7_sent_at": "2026-06-01T12:00:00.123Z", "hl7_ack": "AA"}
    truth.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5, 5, 1]
    assert lines[-1] == {"seq": 1, "hl7_dropped": True}


def test_digest_and_instant_formats() -> None:
    assert canonical_digest({"b": 1, "a": "é"}) == canonical_digest({"a": "é", "b": 1})
    assert len(canonical_digest({})) == 64
    assert instant_ms(1780315200.1234) == "2026-06-01T12:00:00.123Z"
