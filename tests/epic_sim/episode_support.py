"""Helpers for the episode-model tests (no tests here): play simulated time, read the ground truth."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from sim_support import Fhir, matches

from epic_sim.server import SimServer

DAY = 86400.0


def play(server: SimServer, until_s: float, speed: float, timeout_s: float = 120) -> dict[str, Any]:
    """Run the episodes model at `speed` until it has applied everything due by `until_s`, then pause it."""
    server.admin.put("/admin/activity", json={"speed": speed}).raise_for_status()
    deadline = time.monotonic() + timeout_s
    while True:
        stats: dict[str, Any] = server.admin.get("/admin/activity").json()
        if stats["next_due_s"] is None or stats["next_due_s"] > until_s:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)
    server.admin.put("/admin/activity", json={"speed": 0}).raise_for_status()
    paused: dict[str, Any] = server.admin.get("/admin/activity").json()
    return paused


def ground_truth(server: SimServer) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    while True:
        page = server.admin.get("/admin/ground-truth", params={"since": len(records), "limit": 5000}).json()
        records += page["changes"]
        if len(records) >= page["last_seq"]:
            return records


def fhir_digest(fhir: Fhir, rtype: str, rid: str) -> str:
    response = fhir.get(f"{rtype}/{rid}")
    assert response.status_code == 200, response.text
    canonical = json.dumps(response.json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def search_ids(fhir: Fhir, rtype: str, **params: Any) -> set[str]:
    return {r["id"] for bundle in fhir.search_all(rtype, **params) for r in matches(bundle)}
