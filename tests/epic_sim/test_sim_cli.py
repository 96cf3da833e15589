"""`epic-sim serve --patients 1000` starts in seconds and answers a search (the real CLI, as a subprocess)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from sim_support import ALL_SCOPES, JSON, JWT_BEARER, public_jwks

MRN = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _epic_sim() -> list[str]:
    script = Path(sys.executable).with_name("epic-sim")
    return [str(script)] if script.exists() else [shutil.which("epic-sim") or "epic-sim"]


def test_serve_1000_patients_starts_in_seconds_and_answers(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    port = _free_port()
    clients = tmp_path / "clients.json"
    clients.write_text(
        json.dumps(
            [
                {
                    "client_id": "cli-test",
                    "auth_methods": ["private_key_jwt"],
                    "jwks_url": None,
                    "jwks": public_jwks(rsa_key),
                    "client_secret": None,
                    "scopes": ALL_SCOPES,
                    "redirect_uris": [],
                    "token_lifetime_s": None,
                }
            ]
        )
    )
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    process = subprocess.Popen(
        [
            *_epic_sim(),
            "serve",
            "--port",
            str(port),
            "--patients",
            "1000",
            "--clients",
            str(clients),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                if httpx.get(f"{base}/interconnect-fhir-oauth/api/FHIR/R4/metadata").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() - started < 30, "epic-sim did not answer within 30 s"
            time.sleep(0.1)
        startup = time.monotonic() - started
        print(f"epic-sim serve --patients 1000 answered after {startup:.1f}s")

        token_url = f"{base}/interconnect-fhir-oauth/oauth2/token"
        now = int(time.time())
        assertion = jwt.encode(
            {"iss": "cli-test", "sub": "cli-test", "aud": token_url, "jti": f"j{now}", "exp": now + 240},
            rsa_key,
            algorithm="RS384",
            headers={"kid": "k1"},
        )
        token = httpx.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": assertion,
            },
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Accept": JSON, "Epic-Client-ID": "cli-test"}
        fhir = f"{base}/interconnect-fhir-oauth/api/FHIR/R4"
        found: dict[str, Any] = httpx.get(
            f"{fhir}/Patient", params={"identifier": f"{MRN}|203711"}, headers=headers
        ).json()
        assert found["entry"][0]["resource"]["name"][0]["family"] == "Lin"
        stats = httpx.get(f"{base}/admin/stats").json()
        assert stats["counts"]["Patient"] == 1000
        last = httpx.get(f"{base}/admin/resources/Patient", params={"offset": 999, "limit": 1}).json()["ids"][
            0
        ]
        vitals = httpx.get(
            f"{fhir}/Observation", params={"patient": last, "category": "vital-signs"}, headers=headers
        ).json()
        assert vitals["total"] == 20
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serve_generic_with_start_up_faults(tmp_path: Path) -> None:
    port = _free_port()
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([{"kind": "503", "count": 1, "retry_after": "1", "path": "/metadata$"}]))
    db = tmp_path / "sim.sqlite"
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            *_epic_sim(),
            "serve",
            "--port",
            str(port),
            "--patients",
            "3",
            "--profile",
            "generic",
            "--faults",
            str(faults),
            "--db",
            str(db),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None
            try:
                first = httpx.get(f"{base}/admin/stats")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert first.json()["profile"] == "generic"
        metadata = f"{base}/interconnect-fhir-oauth/api/FHIR/R4/metadata"
        faulted = httpx.get(metadata)
        assert faulted.status_code == 503 and faulted.headers["retry-after"] == "1"
        assert httpx.get(metadata).json()["software"]["name"] != "Epic"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
    assert db.stat().st_size > 0  # --db keeps the data
