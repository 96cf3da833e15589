"""A static roster's MRNs against the real simulator: an MRN that matches no patient yet (registered later
in Epic) is looked up again after `mrn_retry_s`, not remembered as "none" for the life of the process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from source_support import connection_config, sim_create

from bridge.config.models import StaticRoster
from bridge.connection import Connection
from bridge.source.roster import StaticPatients

MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"
LIN = "eq081-VQEgP8drUUqCWzHfw3"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_unmatched_mrn_is_looked_up_again_after_the_retry_time(
    epic_sim_factory: Callable[..., Any], tmp_path: Path
) -> None:
    sim = epic_sim_factory(profile="epic", patients=4, seed=3)
    roster = {"source": "static", "mrns": ["203711", "990077"], "mrn_system": MRN_SYSTEM, "mrn_retry_s": 60}
    cfg = connection_config(sim, tmp_path, prefix="unused", roster=roster)
    assert isinstance(cfg.roster, StaticRoster)
    clock = Clock()
    async with await Connection.open(cfg) as conn:
        patients = StaticPatients(cfg.roster, conn.fhir, await conn.fhir.capabilities(), clock=clock)

        def lookups() -> int:
            asked = [r for r in sim.requests() if r["path"].endswith("/Patient")]
            return sum(1 for r in asked if "identifier" in r["query"])

        assert [p async for p in patients.patient_ids(None)] == [LIN]  # 990077 is nobody yet
        asked = lookups()
        assert asked == 2

        # the hospital registers the patient; within the retry time the bridge does not ask again
        new = sim_create(
            sim,
            {
                "resourceType": "Patient",
                "identifier": [{"use": "usual", "system": MRN_SYSTEM, "value": "990077"}],
                "name": [{"use": "official", "family": "Later", "given": ["Lee"]}],
                "gender": "female",
                "birthDate": "1991-04-05",
            },
        )
        clock.now += 59
        assert [p async for p in patients.patient_ids(None)] == [LIN]
        assert lookups() == asked  # the matched MRN is kept, the unmatched one waits

        clock.now += 2
        assert sorted([p async for p in patients.patient_ids(None)]) == sorted([LIN, new["id"]])
        assert lookups() == asked + 1
        assert sorted([p async for p in patients.patient_ids(None)]) == sorted([LIN, new["id"]])
        assert lookups() == asked + 1  # found: kept from now on
