"""Dead-letter records: the original bytes, untouched, with headers that say what was wrong and where
the record came from, so an operator can fix and replay it."""

from __future__ import annotations

import datetime as dt

from bridge.sink.decode import DeadLetter
from bridge.sink.model import Source

HEADER_PREFIX = "dlq."


def dead_letter_headers(error: DeadLetter, source: Source, connection: str) -> list[tuple[str, bytes]]:
    # Messages describe the record's form, never its content: no patient data reaches the headers.
    return [
        (f"{HEADER_PREFIX}error.reason", error.reason.value.encode()),
        (f"{HEADER_PREFIX}error.message", error.message.encode()[:1000]),
        (f"{HEADER_PREFIX}source.topic", source.topic.encode()),
        (f"{HEADER_PREFIX}source.partition", str(source.partition).encode()),
        (f"{HEADER_PREFIX}source.offset", str(source.offset).encode()),
        (f"{HEADER_PREFIX}connection", connection.encode()),
        (f"{HEADER_PREFIX}at", dt.datetime.now(dt.UTC).isoformat().encode()),
    ]
