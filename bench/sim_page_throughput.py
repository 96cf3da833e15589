"""How fast the simulator serves 1000-entry search pages over real HTTP.

    .venv/bin/python bench/sim_page_throughput.py [RESOURCES] [--seconds S] [--db PATH] [--keep]

Seeds RESOURCES (default 1,000,000) into a SQLite file, then, over real HTTP with a real token:
1. generic profile: `Observation?_count=1000` followed page by page through the next links;
2. epic profile: a patient-anchored `Observation?patient=..&category=..` whose result is large,
   served in Epic's default pages of 1000 through `sessionID` links.
Prints the machine, the seed time, and pages/s, resources/s, MB/s and ms/page for each.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import tempfile
import time
import uuid

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from machine import cpu_model

from epic_sim.seed import RESOURCES_PER_PATIENT, SANDBOX_PATIENTS, seed_store, vital_observation
from epic_sim.server import SimServer, run_simulator
from epic_sim.store import Store

HEAVY_PATIENT = SANDBOX_PATIENTS[0][1]
HEAVY_EXTRA = 20_000
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def seed(path: str, resources: int) -> None:
    patients = max(4, resources // RESOURCES_PER_PATIENT)
    store = Store(path)
    started = time.perf_counter()
    written = seed_store(store, patients=patients, seed=1, anchor_date="2026-06-01")
    seeded = time.perf_counter() - started
    # One patient with a large vital-signs history, so an Epic-profile search spans many 1000-entry pages.
    rng = random.Random(1)
    extra = (
        vital_observation(rng, f"heavy-{i}", HEAVY_PATIENT, None, "2026-01-01T10:00:00Z", 1 + i % 4)
        for i in range(HEAVY_EXTRA)
    )
    written += store.bulk_load(extra)
    size_mb = os.path.getsize(path) / 1e6
    store.close()
    print(
        f"seeded {written:,} resources ({patients:,} patients) in {seeded:.1f}s "
        f"({written / seeded:,.0f} resources/s); database {size_mb:,.0f} MB"
    )


def token(server: SimServer, key: rsa.RSAPrivateKey) -> str:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    server.register_client(
        client_id="bench",
        auth_methods=["private_key_jwt"],
        jwks={"keys": [{**jwk, "kid": "b"}]},
        jwks_url=None,
        client_secret=None,
        scopes=["system/Observation.rs"],
        redirect_uris=[],
        token_lifetime_s=None,
    )
    now = int(time.time())
    assertion = jwt.encode(
        {"iss": "bench", "sub": "bench", "aud": server.token_url, "jti": uuid.uuid4().hex, "exp": now + 240},
        key,
        algorithm="RS384",
        headers={"kid": "b"},
    )
    response = httpx.post(
        server.token_url,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        },
    )
    response.raise_for_status()
    access: str = response.json()["access_token"]
    return access


NEXT_LINK = re.compile(rb'"relation":"next","url":"([^"]+)"')
MATCH = b'"search":{"mode":"match"}'


def measure(
    label: str,
    server: SimServer,
    first_url: str,
    params: dict[str, str],
    seconds: float,
    key: rsa.RSAPrivateKey,
    *,
    parse: bool,
) -> None:
    """parse=False: the client only finds the next link and counts entries (measures the server)."""
    headers = {
        "Authorization": f"Bearer {token(server, key)}",
        "Accept": "application/fhir+json",
        "Epic-Client-ID": "bench",
    }
    pages = resources = nbytes = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    with httpx.Client(headers=headers, timeout=60) as client:
        url: str | None = None
        while time.perf_counter() < deadline:
            response = client.get(url) if url else client.get(first_url, params=params)
            response.raise_for_status()
            pages += 1
            nbytes += len(response.content)
            if parse:
                body = response.json()
                resources += sum(1 for e in body.get("entry", []) if e["search"]["mode"] == "match")
                url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
            else:
                resources += response.content.count(MATCH)
                found = NEXT_LINK.search(response.content[:4096])
                url = found.group(1).decode() if found else None
    elapsed = time.perf_counter() - started
    print(
        f"{label}: {pages} pages, {resources:,} resources in {elapsed:.1f}s -> "
        f"{pages / elapsed:.1f} pages/s, {resources / elapsed:,.0f} resources/s, "
        f"{nbytes / elapsed / 1e6:.1f} MB/s, {1000 * elapsed / pages:.0f} ms/page "
        f"({'client parses every page' if parse else 'client skips JSON parsing'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("resources", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--db", default=None, help="reuse/keep this SQLite file (seeded when empty)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary database")
    args = parser.parse_args()

    print(
        f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    path = args.db or os.path.join(tempfile.gettempdir(), f"epic-sim-bench-{os.getpid()}.sqlite")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        seed(path, args.resources)
    else:
        print(f"reusing {path}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    try:
        with run_simulator(profile="generic", db_path=path, patients=0, short_page_rate=0) as server:
            total = sum(server.stats()["counts"].values())
            print(f"store holds {total:,} resources")
            for parse in (False, True):
                measure(
                    "generic Observation?_count=1000",
                    server,
                    f"{server.fhir_base}Observation",
                    {"_count": "1000"},
                    args.seconds,
                    key,
                    parse=parse,
                )
        with run_simulator(profile="epic", db_path=path, patients=0, short_page_rate=0) as server:
            for parse in (False, True):
                measure(
                    "epic Observation?patient&category (pages of 1000)",
                    server,
                    f"{server.fhir_base}Observation",
                    {"patient": HEAVY_PATIENT, "category": "vital-signs"},
                    args.seconds,
                    key,
                    parse=parse,
                )
    finally:
        if not args.db and not args.keep:
            for suffix in ("", "-journal"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)


if __name__ == "__main__":
    main()
