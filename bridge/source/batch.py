"""The changes of one open batch, not yet committed, with what they mean for detection.

Detection asks the state store what was seen, but the store only learns of a batch once it committed;
`pending` overlays the batch's own fingerprints so an id met twice before the commit (pages overlap
while the server changes) is still classified against its latest state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridge.source.cursors import Cursor
from bridge.source.detect import Change
from bridge.source.state import Seen


@dataclass
class Batch:
    changes: list[Change] = field(default_factory=list)
    pending: dict[str, Seen] = field(default_factory=dict)
    marks: dict[str, Cursor] = field(default_factory=dict)  # per-patient cursors (task:patient:<id>)
    opened: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.changes)

    def known(self, ids: Iterable[str], stored: Mapping[str, Seen]) -> dict[str, Seen]:
        merged = dict(stored)
        for rid in ids:
            if rid in self.pending:
                merged[rid] = self.pending[rid]
        return merged

    def add(self, changes: Iterable[Change]) -> None:
        for change in changes:
            self.changes.append(change)
            self.pending[change.resource_id] = change.seen()

    def age_s(self) -> float:
        return time.monotonic() - self.opened
