"""Detection latency against the ground-truth log: which change a resource seen downstream reflects.

A client that polls the simulator (the bridge, say) publishes what it read; a benchmark sees those
resources arrive and wants to know, for every change of the ground truth, when it was first seen. The
ground truth gives each change the digest of the resource right after it (`ground_truth.py`), so the
digest of a seen resource names the version it reflects. A resource reflecting version k of its history
shows every change up to k: changes 1..k-1 were overwritten by k before anyone read them, and a client
that saw k has nothing more to detect of them. So each sighting detects every change up to the version it
reflects that was not detected before — the detected changes of a resource are always a prefix of its
history — and a change is detected at the first sighting of it or of a later version.

Pure functions over plain records: no I/O, no clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from epic_sim.episodes.ground_truth import canonical_digest

ResourceKey = tuple[str, str]  # (resource type, id)


@dataclass(frozen=True)
class Version:
    """One change of the ground truth: the resource's new version and when it became readable."""

    seq: int
    at: float  # epoch seconds
    resource_type: str
    resource_id: str
    digest: str
    episode_first: bool = False
    hl7: bool = False  # an HL7 message was to be sent for it

    @property
    def key(self) -> ResourceKey:
        return (self.resource_type, self.resource_id)

    @classmethod
    def from_record(cls, record: dict[str, object]) -> Version:
        """From a ground-truth record (a line of the log or an entry of GET /admin/ground-truth)."""
        return cls(
            seq=int(str(record["seq"])),
            at=parse_instant(str(record["at"])),
            resource_type=str(record["resource_type"]),
            resource_id=str(record["resource_id"]),
            digest=str(record["digest"]),
            episode_first=bool(record.get("episode_first")),
            hl7=bool(record.get("hl7")),
        )


@dataclass(frozen=True)
class Sighting:
    """A resource seen downstream (e.g. in an event), at `seen_at` (epoch seconds)."""

    seen_at: float
    resource_type: str
    resource_id: str
    digest: str

    @property
    def key(self) -> ResourceKey:
        return (self.resource_type, self.resource_id)


@dataclass(frozen=True)
class Detection:
    version: Version
    seen_at: float

    @property
    def latency_s(self) -> float:
        return self.seen_at - self.version.at


@dataclass
class Matching:
    detections: list[Detection] = field(default_factory=list)  # in seq order
    missed: list[Version] = field(default_factory=list)  # not detected by any sighting, in seq order
    unmatched: list[Sighting] = field(default_factory=list)  # reflect no logged version


def parse_instant(text: str) -> float:
    """`2026-06-01T12:00:00.123Z` (the ground truth's format) as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def digest_of_json(text: str) -> str:
    """The ground truth's digest of a resource given as JSON text (e.g. an event's resource_json)."""
    return canonical_digest(json.loads(text))


def _reflected(history: Sequence[Version], sighting: Sighting) -> int | None:
    """Index in `history` of the version the sighting reflects, or None. Should a digest recur (content
    going back to an earlier state), the latest such version already readable when it was seen wins."""
    same = [i for i, version in enumerate(history) if version.digest == sighting.digest]
    readable = [i for i in same if history[i].at <= sighting.seen_at]
    if readable:
        return readable[-1]
    return same[0] if same else None  # seen "before" it was made: clocks apart; take the earliest


def match(versions: Iterable[Version], sightings: Iterable[Sighting]) -> Matching:
    """Each version's first detection by the sightings (taken in the order they were seen)."""
    histories: dict[ResourceKey, list[Version]] = {}
    for version in sorted(versions, key=lambda v: v.seq):
        histories.setdefault(version.key, []).append(version)
    detected_upto: dict[ResourceKey, int] = {}  # length of the detected prefix of each history
    out = Matching()
    found: list[Detection] = []
    for sighting in sorted(sightings, key=lambda s: s.seen_at):
        history = histories.get(sighting.key, [])
        k = _reflected(history, sighting)
        if k is None:
            out.unmatched.append(sighting)
            continue
        done = detected_upto.get(sighting.key, 0)
        found.extend(Detection(v, sighting.seen_at) for v in history[done : k + 1])
        detected_upto[sighting.key] = max(done, k + 1)
    out.detections = sorted(found, key=lambda d: d.version.seq)
    for key, history in histories.items():
        out.missed.extend(history[detected_upto.get(key, 0) :])
    out.missed.sort(key=lambda v: v.seq)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1): the smallest value with at least q of them at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50: float
    p90: float
    p95: float
    max: float

    @classmethod
    def of(cls, latencies: Sequence[float]) -> LatencySummary | None:
        if not latencies:
            return None
        return cls(
            len(latencies),
            percentile(latencies, 0.50),
            percentile(latencies, 0.90),
            percentile(latencies, 0.95),
            max(latencies),
        )
