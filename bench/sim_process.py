"""The Epic simulator as a process of its own, for benchmarks that must not share its CPU with the bridge."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def start_simulator(port: int, patients: int, log: Path, *, seed: int) -> subprocess.Popen[bytes]:
    """`epic-sim serve` on loopback `port`, returned once it answers (exits the benchmark if it does not)."""
    args = [
        str(BIN / "epic-sim"),
        "serve",
        "--port",
        str(port),
        "--patients",
        str(patients),
        "--seed",
        str(seed),
    ]
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/admin/stats", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the simulator did not start; see {log}")
        time.sleep(0.3)
