"""A real MLLP listener for the HL7 feed tests (hl7.mllp on its own event loop in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from hl7.mllp import start_hl7_server


@dataclass(frozen=True)
class Received:
    at: float  # wall clock, seconds
    text: str  # the message as parsed and printed again by hl7 (segments end with \r)
    message: Any  # hl7.Message


class MllpListener:
    """Accepts MLLP connections on 127.0.0.1, records each message and answers `ack_code` (AA by default)."""

    def __init__(self, port: int = 0, ack_code: str = "AA") -> None:
        self.ack_code = ack_code
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, started), daemon=True)
        self._thread.start()
        if not started.wait(10) or self._server is None:
            raise RuntimeError("MLLP listener did not start")
        self.port: int = self._server.sockets[0].getsockname()[1]

    def _run(self, port: int, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await start_hl7_server(self._handle, "127.0.0.1", port, encoding="utf-8")
            started.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    async def _handle(self, reader: Any, writer: Any) -> None:
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    message = await reader.readmessage()
                    with self._lock:
                        self.received.append(Received(time.time(), str(message), message))
                    writer.writemessage(message.create_ack(ack_code=self.ack_code))
                    await writer.drain()
        finally:
            writer.close()

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def stop(self) -> None:
        """Stop listening and drop every open connection."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            current = asyncio.current_task()
            handlers = [t for t in asyncio.all_tasks() if t is not current]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
