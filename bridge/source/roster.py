"""The patients a per-patient poll walks through, in a stable (sorted) order so a cycle can resume.

* static: configured FHIR ids plus MRNs resolved by ``Patient?identifier=<system>|<mrn>``;
* group: the members of a FHIR Group (read once per cycle);
* seen-patients: the Patient ids in the state store, read from disk in key order a chunk at a time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from bridge.config.models import GroupRoster, RosterConfig, SeenPatientsRoster, StaticRoster
from bridge.errors import BridgeError
from bridge.fhir.capabilities import Capabilities
from bridge.fhir.client import FHIRClient
from bridge.fhir.errors import FHIRError
from bridge.logs import error_text
from bridge.source.fhir_values import items, mapping, reference_id
from bridge.source.state import SeenStore

log = logging.getLogger(__name__)


class RosterError(BridgeError):
    """The roster cannot be read (e.g. the Group is missing, or MRN lookups are not supported)."""


class Roster(Protocol):
    def patient_ids(self, after: str | None) -> AsyncIterator[str]:
        """Patient ids greater than `after`, ascending."""
        ...


class StaticPatients:
    """Configured ids, and MRNs resolved once each. An MRN that matched no patient (not registered yet) or
    several is asked again after ``mrn_retry_s``, not remembered as "none" for the life of the process.
    Both maps hold configured MRNs only, so they stay as small as the config."""

    def __init__(
        self,
        cfg: StaticRoster,
        fhir: FHIRClient,
        caps: Capabilities,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cfg.mrns and not caps.supports_search_param("Patient", "identifier"):
            raise RosterError(
                "the roster lists MRNs but the server does not list Patient `identifier` search"
            )
        self._cfg = cfg
        self._fhir = fhir
        self._clock = clock
        self._resolved: dict[str, str] = {}
        self._retry_at: dict[str, float] = {}  # unmatched MRN → when to look it up again

    async def _resolve(self, mrn: str) -> str | None:
        if mrn in self._resolved:
            return self._resolved[mrn]
        if self._clock() < self._retry_at.get(mrn, -math.inf):
            return None
        found: list[str] = []
        params = [("identifier", f"{self._cfg.mrn_system}|{mrn}")]
        async for page in self._fhir.search_pages("Patient", params):
            found.extend(str(r["id"]) for r in page.resources if r.get("id"))
        if len(found) == 1:
            self._retry_at.pop(mrn, None)
            self._resolved[mrn] = found[0]
            return found[0]
        log.warning(
            "roster MRN #%d matched %d patients; skipped, looked up again in %.0fs",
            self._cfg.mrns.index(mrn),
            len(found),
            self._cfg.mrn_retry_s,
        )
        self._retry_at[mrn] = self._clock() + self._cfg.mrn_retry_s
        return None

    async def patient_ids(self, after: str | None) -> AsyncIterator[str]:
        ids = set(self._cfg.patient_ids)
        for mrn in self._cfg.mrns:
            try:
                pid = await self._resolve(mrn)
            except FHIRError as exc:  # one bad lookup must not stop the others; retried next cycle
                log.warning(
                    "roster MRN #%d could not be resolved: %s", self._cfg.mrns.index(mrn), error_text(exc)
                )
                continue
            if pid is not None:
                ids.add(pid)
        for pid in sorted(ids):
            if after is None or pid > after:
                yield pid


class GroupMembers:
    def __init__(self, cfg: GroupRoster, fhir: FHIRClient, caps: Capabilities) -> None:
        if not caps.supports_read("Group"):
            raise RosterError("the roster is a Group but the server does not list Group read")
        self._group_id = cfg.group_id
        self._fhir = fhir

    async def patient_ids(self, after: str | None) -> AsyncIterator[str]:
        group = await self._fhir.read("Group", self._group_id)
        ids = {
            pid
            for member in items(group.get("member"))
            if not mapping(member).get("inactive")
            and (pid := reference_id(mapping(member).get("entity"), "Patient")) is not None
        }
        for pid in sorted(ids):
            if after is None or pid > after:
                yield pid


class SeenPatients:
    def __init__(self, seen: SeenStore, connection: str, chunk: int = 1000) -> None:
        self._seen = seen
        self._connection = connection
        self._chunk = chunk

    async def patient_ids(self, after: str | None) -> AsyncIterator[str]:
        while True:
            # a fresh query per chunk: the cache is written to between chunks
            chunk = self._seen.ids_after(self._connection, "Patient", after, self._chunk)
            for pid in chunk:
                yield pid
            if len(chunk) < self._chunk:
                return
            after = chunk[-1]


def build_roster(
    cfg: RosterConfig, fhir: FHIRClient, caps: Capabilities, seen: SeenStore, connection: str
) -> Roster:
    if isinstance(cfg, StaticRoster):
        return StaticPatients(cfg, fhir, caps)
    if isinstance(cfg, GroupRoster):
        return GroupMembers(cfg, fhir, caps)
    assert isinstance(cfg, SeenPatientsRoster)
    return SeenPatients(seen, connection)
