"""Where a poll task stands, as stored in its cursor (``<prefix>._offsets``, key ``[connection, task]``).

A task polls in cycles. The cursor written with each batch says which cycle runs, when it started,
the last roster patient completed (patients are walked in ascending id order, so a restart resumes
right after it), and the ``_lastUpdated`` bound of an unanchored cycle. A crash redoes at most the
batch that was open; the state store recognises what that batch had already published.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, replace
from typing import Any

from bridge.source.cursors import Cursor


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    """FHIR instant, second precision, UTC."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class CycleState:
    cycle: int = 1
    started: str | None = None  # set when the cycle begins; kept across restarts of that cycle
    initial: bool = True  # the initial sync (silent in from-now mode)
    since: str | None = None  # unanchored _lastUpdated bound of this cycle; None: everything
    after: str | None = None  # last roster patient completed in this cycle
    full: bool = True  # scan without the date window
    last_full: str | None = None

    @classmethod
    def from_cursor(cls, cursor: Cursor | None) -> CycleState:
        if not cursor:
            return cls()
        fields = {k: cursor[k] for k in cls.__dataclass_fields__ if k in cursor}
        return cls(**fields)

    def to_cursor(self) -> Cursor:
        out: dict[str, Any] = asdict(self)
        out["position"] = self.position
        return out

    @property
    def position(self) -> str:
        """Human-readable, for the events' `cursor` field."""
        parts = [f"cycle={self.cycle}"]
        if self.since:
            parts.append(f"since={self.since}")
        if self.after:
            parts.append(f"after={self.after}")
        return ";".join(parts)

    def begin(self, moment: dt.datetime) -> CycleState:
        return self if self.started is not None else replace(self, started=iso(moment))

    def patient_done(self, patient_id: str) -> CycleState:
        return replace(self, after=patient_id)

    def next_cycle(
        self, *, overlap_s: float, uses_since: bool, full_every_s: float | None, moment: dt.datetime
    ) -> CycleState:
        """The state that starts the following cycle, once this one completed."""
        started = parse_iso(self.started) if self.started else moment
        last_full = self.started if self.full else self.last_full
        full = True
        if full_every_s is not None and last_full is not None:
            full = (moment - parse_iso(last_full)).total_seconds() >= full_every_s
        since = iso(started - dt.timedelta(seconds=overlap_s)) if uses_since else None
        return CycleState(self.cycle + 1, None, False, since, None, full, last_full)

    def rescan(self) -> CycleState:
        """A fresh cycle that reads everything again (an operator's reset): no ``_lastUpdated`` bound, no
        date window, every roster patient. ``initial`` is kept: once the initial sync finished, what the
        re-scan finds that differs from the state store is announced, never taken as a silent baseline."""
        return CycleState(self.cycle + 1, None, self.initial, None, None, True, self.last_full)
