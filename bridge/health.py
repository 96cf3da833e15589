"""/metrics, /healthz and /readyz on the bridge's HTTP server.

* /healthz answers whether the process is alive *and its event loop is turning*: a heartbeat task stamps
  the time every second, so a loop that is blocked or dead fails the check instead of looking healthy.
* /readyz answers whether this process can do its work now: Kafka answers, the schema registry answers,
  it is a member of its group (and not fenced), and every connection it owns is open, can get an access
  token and has no failing task; connections another process owns are listed as such. Each check says
  why it failed, never with a secret in it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.metrics import Metrics
from bridge.web import WebResponse, WebServer

log = logging.getLogger(__name__)

Check = Callable[[], "str | None"]  # raises with a readable message when not ready; may return a note


@dataclass
class Heartbeat:
    interval_s: float = 1.0
    stale_after_s: float = 15.0
    last: float = field(default_factory=time.monotonic)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.last = time.monotonic()
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass

    def age_s(self) -> float:
        return time.monotonic() - self.last


def add_health_routes(
    server: WebServer, *, metrics: Metrics, heartbeat: Heartbeat, checks: Mapping[str, Check]
) -> None:
    def metrics_page() -> WebResponse:
        return WebResponse(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)

    def healthz() -> WebResponse:
        age = heartbeat.age_s()
        if age > heartbeat.stale_after_s:
            return WebResponse.json({"status": "stalled", "event_loop_silent_s": round(age, 1)}, 503)
        return WebResponse.json({"status": "ok"})

    def readyz() -> WebResponse:
        results: dict[str, Any] = {}
        ready = True
        for name, check in checks.items():
            try:
                note = check()
                results[name] = "ok" if note is None else f"ok: {note}"
            except Exception as exc:  # noqa: BLE001 - any failure is a "not ready" with its reason
                ready = False
                results[name] = f"{type(exc).__name__}: {exc}"[:300]
        return WebResponse.json(
            {"status": "ready" if ready else "not ready", "checks": results}, 200 if ready else 503
        )

    server.add_route("/metrics", metrics_page)
    server.add_route("/healthz", healthz)
    server.add_route("/readyz", readyz)


def kafka_check(list_topics: Callable[..., Any], timeout_s: float = 3.0) -> Check:
    def check() -> None:
        list_topics(timeout=timeout_s)

    return check


def registry_check(get_subjects: Callable[[], Any]) -> Check:
    def check() -> None:
        get_subjects()

    return check


def token_check(
    loop: asyncio.AbstractEventLoop, get_token: Callable[[], Any], timeout_s: float = 10.0
) -> Check:
    """Runs the connection's (async) token getter on the bridge's event loop, from the web thread."""

    def check() -> None:
        future = asyncio.run_coroutine_threadsafe(get_token(), loop)
        try:
            future.result(timeout_s)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise TimeoutError(f"no token within {timeout_s:.0f}s") from exc

    return check
