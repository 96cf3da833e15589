"""The operator's flow with real processes: `epic-bridge keys generate`, `epic-bridge keys serve` (the JWK Set
the simulator fetches), then `epic-bridge check` against the simulator."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "bridge.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_generate_serve_register_check(epic_sim: Any, tmp_path: Path) -> None:
    configs = tmp_path / "connect-configs"
    configs.mkdir()
    env = {**os.environ, "EPIC_BRIDGE_CONFIG_DIR": str(configs), "PYTHONPATH": str(REPO)}
    key = tmp_path / "keys" / "ops.pem"
    out = subprocess.run(
        [*CLI, "keys", "generate", "--out", str(key)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    kid = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("kid: "))
    (configs / "ops.json").write_text(
        json.dumps(
            {
                "fhir_base_url": epic_sim.fhir_base,
                "auth": {
                    "method": "backend_services",
                    "client_id": "ops",
                    "keys": [{"private_key": {"file": str(key)}}],
                },
                "resources": {"Patient": {"triggers": ["created", "updated"]}},
            }
        )
    )
    port = free_port()
    server = subprocess.Popen(
        [*CLI, "keys", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
        deadline = time.monotonic() + 30
        while True:
            try:
                jwks = httpx.get(url, timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None, "keys serve did not start"
                time.sleep(0.2)
        assert [k["kid"] for k in jwks["keys"]] == [kid]  # kid defaults to the thumbprint, as generated
        epic_sim.register_client(
            client_id="ops", auth_methods=["private_key_jwt"], jwks_url=url, scopes=["system/Patient.rs"]
        )
        check = subprocess.run(
            [*CLI, "check", "ops", "--json"], env=env, capture_output=True, text=True, timeout=120
        )
        report = json.loads(check.stdout)
        assert check.returncode == 0 and report["ok"], check.stdout + check.stderr
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
