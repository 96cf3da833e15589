"""The ground-truth log: what changed, when it became readable, and what a FHIR read returns since.

One JSON object per line, appended as each change is committed, so a benchmark can tail the file while
the simulator runs. An HL7 outcome arrives later than its change and is written as a further line with
the same `seq` and only the `hl7_*` fields: a reader merges lines by `seq` (later fields win). The
admin API serves the merged records, the most recent `keep` of them.

`digest` is SHA-256 over the canonical JSON of the resource exactly as a FHIR read returns it after
the change (`json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`, UTF-8),
so an event carrying the resource tells which change it reflects.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from datetime import UTC, datetime
from typing import IO, Any

from epic_sim.config import Profile
from epic_sim.render import resource_text
from epic_sim.store import StoredRow

log = logging.getLogger("epic_sim.ground_truth")


def canonical_digest(resource: Any) -> str:
    canonical = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_digest(row: StoredRow, profile: Profile) -> str:
    """The digest of what a FHIR read of this stored row answers under the profile."""
    return canonical_digest(json.loads(resource_text(row, profile)))


def instant_ms(epoch_s: float) -> str:
    """UTC instant with millisecond precision, e.g. 2026-06-01T12:00:00.123Z."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class GroundTruth:
    def __init__(self, path: str | None, *, keep: int) -> None:
        self.path = path
        self.last_seq = 0
        self._keep = keep
        self._records: dict[int, dict[str, Any]] = {}
        self._order: deque[int] = deque()
        self._file: IO[str] | None = open(path, "w", encoding="utf-8") if path else None

    def next_seq(self) -> int:
        return self.last_seq + 1

    def add(self, record: dict[str, Any]) -> None:
        seq = int(record["seq"])
        self.last_seq = seq
        self._records[seq] = record
        self._order.append(seq)
        while len(self._order) > self._keep:
            self._records.pop(self._order.popleft(), None)
        self._write(record)

    def amend(self, seq: int, fields: dict[str, Any]) -> None:
        held = self._records.get(seq)
        if held is not None:
            held.update(fields)
        self._write({"seq": seq, **fields})

    def since(self, seq: int, limit: int) -> list[dict[str, Any]]:
        if not self._order:
            return []
        first = max(seq + 1, self._order[0])
        last = min(self.last_seq, first + limit - 1)
        return [dict(self._records[s]) for s in range(first, last + 1) if s in self._records]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, line: dict[str, Any]) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as exc:  # a full disk must not stop the simulator; the admin API keeps the records
            log.error("ground-truth file %s is no longer written: %s", self.path, exc)
            self._file = None
