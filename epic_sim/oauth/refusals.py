"""A bounded record of refusals, so tests can assert *why* a request was refused.

Epic never says why (the wire only carries `invalid_client`); the reason goes to the server log and here.
Reasons never contain a secret, token, assertion or code.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("epic_sim.oauth")

MAX_REFUSALS = 1000


@dataclass(frozen=True)
class Refusal:
    seq: int
    at: float
    endpoint: str  # "token" | "authorize" | "fhir"
    client_id: str | None
    error: str  # the OAuth error code, or "invalid_token" / "forbidden" for FHIR calls
    reason: str


class RefusalLog:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._items: deque[Refusal] = deque(maxlen=MAX_REFUSALS)
        self._seq = 0
        self._lock = threading.Lock()

    def add(self, endpoint: str, client_id: str | None, error: str, reason: str) -> Refusal:
        with self._lock:
            self._seq += 1
            refusal = Refusal(self._seq, self._clock(), endpoint, client_id, error, reason)
            self._items.append(refusal)
        logger.info("%s refused: client=%s error=%s reason=%s", endpoint, client_id, error, reason)
        return refusal

    @property
    def last(self) -> Refusal | None:
        with self._lock:
            return self._items[-1] if self._items else None

    def since(self, seq: int = 0) -> list[Refusal]:
        with self._lock:
            return [r for r in self._items if r.seq > seq]
