"""The schedule's records in the compacted ``<prefix>._schedule`` topic (and its on-disk cache).

Keys are JSON arrays, Kafka Connect style, so any tool can read them and a prefix selects a
connection, a kind of unit, or the members:

* a unit: ``[connection, resource type, variant, patient id]``, e.g. ``["prod","Observation",
  "laboratory","e1X"]`` (variant ``""`` where a resource has a single search);
* a member (a roster patient in the schedule): ``[connection, "", "", patient id]``.

Values are compact JSON objects: a unit ``{"d": due, "a": added, "s": last scan, "f": last full
scan, "w": weight, "k": requests per scan, "c": decayed changes, "ct": their time}`` (times in Unix
seconds, absent when unknown); a member ``{"a": added, "c": decayed changes of all its units, "ct":
their time}``. A tombstone (null value) removes either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bridge.source.schedule.policy import PatientState, UnitState

MEMBER = ("", "")  # the (resource, variant) of member records


@dataclass(frozen=True, order=True)
class UnitKind:
    """One search made per patient: a resource type and its variant (e.g. an Observation category)."""

    resource: str
    variant: str = ""

    @property
    def label(self) -> str:
        return f"{self.resource}/{self.variant}" if self.variant else self.resource


@dataclass(frozen=True)
class UnitKey:
    connection: str
    kind: UnitKind
    patient: str


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def unit_key(connection: str, kind: UnitKind, patient: str) -> bytes:
    return _dumps([connection, kind.resource, kind.variant, patient])


class Keys:
    """Keys of one connection's units and members, built without re-encoding the common prefix."""

    def __init__(self, connection: str) -> None:
        self._prefixes: dict[tuple[str, str], bytes] = {}
        self.connection = connection

    def _prefix(self, resource: str, variant: str) -> bytes:
        found = self._prefixes.get((resource, variant))
        if found is None:
            found = self._prefixes[(resource, variant)] = prefix(self.connection, resource, variant)
        return found

    def unit(self, kind: UnitKind, patient: str) -> bytes:
        return self._prefix(kind.resource, kind.variant) + json.dumps(patient).encode() + b"]"

    def member(self, patient: str) -> bytes:
        return self._prefix(*MEMBER) + json.dumps(patient).encode() + b"]"


def member_key(connection: str, patient: str) -> bytes:
    return _dumps([connection, *MEMBER, patient])


def connection_prefix(connection: str) -> bytes:
    """The common start of every key of one connection."""
    return _dumps([connection])[:-1] + b","


def prefix(connection: str, resource: str, variant: str) -> bytes:
    """The common start of every key of one connection and (resource, variant), in key order."""
    return unit_key(connection, UnitKind(resource, variant), "")[: -len(b'""]')]


def parse_key(key: bytes) -> UnitKey:
    connection, resource, variant, patient = json.loads(key)
    return UnitKey(str(connection), UnitKind(str(resource), str(variant)), str(patient))


def _time(value: float) -> float:
    return round(value, 3)


def _with_changes(out: dict[str, Any], changes: float, at: float) -> dict[str, Any]:
    if changes:
        out["c"] = float(f"{changes:.6g}")
        out["ct"] = _time(at)
    return out


def encode_unit(unit: UnitState) -> bytes:
    out: dict[str, Any] = {"d": _time(unit.due), "a": _time(unit.added)}
    if unit.scanned is not None:
        out["s"] = _time(unit.scanned)
    if unit.full is not None:
        out["f"] = _time(unit.full)
    out["w"] = float(f"{unit.weight:.6g}")
    out["k"] = round(unit.cost, 3)
    return _dumps(_with_changes(out, unit.changes, unit.changes_at))


def decode_unit(value: bytes) -> UnitState:
    raw = json.loads(value)
    return UnitState(
        due=float(raw["d"]),
        added=float(raw["a"]),
        scanned=None if raw.get("s") is None else float(raw["s"]),
        full=None if raw.get("f") is None else float(raw["f"]),
        weight=float(raw.get("w", 1.0)),
        cost=float(raw.get("k", 1.0)),
        changes=float(raw.get("c", 0.0)),
        changes_at=float(raw.get("ct", raw["a"])),
    )


def encode_member(patient: PatientState) -> bytes:
    return _dumps(_with_changes({"a": _time(patient.added)}, patient.changes, patient.changes_at))


def decode_member(value: bytes) -> PatientState:
    raw = json.loads(value)
    return PatientState(float(raw["a"]), float(raw.get("c", 0.0)), float(raw.get("ct", raw["a"])))
