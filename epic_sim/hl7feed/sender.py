"""Delivers HL7 messages over MLLP like an interface engine: one connection, each message acknowledged
before the next, failures retried, and nothing ever waits on it but its own task.

A message is due at its change's time plus its delay; due messages go out in due order. Without a
listener (refused or timed-out connection, a dropped socket, no ACK in time, an ACK for another
message) the same message is retried after a full-jitter exponential backoff, for as long as it takes.
A negative ACK (AE/AR) is retried too, up to `nak_attempts` in all, then given up so that one message
the receiver refuses cannot hold back the rest. The queue of waiting messages is bounded: when full,
the oldest waiting one (not the one being delivered) is dropped and counted. Every outcome is reported
through `on_outcome(seq, fields)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hl7
from hl7.mllp import InvalidBlockError, open_hl7_connection

from epic_sim.background import BackgroundLoop
from epic_sim.hl7feed.messages import Hl7Message

log = logging.getLogger("epic_sim.hl7feed")

Outcome = Callable[[int, dict[str, Any]], None]
_ACCEPTED = ("AA", "CA")
_TRANSPORT_ERRORS = (
    OSError,
    TimeoutError,
    asyncio.IncompleteReadError,
    InvalidBlockError,
    ValueError,  # an over-long frame
    hl7.ParseException,
    KeyError,  # an ACK without MSA
    IndexError,
)


class _Desync(Exception):
    """The ACK read names another message."""


@dataclass
class _Outbound:
    seq: int
    message: Hl7Message
    due: float  # monotonic seconds
    attempts: int = 0
    state: str = "queued"  # queued -> sending -> done | dropped


class MllpSender:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        queue_size: int,
        on_outcome: Outcome,
        ack_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.2, 5.0),
        nak_attempts: int = 3,
    ) -> None:
        self.host = host
        self.port = port
        self._queue_size = queue_size
        self._on_outcome = on_outcome
        self._ack_timeout_s = ack_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff_s = backoff_s
        self._nak_attempts = nak_attempts
        self._heap: list[tuple[float, int, _Outbound]] = []
        self._order: deque[_Outbound] = deque()  # submission order, for dropping the oldest
        self._live = 0  # messages waiting (queued), the one being delivered excluded
        self._in_flight: _Outbound | None = None
        self._jitter = random.Random()
        self._wake = asyncio.Event()
        self._loop = BackgroundLoop(self.run)
        self._reader: Any = None
        self._writer: Any = None
        self._failures_in_a_row = 0
        self.counts: Counter[str] = Counter()
        self.acks: Counter[str] = Counter()
        self.last_error: str | None = None

    # --- the simulator's side (synchronous, never waits) ------------------------------------------
    def submit(self, seq: int, message: Hl7Message, delay_s: float) -> None:
        while self._live >= self._queue_size:
            self._drop_oldest()
        item = _Outbound(seq, message, time.monotonic() + delay_s)
        heapq.heappush(self._heap, (item.due, seq, item))
        self._order.append(item)
        self._live += 1
        self.counts["submitted"] += 1
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        return {
            "target": f"{self.host}:{self.port}",
            "connected": self._writer is not None,
            "queued": self._live,
            "in_flight": self._in_flight is not None,
            "acks": dict(self.acks),
            "last_error": self.last_error,
            **{
                name: self.counts[name]
                for name in (
                    "submitted",
                    "sent",
                    "delivered",
                    "rejected",
                    "dropped",
                    "retries",
                    "connect_failures",
                )
            },
        }

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        self._close()

    # --- queue ------------------------------------------------------------------------------------
    def _drop_oldest(self) -> None:
        while self._order:
            item = self._order.popleft()
            if item.state == "queued":
                item.state = "dropped"
                self._live -= 1
                self.counts["dropped"] += 1
                self._on_outcome(
                    item.seq,
                    {
                        "hl7_dropped": True,
                        "hl7_attempts": item.attempts,
                        "hl7_control_id": item.message.control_id,
                    },
                )
                return

    def _finish(self, item: _Outbound, fields: dict[str, Any]) -> None:
        item.state = "done"
        self._in_flight = None
        while self._order and self._order[0].state in ("done", "dropped"):
            self._order.popleft()
        self._on_outcome(
            item.seq, {**fields, "hl7_attempts": item.attempts, "hl7_control_id": item.message.control_id}
        )

    async def _next_due(self) -> _Outbound:
        while True:
            while self._heap and self._heap[0][2].state != "queued":
                heapq.heappop(self._heap)
            wait = self._heap[0][0] - time.monotonic() if self._heap else None
            if wait is not None and wait <= 0:
                item = heapq.heappop(self._heap)[2]
                item.state = "sending"
                self._live -= 1
                self._in_flight = item
                return item
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    # --- delivery ---------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self._deliver(await self._next_due())

    async def _deliver(self, item: _Outbound) -> None:
        tries = 0
        while item.state == "sending":
            if tries:
                self.counts["retries"] += 1
            tries += 1
            try:
                sent_at, code = await self._exchange(item)
            except (*_TRANSPORT_ERRORS, _Desync) as exc:
                self._failed(item, f"{type(exc).__name__}: {exc}")
                await self._backoff()
                continue
            self.acks[code] += 1
            if code in _ACCEPTED:
                if self._failures_in_a_row:
                    log.info("HL7 feed to %s:%d delivering again", self.host, self.port)
                self._failures_in_a_row = 0
                self.counts["delivered"] += 1
                self._finish(item, {"hl7_sent_at": sent_at, "hl7_ack": code})
                return
            log.warning(
                "HL7 %s %s answered %s (attempt %d)",
                item.message.type,
                item.message.control_id,
                code,
                item.attempts,
            )
            if item.attempts >= self._nak_attempts:
                self.counts["rejected"] += 1
                self._finish(item, {"hl7_sent_at": sent_at, "hl7_ack": code})
                return
            self._failures_in_a_row += 1
            await self._backoff()

    async def _exchange(self, item: _Outbound) -> tuple[float, str]:
        """Send once and read the ACK: (wall-clock send time, MSA-1)."""
        if self._writer is None:
            try:
                self._reader, self._writer = await asyncio.wait_for(
                    open_hl7_connection(self.host, self.port, encoding="utf-8"), self._connect_timeout_s
                )
            except _TRANSPORT_ERRORS:
                self.counts["connect_failures"] += 1
                raise
        item.attempts += 1
        sent_at = time.time()
        self._writer.writeblock(item.message.text.encode("utf-8"))
        self.counts["sent"] += 1
        await asyncio.wait_for(self._writer.drain(), self._ack_timeout_s)
        ack = await asyncio.wait_for(self._reader.readmessage(), self._ack_timeout_s)
        msa = ack.segment("MSA")
        if str(msa[2]) != item.message.control_id:
            raise _Desync(f"ACK for {msa[2]!s}, expected {item.message.control_id}")
        return sent_at, str(msa[1])

    def _failed(self, item: _Outbound, error: str) -> None:
        self._close()
        self.last_error = error
        self._failures_in_a_row += 1
        if self._failures_in_a_row == 1:
            log.warning("HL7 feed to %s:%d failing, retrying with backoff: %s", self.host, self.port, error)
        else:
            log.debug("HL7 feed retry %d failed: %s", self._failures_in_a_row, error)

    async def _backoff(self) -> None:
        base, cap = self._backoff_s
        ceiling = min(cap, base * 2 ** min(self._failures_in_a_row, 16))
        await asyncio.sleep(self._jitter.uniform(0, ceiling))

    def _close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.close()
        self._reader = self._writer = None
