"""MRN → FHIR Patient id, looked up once through the connection's FHIR client and then cached.

`Patient?identifier=<system>|<mrn>`; only patients that really carry that identifier count (Epic's
Patient search matches loosely). One match resolves; none or several is a *miss*, remembered for
`miss_ttl_s` so a feed that keeps naming an unknown MRN costs one request per TTL, not one per message.
A found id is trusted for `ttl_s` (patients merge, rarely). The cache is an LRU bounded by `size`
entries. A failed request is not cached. Used by one reader, which resolves one hint at a time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from bridge.fhir.client import FHIRClient
from bridge.metrics import Metrics
from bridge.source.fhir_values import items, mapping


class Miss(StrEnum):
    UNKNOWN = "mrn-unknown"
    AMBIGUOUS = "mrn-ambiguous"


Resolution = str | Miss


@dataclass(frozen=True)
class _Entry:
    result: Resolution
    expires_at: float


class MRNResolver:
    def __init__(
        self,
        fhir: FHIRClient,
        *,
        connection: str,
        size: int = 100_000,
        ttl_s: float = 86_400.0,
        miss_ttl_s: float = 300.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fhir = fhir
        self._connection = connection
        self._size = size
        self._ttl_s = ttl_s
        self._miss_ttl_s = miss_ttl_s
        self._metrics = metrics if metrics is not None else Metrics()
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    async def resolve(self, system: str, mrn: str) -> Resolution:
        """The FHIR id, or why there is none. FHIR errors propagate (and are not cached)."""
        key = (system, mrn)
        entry = self._cache.get(key)
        if entry is not None and entry.expires_at > self._clock():
            self._cache.move_to_end(key)
            self._count("hit")
            return entry.result
        self._count("miss")
        result = await self._lookup(system, mrn)
        self._store(key, result)
        return result

    async def _lookup(self, system: str, mrn: str) -> Resolution:
        found: list[str] = []
        params = [("identifier", f"{system}|{mrn}")]
        async for page in self._fhir.search_pages("Patient", params):
            found.extend(str(r["id"]) for r in page.resources if r.get("id") and _carries(r, system, mrn))
            if len(found) > 1:
                return Miss.AMBIGUOUS
        return found[0] if found else Miss.UNKNOWN

    def _store(self, key: tuple[str, str], result: Resolution) -> None:
        ttl = self._miss_ttl_s if isinstance(result, Miss) else self._ttl_s
        self._cache[key] = _Entry(result, self._clock() + ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)

    def _count(self, result: str) -> None:
        self._metrics.hint_mrn_lookups.labels(self._connection, result).inc()


def _carries(patient: dict[str, object], system: str, value: str) -> bool:
    return any(
        mapping(i).get("system") == system and mapping(i).get("value") == value
        for i in items(patient.get("identifier"))
    )
