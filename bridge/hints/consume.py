"""Records of the hints topic from a consumer the caller has assigned, as `RawHint`s for the reader.

The consumer's blocking calls run on one dedicated thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, Message

from bridge.hints.decode import RawHint

log = logging.getLogger(__name__)


async def hint_records(
    consumer: Consumer, stop: asyncio.Event, *, poll_s: float = 0.5, batch: int = 500
) -> AsyncIterator[RawHint]:
    """Yield records until `stop` is set; the consumer stays open (its owner closes it)."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hints-consumer") as thread:
        while not stop.is_set():
            messages: list[Message] = await loop.run_in_executor(thread, consumer.consume, batch, poll_s)
            for message in messages:
                error = message.error()
                if error is not None:
                    log.warning("hints consumer: %s", error)
                    continue
                yield _raw(message)


def _raw(message: Message) -> RawHint:
    kind, millis = message.timestamp()
    when = None if kind == TIMESTAMP_NOT_AVAILABLE else dt.datetime.fromtimestamp(millis / 1000, dt.UTC)
    return RawHint(
        topic=str(message.topic()),
        partition=int(message.partition() or 0),
        offset=int(message.offset() or 0),
        key=message.key(),
        value=message.value(),
        timestamp=when,
    )
