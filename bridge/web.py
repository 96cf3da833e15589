"""The bridge's small HTTP server: a route table on one port (JWKS now; /metrics, /healthz, /readyz later).

Stdlib ``ThreadingHTTPServer`` in a daemon thread. Handlers are plain callables returning a
``WebResponse``; they run in server threads, so they must only read thread-safe state.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

JWKS_PATH = "/.well-known/jwks.json"


@dataclass(frozen=True)
class WebResponse:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> WebResponse:
        return cls(status, json.dumps(doc, indent=2).encode(), "application/json", dict(headers or {}))


Handler = Callable[[], WebResponse]


class WebServer:
    """Serves registered GET routes; ``port=0`` picks a free port (see ``.port`` after start)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port
        self._routes: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"WebServer({self.url if self._server else 'not started'})"

    def add_route(self, path: str, handler: Handler) -> None:
        with self._lock:
            self._routes[path] = handler

    def routes(self) -> list[str]:
        with self._lock:
            return sorted(self._routes)

    def _handler(self, path: str) -> Handler | None:
        with self._lock:
            return self._routes.get(path)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> WebServer:
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            server_version = "epic-bridge"
            sys_version = ""

            def _serve(self, head: bool) -> None:
                path = urlsplit(self.path).path
                handler = server._handler(path)
                if handler is None:
                    resp = WebResponse(404, b"not found\n")
                else:
                    try:
                        resp = handler()
                    except Exception:  # a broken handler must not kill the server thread
                        log.exception("handler for %s failed", path)
                        resp = WebResponse(500, b"internal error\n")
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                self.send_header("Content-Length", str(len(resp.body)))
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(resp.body)

            def do_GET(self) -> None:
                self._serve(head=False)

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("web: %s %s", self.command, urlsplit(self.path).path)

        self._server = ThreadingHTTPServer((self._host, self._requested_port), RequestHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="bridge-web", daemon=True)
        self._thread.start()
        log.info("bridge HTTP server on %s (%s)", self.url, ", ".join(self.routes()) or "no routes")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def jwks_handler(provider: Callable[[], dict[str, Any]]) -> Handler:
    """Serve the public JWK Set; ``provider`` is called per request so a rotation shows up at once."""

    def handle() -> WebResponse:
        return WebResponse.json(provider(), headers={"Cache-Control": "public, max-age=300"})

    return handle


def add_jwks_routes(server: WebServer, jwks_by_connection: dict[str, Callable[[], dict[str, Any]]]) -> None:
    """``/.well-known/jwks.json`` (every connection's public keys) and ``/.well-known/jwks/<name>.json``."""

    def combined() -> dict[str, Any]:
        keys: list[dict[str, Any]] = []
        seen: set[str] = set()
        for provider in jwks_by_connection.values():
            for key in provider().get("keys", []):
                if key.get("kid") not in seen:
                    seen.add(key.get("kid"))
                    keys.append(key)
        return {"keys": keys}

    server.add_route(JWKS_PATH, jwks_handler(combined))
    for name, provider in jwks_by_connection.items():
        server.add_route(f"/.well-known/jwks/{name}.json", jwks_handler(provider))
