"""Background clinical activity: creates and updates of all five resource types at a set rate."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from epic_sim.background import BackgroundLoop
from epic_sim.roster import join_roster
from epic_sim.seed import (
    LABS,
    appointment_resource,
    encounter_resource,
    epic_id,
    lab_observation,
    note_resource,
    patient_resource,
    vital_observation,
)
from epic_sim.store import Store, StoredRow


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Activity:
    """Each step makes one hospital-like change; `run()` steps at `rate_per_s` until cancelled."""

    def __init__(self, store: Store, *, seed: int, rate_per_s: float = 0.0) -> None:
        self.store = store
        self.rate_per_s = rate_per_s
        self.changes: Counter[str] = Counter()
        self._rng = random.Random(f"{seed}:activity")
        self._wake = asyncio.Event()
        self._loop = BackgroundLoop(self.run)
        self._ops: list[tuple[str, Callable[[], str | None]]] = [
            ("Patient.create", self._create_patient),
            ("Patient.update", self._update_patient),
            ("Encounter.create", self._create_encounter),
            ("Encounter.update", self._update_encounter),
            ("Appointment.create", self._create_appointment),
            ("Appointment.update", self._update_appointment),
            ("Observation.create", self._create_observation),
            ("Observation.update", self._update_observation),
            ("DocumentReference.create", self._create_note),
            ("DocumentReference.update", self._update_note),
        ]
        self._weights = [1, 2, 3, 2, 3, 3, 8, 3, 3, 2]

    # --- lifecycle --------------------------------------------------------------------------------
    def set_rate(self, rate_per_s: float) -> None:
        if rate_per_s < 0:
            raise ValueError("rate_per_s must be >= 0")
        self.rate_per_s = rate_per_s
        self._wake.set()

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def run(self) -> None:
        while True:
            if self.rate_per_s <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.step()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1 / self.rate_per_s)

    def step(self, count: int = 1) -> list[str]:
        """Make `count` changes now; returns "Type.op/id" for each."""
        done = []
        for _ in range(count):
            name, op = self._rng.choices(self._ops, weights=self._weights)[0]
            rid = op()
            if rid is not None:
                self.changes[name] += 1
                done.append(f"{name}/{rid}")
        return done

    def stats(self) -> dict[str, Any]:
        return {
            "rate_per_s": self.rate_per_s,
            "changes": dict(self.changes),
            "total": sum(self.changes.values()),
        }

    # --- helpers ----------------------------------------------------------------------------------
    def _random_row(self, rtype: str, patient: str | None = None) -> StoredRow | None:
        if patient is not None:
            rows = self.store.query(
                "SELECT seq, type, id, version, last_updated, json FROM resources WHERE type=? AND patient=? "
                "ORDER BY seq",
                (rtype, patient),
            )
            return self._rng.choice(rows) if rows else None
        low = self.store.scalar("SELECT MIN(seq) FROM resources WHERE type=?", (rtype,))
        high = self.store.scalar("SELECT MAX(seq) FROM resources WHERE type=?", (rtype,))
        if low is None:
            return None
        pick = self._rng.randint(int(low), int(high))
        rows = self.store.query(
            "SELECT seq, type, id, version, last_updated, json FROM resources WHERE type=? AND seq>=? "
            "ORDER BY seq LIMIT 1",
            (rtype, pick),
        )
        return rows[0] if rows else None

    def _patient_id(self) -> str | None:
        row = self._random_row("Patient")
        return row.id if row else None

    def _new_id(self, rtype: str) -> str:
        while True:
            rid = epic_id(self._rng)
            if not self.store.exists(rtype, rid):
                return rid

    def _update(self, rtype: str, change: Callable[[dict[str, Any]], None]) -> str | None:
        row = self._random_row(rtype)
        if row is None:
            return None
        resource = json.loads(row.json)
        change(resource)
        self.store.update(resource)
        return row.id

    # --- operations -------------------------------------------------------------------------------
    def _create_patient(self) -> str | None:
        gender = self._rng.choice(("male", "female"))
        given = self._rng.choice(("Alex", "Sam", "Jordan", "Taylor", "Casey", "Riley"))
        family = self._rng.choice(("Walker", "Young", "King", "Wright", "Scott", "Green"))
        birth = (datetime(1950, 1, 1) + timedelta(days=self._rng.randint(0, 365 * 60))).strftime("%Y-%m-%d")
        pid = self._new_id("Patient")
        mrn = str(800000 + self.store.count("Patient"))
        self.store.insert(patient_resource(self._rng, pid, family, [given], birth, gender, mrn))
        join_roster(self.store, pid)
        return pid

    def _update_patient(self) -> str | None:
        def change(p: dict[str, Any]) -> None:
            p.setdefault("telecom", []).insert(
                0, {"system": "phone", "use": "home", "value": f"608-555-{self._rng.randint(1000, 9999)}"}
            )
            p["telecom"] = p["telecom"][:3]

        return self._update("Patient", change)

    def _create_encounter(self) -> str | None:
        pid = self._patient_id()
        if pid is None:
            return None
        eid = self._new_id("Encounter")
        self.store.insert(
            encounter_resource(self._rng, eid, pid, _now(), str(self._rng.randint(10**8, 10**9)))
        )
        return eid

    def _update_encounter(self) -> str | None:
        def change(e: dict[str, Any]) -> None:
            e["status"] = self._rng.choice(("in-progress", "finished"))
            e.setdefault("period", {})["end"] = _instant(_now())

        return self._update("Encounter", change)

    def _create_appointment(self) -> str | None:
        pid = self._patient_id()
        if pid is None:
            return None
        aid = self._new_id("Appointment")
        start = _now().replace(minute=0, second=0) + timedelta(days=self._rng.randint(1, 60))
        self.store.insert(
            appointment_resource(aid, pid, start, "booked", str(self._rng.randint(10**7, 10**8)))
        )
        return aid

    def _update_appointment(self) -> str | None:
        def change(a: dict[str, Any]) -> None:
            a["status"] = self._rng.choice(("arrived", "fulfilled", "cancelled", "noshow", "checked-in"))
            a["comment"] = f"Status changed {_instant(_now())}"

        return self._update("Appointment", change)

    def _create_observation(self) -> str | None:
        encounter = self._random_row("Encounter")
        if encounter is None:
            return None
        pid = json.loads(encounter.json)["subject"]["reference"].split("/", 1)[1]
        oid = self._new_id("Observation")
        when = _instant(_now())
        if self._rng.random() < 0.6:
            obs = vital_observation(self._rng, oid, pid, encounter.id, when, self._rng.randint(0, 4))
        else:
            obs = lab_observation(self._rng, oid, pid, encounter.id, when, self._rng.randrange(len(LABS)))
        self.store.insert(obs)
        return oid

    def _update_observation(self) -> str | None:
        def change(o: dict[str, Any]) -> None:
            o["status"] = "amended"
            for holder in [o, *o.get("component", [])]:
                quantity = holder.get("valueQuantity")
                if isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float):
                    quantity["value"] = round(quantity["value"] + self._rng.choice((-1, 1)) * 1.5, 1)
            o["issued"] = _instant(_now())

        return self._update("Observation", change)

    def _create_note(self) -> str | None:
        encounter = self._random_row("Encounter")
        if encounter is None:
            return None
        pid = json.loads(encounter.json)["subject"]["reference"].split("/", 1)[1]
        nid = self._new_id("DocumentReference")
        text = f"Telephone encounter note recorded {_instant(_now())}."
        self.store.insert(note_resource(nid, pid, encounter.id, _instant(_now()), text))
        return nid

    def _update_note(self) -> str | None:
        def change(d: dict[str, Any]) -> None:
            d["docStatus"] = "amended"
            attachment = d["content"][0]["attachment"]
            text = base64.b64decode(attachment.get("data", "")).decode(errors="replace")
            text += f"\nAddendum {_instant(_now())}: reviewed."
            attachment["data"] = base64.b64encode(text.encode()).decode()

        return self._update("DocumentReference", change)
