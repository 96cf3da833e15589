"""Pending scan requests, one per (patient, resource): hints for the same pair merge while they wait.

A request is ready at once, unless the same pair was handed to the scanner less than `window_s` ago:
then it waits for the rest of the window, and every hint for the pair in that time joins it. So a burst
of messages about one patient (an admission sends several) costs one scan at its start and at most one
more at the end of the window, which also catches a change made after the first scan began.

Each request remembers the lowest offset, per partition, of the records merged into it, so the reader
knows up to where the hints topic has been handed over (`lowest_offsets`).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from bridge.hints.model import ScanRequest

Key = tuple[str, str]


@dataclass
class _Pending:
    request: ScanRequest
    ready_at: float
    origins: dict[int, int] = field(default_factory=dict)  # partition -> lowest offset merged in


class Coalescer:
    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._pending: dict[Key, _Pending] = {}
        self._queue: list[tuple[float, int, Key]] = []  # (ready_at, sequence, key), a heap
        self._sequence = itertools.count()
        self._handed: dict[Key, float] = {}  # pairs handed over within the window, and when
        self._handed_order: deque[tuple[float, Key]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, request: ScanRequest, origin: tuple[int, int] | None = None) -> bool:
        """Queue a request; True when it merged into one already waiting (coalesced)."""
        key = (request.patient_id, request.resource_type)
        waiting = self._pending.get(key)
        if waiting is not None:
            if request.received_at < waiting.request.received_at:
                waiting.request = replace(
                    waiting.request, received_at=request.received_at, reason=request.reason
                )
            _merge_origin(waiting.origins, origin)
            return True
        now = self._clock()
        self._forget_handed(now)
        handed = self._handed.get(key)
        ready_at = now if handed is None else max(now, handed + self._window_s)
        entry = _Pending(request, ready_at)
        _merge_origin(entry.origins, origin)
        self._pending[key] = entry
        heapq.heappush(self._queue, (ready_at, next(self._sequence), key))
        return False

    def next_ready_at(self) -> float | None:
        """When the earliest waiting request becomes ready (clock time), or None when none waits."""
        return self._queue[0][0] if self._queue else None

    def pop_ready(self) -> ScanRequest | None:
        """The earliest ready request, handed over (it leaves the queue), or None."""
        now = self._clock()
        if not self._queue or self._queue[0][0] > now:
            return None
        _ready_at, _seq, key = heapq.heappop(self._queue)
        entry = self._pending.pop(key)
        self._handed[key] = now
        self._handed_order.append((now, key))
        return entry.request

    def lowest_offsets(self) -> dict[int, int]:
        """Per partition, the lowest record offset that still has a request waiting here."""
        low: dict[int, int] = {}
        for entry in self._pending.values():
            for partition, offset in entry.origins.items():
                if offset < low.get(partition, offset + 1):
                    low[partition] = offset
        return low

    def _forget_handed(self, now: float) -> None:
        while self._handed_order and self._handed_order[0][0] + self._window_s <= now:
            at, key = self._handed_order.popleft()
            if self._handed.get(key) == at:
                del self._handed[key]


def _merge_origin(origins: dict[int, int], origin: tuple[int, int] | None) -> None:
    if origin is not None:
        partition, offset = origin
        origins[partition] = min(offset, origins.get(partition, offset))
