"""The MLLP listener of one connection: HL7v2 messages in, one hint per message into the hints topic, one
ACK per message back.

Per message, in order: the MLLP block (framed by `hl7.mllp`, at most `max_message_bytes`), its MSH, the
rate limits (per connection and in total), the message type and patient, then the hint is stored; AA is
sent only after the hints topic has it (acks=all), so an AA'd message is never lost. Everything else is
answered AE (resend may help: a rate limit, Kafka unavailable, a message to fix) or AR (never accepted:
an unsupported type, version or size), with the reason.

Bounded against floods and bad peers, and never stopped by them: connections beyond `max_connections`
are closed on arrival, an oversized block is answered AR and its connection closed (its framing is lost),
a connection idle for `idle_timeout_s` is closed, and one connection's failure never touches another.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from hl7.mllp import HL7StreamReader, HL7StreamWriter, InvalidBlockError, start_hl7_server

from bridge.config.hints import MLLPConfig
from bridge.hints.ack import build_ack
from bridge.hints.hl7v2 import (
    AckCode,
    Header,
    HL7Error,
    MessageRules,
    Refusal,
    Rejection,
    as_text,
    read_header,
    read_hint,
)
from bridge.hints.limits import TokenBucket, take_all
from bridge.hints.model import Hint
from bridge.hints.writer import HintWriteError
from bridge.metrics import Metrics

log = logging.getLogger(__name__)

STAGE = "listener"
_RATE_LIMITED = Refusal(
    AckCode.ERROR, Rejection.RATE_LIMITED, HL7Error.INTERNAL_ERROR, "too many messages: resend later"
)
_FRAMING = Refusal(
    AckCode.ERROR, Rejection.FRAMING, HL7Error.DATA_TYPE_ERROR, "the block does not start with <VT> (0x0B)"
)


class HintSink(Protocol):
    async def write(self, hint: Hint) -> None:
        """Store the hint durably; raise HintWriteError if it was not stored."""
        ...


@dataclass(eq=False)  # hashed by identity: one per connection
class _Client:
    task: asyncio.Task[None]
    busy: bool = False  # between reading a message and sending its ACK


class MLLPListener:
    def __init__(
        self,
        connection: str,
        cfg: MLLPConfig,
        rules: MessageRules,
        sink: HintSink,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.connection = connection
        self.cfg = cfg
        self.rules = rules
        self._sink = sink
        self._metrics = metrics if metrics is not None else Metrics()
        self._total = TokenBucket(cfg.messages_per_second, cfg.burst)
        self._server: asyncio.Server | None = None
        self._clients: set[_Client] = set()
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind and accept; raises OSError when the address is taken or not allowed."""
        self._stopping = False
        self._server = await start_hl7_server(
            self._client, self.cfg.host, self.cfg.port, limit=self.cfg.max_message_bytes
        )
        log.info("%s: listening for HL7v2 over MLLP on %s:%d", self.connection, self.cfg.host, self.port)

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one chosen for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the listener is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting; idle connections close at once, a message being handled gets its ACK first
        (at most `grace_s`)."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for client in list(self._clients):
            if not client.busy:
                client.task.cancel()
        tasks = [c.task for c in self._clients]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        log.info("%s: MLLP listener stopped", self.connection)

    async def __aenter__(self) -> MLLPListener:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- one connection ----------------------------------------------------------------------------
    async def _client(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping or len(self._clients) >= self.cfg.max_connections:
            self._metrics.hint_listener_connections.labels(self.connection, "refused").inc()
            writer.close()
            return
        client = _Client(task)
        self._clients.add(client)
        self._metrics.hint_listener_connections.labels(self.connection, "accepted").inc()
        self._metrics.hint_listener_open.labels(self.connection).inc()
        try:
            await self._serve(client, reader, writer)
        except asyncio.CancelledError:
            pass  # stopped: the connection closes below
        except Exception as exc:  # noqa: BLE001 - one connection's failure never stops the listener
            log.warning("%s: MLLP connection closed after %s", self.connection, type(exc).__name__)
        finally:
            self._clients.discard(client)
            self._metrics.hint_listener_open.labels(self.connection).dec()
            writer.close()

    async def _serve(self, client: _Client, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        bucket = TokenBucket(self.cfg.connection_messages_per_second, self.cfg.burst)
        while not self._stopping:
            client.busy = False
            try:
                block = await asyncio.wait_for(reader.readblock(), self.cfg.idle_timeout_s)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return  # idle, or the peer closed
            except InvalidBlockError:
                client.busy = True
                self._received()
                await self._send(writer, self._refuse(None, _FRAMING))
                continue
            except ValueError:  # larger than max_message_bytes; the rest of it is still on the wire
                self._received()
                refusal = Refusal(
                    AckCode.REJECT,
                    Rejection.OVERSIZED,
                    HL7Error.INTERNAL_ERROR,
                    f"the message is larger than {self.cfg.max_message_bytes} bytes",
                )
                await self._send(writer, self._refuse(None, refusal))
                return
            client.busy = True
            self._received()
            await self._send(writer, await self._answer(block, bucket))

    async def _send(self, writer: HL7StreamWriter, ack: bytes) -> None:
        writer.writeblock(ack)
        await asyncio.wait_for(writer.drain(), self.cfg.idle_timeout_s)

    # -- one message -------------------------------------------------------------------------------
    async def _answer(self, block: bytes, bucket: TokenBucket) -> bytes:
        received_at = dt.datetime.now(dt.UTC)
        text = as_text(block)
        header = read_header(text)
        if isinstance(header, Refusal):
            return self._refuse(None, header)
        if not take_all(bucket, self._total):
            return self._refuse(header, _RATE_LIMITED)
        hint = read_hint(text, header, self.rules, received_at)
        if isinstance(hint, Refusal):
            return self._refuse(header, hint)
        try:
            await asyncio.wait_for(self._sink.write(hint), self.cfg.ack_timeout_s)
        except (HintWriteError, TimeoutError) as exc:
            log.warning("%s: hint of message %s not stored: %s", self.connection, header.control_id, exc)
            store = Refusal(
                AckCode.ERROR, Rejection.STORE_FAILED, HL7Error.INTERNAL_ERROR, "not stored: resend later"
            )
            return self._refuse(header, store)
        self._metrics.hints_accepted.labels(self.connection, STAGE).inc()
        self._metrics.hint_acks.labels(self.connection, AckCode.ACCEPT.value).inc()
        return build_ack(header, AckCode.ACCEPT, self.cfg.ack_application)

    def _received(self) -> None:
        self._metrics.hints_received.labels(self.connection, STAGE).inc()

    def _refuse(self, header: Header | None, refusal: Refusal) -> bytes:
        self._metrics.hints_rejected.labels(self.connection, STAGE, refusal.reason.value).inc()
        self._metrics.hint_acks.labels(self.connection, refusal.code.value).inc()
        # debug only: a flood of bad messages must not become a flood of log lines (the metrics count them)
        control = header.control_id if header is not None else "-"
        log.debug("%s: message %s answered %s: %s", self.connection, control, refusal.code, refusal.text)
        return build_ack(header, refusal.code, self.cfg.ack_application, refusal)
