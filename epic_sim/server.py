"""Running the simulator in-process: uvicorn in a background thread on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import httpx
import uvicorn

from epic_sim.app import build_app
from epic_sim.config import AUTHORIZE_PATH, FHIR_PREFIX, STU3_PREFIX, TOKEN_PATH, SimConfig


def make_config(**options: Any) -> SimConfig:
    known = {f.name for f in fields(SimConfig)}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown simulator options: {', '.join(sorted(unknown))}")
    return SimConfig(**options)


class SimServer:
    """A started simulator. `url` is the server root; see the attributes for the Epic-shaped URLs."""

    def __init__(self, config: SimConfig, *, startup_timeout_s: float = 60.0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((config.host, config.port))
        config.port = self._sock.getsockname()[1]
        self.config = config
        self.url = config.base_url
        self.fhir_base = f"{self.url}{FHIR_PREFIX}/"
        self.stu3_base = f"{self.url}{STU3_PREFIX}/"
        self.token_url = f"{self.url}{TOKEN_PATH}"
        self.authorize_url = f"{self.url}{AUTHORIZE_PATH}"
        try:
            self.app = build_app(config)
        except BaseException:
            self._sock.close()
            raise
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                log_level="warning",
                lifespan="on",
                access_log=False,
                timeout_graceful_shutdown=2,
                date_header=not config.clock_offset_s,  # a skewed Date comes from the edge layer
            )
        )
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"epic-sim:{config.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("epic-sim did not start")
            time.sleep(0.01)
        self.admin = httpx.Client(base_url=self.url, timeout=30)
        self.admin.get("/admin/stats").raise_for_status()

    @property
    def sim(self) -> Any:
        """The running instance's state (store, oauth, ...), for white-box tests."""
        return self.app.sim

    def register_client(self, **registration: Any) -> None:
        self.admin.post("/admin/clients", json=registration).raise_for_status()

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        response = self.admin.get("/admin/requests", params={"since": since})
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["requests"]
        return result

    def set_faults(self, **cfg: Any) -> None:
        """cfg is the PUT /admin/faults body: rules=[{...}], seed=n (or the fields of one rule)."""
        self.admin.put("/admin/faults", json=cfg).raise_for_status()

    def clear_faults(self) -> None:
        self.admin.delete("/admin/faults").raise_for_status()

    def expire_tokens(self) -> None:
        self.admin.post("/admin/tokens/expire").raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self.admin.get("/admin/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stop(self) -> None:
        if getattr(self, "admin", None) is not None:
            self.admin.close()
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def run_simulator(**options: Any) -> Iterator[SimServer]:
    """Run a simulator for the duration of the block (port 0 = a free port); options are SimConfig fields."""
    options.setdefault("port", 0)
    server = SimServer(make_config(**options))
    try:
        yield server
    finally:
        server.stop()
