"""Bounded log of every FHIR/OAuth request the server received (served at GET /admin/requests)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any


class RequestLog:
    def __init__(self, capacity: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._seq = 0
        self._lock = threading.Lock()

    def start(
        self, method: str, path: str, query: dict[str, list[str]], client_id: str | None
    ) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            entry: dict[str, Any] = {
                "seq": self._seq,
                "time": time.time(),
                "method": method,
                "path": path,
                "query": query,
                "status": None,
                "client_id": client_id,
                "epic_client_id": client_id,
                "auth_client_id": None,
                "fault": None,
            }
            self._entries.append(entry)
        return entry

    def since(self, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._entries if e["seq"] > seq]

    def clear(self) -> None:
        """Forget the entries; sequence numbers keep growing so `since` stays meaningful."""
        with self._lock:
            self._entries.clear()

    @property
    def last_seq(self) -> int:
        return self._seq
