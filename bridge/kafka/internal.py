"""The internal tables of one topic prefix, one cache each per process (never one copy per connection):
`_state` (what was seen), `_offsets` (cursors, ownership records) and `_command-results` (the sink's
ledger), with one reader that catches them up on demand.

Catch-up requests are coalesced: a request is served by the next read that *starts* after it, so many
connections gained at once cost one read, and each caller knows the read it waited for took its
high-watermark snapshot after the call (see bridge.kafka.table for why the snapshot matters).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.admin import AdminClient

from bridge.kafka.context import KafkaContext
from bridge.kafka.table import CompactedTable, TableReader
from bridge.kafka.topics import command_results_topic, offsets_topic, state_topic


@dataclass
class InternalTables:
    state: CompactedTable
    offsets: CompactedTable
    results: CompactedTable
    _kafka_config: dict[str, Any] = field(default_factory=dict, repr=False)
    _admin: AdminClient | None = field(default=None, repr=False)
    _reader: TableReader | None = field(default=None, init=False, repr=False)
    _executor: concurrent.futures.ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _next: concurrent.futures.Future[int] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def open(cls, kafka: KafkaContext, prefix: str) -> InternalTables:
        def table(topic: str) -> CompactedTable:
            return CompactedTable(kafka.config, topic, kafka.cache_path(topic))

        return cls(
            table(state_topic(prefix)),
            table(offsets_topic(prefix)),
            table(command_results_topic(prefix)),
            dict(kafka.config),
            kafka.admin,
        )

    def all(self) -> list[CompactedTable]:
        return [self.state, self.offsets, self.results]

    def catch_up(self, timeout_s: float = 120.0) -> int:
        """Blocking: read every table up to a snapshot taken after this call. Returns records read."""
        return self.request_catch_up(timeout_s).result()

    async def catch_up_async(self, timeout_s: float = 120.0) -> int:
        return await asyncio.wrap_future(self.request_catch_up(timeout_s))

    def request_catch_up(self, timeout_s: float = 120.0) -> concurrent.futures.Future[int]:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tables")
            if self._next is None:
                self._next = self._executor.submit(self._read, timeout_s)
            return self._next

    def _read(self, timeout_s: float) -> int:
        with self._lock:
            self._next = None  # requests from now on need a read that starts after them
        if self._reader is None:
            self._reader = TableReader(self._kafka_config, self.all(), admin=self._admin)
        return self._reader.catch_up(timeout_s)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._reader is not None:
            self._reader.close()
        for table in self.all():
            table.close()
