"""Stores hints in `<prefix>.<connection>.hints`, so they survive a restart and reach whichever instance
owns the connection.

An idempotent producer with acks=all: `write` returns only when the broker has the record on every
in-sync replica (the delivery report), which is what the listener's AA promises. A failure or a timeout
raises `HintWriteError`; the listener answers AE and the sender resends. A record that was stored after
all (the report came too late) becomes a duplicate hint, which costs at most one extra scan.

The producer's delivery reports are served by a dedicated thread; the event loop only enqueues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bridge.hints.model import Hint

log = logging.getLogger(__name__)

Encode = Callable[[Mapping[str, Any]], bytes]


class HintWriteError(Exception):
    """The hint was not stored; the sender should resend it."""


class HintWriter:
    def __init__(
        self, kafka_config: Mapping[str, Any], topic: str, encode: Encode, *, timeout_s: float = 10.0
    ) -> None:
        self.topic = topic
        self._encode = encode
        self._timeout_s = timeout_s
        timeout_ms = max(1000, int(timeout_s * 1000))
        self._producer = Producer(
            {
                "linger.ms": 5,
                **kafka_config,
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": timeout_ms,
                "request.timeout.ms": min(30_000, timeout_ms),
            }
        )
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve_reports, name=f"hints-writer:{topic}", daemon=True)
        self._thread.start()

    async def write(self, hint: Hint) -> None:
        """Returns once the hint is durably stored; raises HintWriteError otherwise."""
        if self._closing.is_set():
            raise HintWriteError("the hint writer is closed")
        loop = asyncio.get_running_loop()
        delivered: asyncio.Future[None] = loop.create_future()

        def report(error: KafkaError | None, _msg: Message) -> None:  # runs on the reports thread
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody waits
                loop.call_soon_threadsafe(_settle, delivered, error)

        try:
            self._producer.produce(self.topic, self._encode(hint.record()), hint.key(), on_delivery=report)
        except BufferError as exc:
            raise HintWriteError("the producer's queue is full") from exc
        except KafkaException as exc:
            raise HintWriteError(f"the hint could not be queued: {exc.args[0]}") from exc
        try:
            # the producer's message.timeout.ms ends every delivery; the margin only guards a lost report
            await asyncio.wait_for(delivered, self._timeout_s + 5.0)
        except TimeoutError as exc:
            raise HintWriteError(f"no delivery report within {self._timeout_s:.0f}s") from exc

    def _serve_reports(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.1)

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (bounded), then stop the reports thread."""
        self._closing.set()
        self._thread.join()
        remaining = self._producer.flush(timeout_s)
        if remaining:
            log.warning(
                "%s: %d hints not confirmed at close (their senders got no AA)", self.topic, remaining
            )


def _settle(future: asyncio.Future[None], error: KafkaError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(HintWriteError(f"the broker did not store the hint: {error.str()}"))
