"""Outermost ASGI layer: logs every Epic-path request and applies injected faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from epic_sim.config import EPIC_PATH_PREFIX
from epic_sim.faults import FaultInjector, FaultRule
from epic_sim.outcomes import error
from epic_sim.requestlog import RequestLog

# Handlers that read parameters from a body (POST _search) add them to the log entry found here.
LOG_ENTRY_KEY = "epic_sim.log_entry"


def resource_of(path: str) -> str | None:
    for marker in ("/FHIR/R4/", "/FHIR/STU3/"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest.split("/", 1)[0] or None
    return None


def abort_connection(send: Send) -> bool:
    """Close the client socket with no (further) response.

    ASGI has no "drop the connection" message; uvicorn's `send` is a bound method of its per-request
    cycle, which holds the transport. Marking the cycle disconnected stops uvicorn writing a 500.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return False
    transport.close()
    cycle.disconnected = True  # type: ignore[union-attr]
    return True


class DroppedConnectionError(Exception):
    """Raised when the server cannot close the socket itself; uvicorn then aborts the response."""


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        faults: FaultInjector,
        log: RequestLog,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.app = app
        self.faults = faults
        self.log = log
        self.clock = clock  # when set, responses carry a Date from this (skewed) clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.clock is not None:
            send = self._dated(send)
        await self._handle(scope, receive, send)

    def _dated(self, send: Send) -> Send:
        clock = self.clock
        assert clock is not None

        async def dated_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                headers.append((b"date", formatdate(clock(), usegmt=True).encode()))
                message = {**message, "headers": headers}
            await send(message)

        # abort_connection() needs the server's own send; keep it reachable.
        dated_send.__self__ = getattr(send, "__self__", None)  # type: ignore[attr-defined]
        return dated_send

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(EPIC_PATH_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        entry = self.log.start(scope["method"], scope["path"], query, headers.get("epic-client-id"))
        scope[LOG_ENTRY_KEY] = entry

        decision = self.faults.decide(scope["method"], scope["path"], resource_of(scope["path"]))
        if decision.latency_ms:
            await asyncio.sleep(decision.latency_ms / 1000)
        rule = decision.rule
        if rule is not None:
            entry["fault"] = rule.kind
            if rule.kind == "drop":
                entry["status"] = 0
                if not abort_connection(send):
                    raise DroppedConnectionError
                return
            status = rule.http_status
            if status is not None:
                entry["status"] = status
                await _send_error(send, status, rule)
                return

        async def logging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        try:
            if rule is not None and rule.kind == "truncate":
                await self._truncated(scope, receive, send, entry)
            else:
                await self.app(scope, receive, logging_send)
        finally:
            # Set by OAuthServer once it has identified the client (token endpoint or bearer check).
            authenticated = (scope.get("state") or {}).get("client_id")
            entry["auth_client_id"] = authenticated
            if entry["client_id"] is None:
                entry["client_id"] = authenticated

    async def _truncated(self, scope: Scope, receive: Receive, send: Send, entry: dict[str, Any]) -> None:
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        assert start is not None
        entry["status"] = start["status"]
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": start["status"], "headers": headers})
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        if not abort_connection(send):
            raise DroppedConnectionError


async def _send_error(send: Send, status: int, rule: FaultRule) -> None:
    texts = {429: "Too many requests", 503: "Service unavailable", 500: "Internal server error"}
    body = json.dumps(
        error(
            "transient" if status in (429, 503) else "exception", texts.get(status, f"Injected HTTP {status}")
        )
    ).encode()
    headers = [
        (b"content-type", b"application/fhir+json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    if rule.retry_after is not None:
        headers.append((b"retry-after", rule.retry_after.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
