"""Change detection: compare what a poll returned with what was seen before."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.source.events import Trigger, change_identity
from bridge.source.fingerprint import fingerprint
from bridge.source.projection import patient_id_of
from bridge.source.state import Seen


@dataclass(frozen=True)
class Change:
    resource: Mapping[str, Any]
    fingerprint: str
    patient_id: str | None
    # None: recorded silently (first sight during the initial sync in from-now mode)
    trigger: Trigger | None
    previous: Seen | None = None  # what the state store had; None on first sight

    @property
    def resource_id(self) -> str:
        return str(self.resource["id"])

    @property
    def identity(self) -> str:
        """Names this change for its event id (see ``bridge.source.events``)."""
        if self.previous is None:
            return change_identity(self.fingerprint)
        return change_identity(self.fingerprint, self.previous.fingerprint, self.previous.changes)

    def seen(self) -> Seen:
        """What the state store records for this resource once the change is committed."""
        if self.previous is None:
            return Seen(self.fingerprint, self.patient_id)
        changed = self.previous.fingerprint != self.fingerprint  # a snapshot re-publishes unchanged ones
        return Seen(self.fingerprint, self.patient_id, self.previous.changes + changed)


def detect_changes(
    resources: Iterable[Mapping[str, Any]], known: Mapping[str, Seen], *, silent: bool = False
) -> list[Change]:
    """First sight of an id → CREATED; a different fingerprint → UPDATED; the same → nothing.

    `known` holds what the state store had for these ids. `silent` (the initial sync in from-now mode)
    records first sights without an event; a fingerprint already recorded is the baseline, so a change to
    it is announced even then (e.g. when an interrupted or reset initial sync reads it again). An id that
    appears twice in one batch (pages can overlap while the server's data changes) counts once, with its
    last content.
    """
    latest: dict[str, Mapping[str, Any]] = {}
    for resource in resources:
        rid = resource.get("id")
        if isinstance(rid, str) and rid:
            latest[rid] = resource
    changes: list[Change] = []
    for rid, resource in latest.items():
        fp = fingerprint(resource)
        before = known.get(rid)
        if before is not None and before.fingerprint == fp:
            continue
        trigger = Trigger.UPDATED if before is not None else None if silent else Trigger.CREATED
        changes.append(Change(resource, fp, patient_id_of(resource), trigger, before))
    return changes
