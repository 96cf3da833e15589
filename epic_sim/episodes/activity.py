"""Plays the episode timetable against the store in (accelerated) real time, logs every change to the
ground truth and hands it to the HL7 feed.

Simulated time runs at `speed` times real time and is re-anchored whenever the speed changes, so a
pause (speed 0) or a change of pace keeps the sequence; only the wall-clock spacing follows the speed.
Between two changes the task sleeps until the next one is due. When the simulator falls behind (a slow
machine, a very high speed) changes are made as fast as possible, in order, and `lag_s` says by how much.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from epic_sim.background import BackgroundLoop
from epic_sim.config import SimConfig
from epic_sim.episodes.changes import Change, ClinicalChanges
from epic_sim.episodes.ground_truth import GroundTruth, instant_ms, read_digest
from epic_sim.episodes.timetable import Planned, Timetable
from epic_sim.hl7feed.messages import Hl7Message, build_message
from epic_sim.hl7feed.policy import FeedPolicy
from epic_sim.hl7feed.sender import MllpSender
from epic_sim.store import Store

log = logging.getLogger("epic_sim.episodes")


class SimClock:
    """Simulated seconds since the start: real seconds times `speed`, re-anchored on each speed change."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._anchor_real = time.monotonic()
        self._anchor_sim = 0.0

    def now(self) -> float:
        return self._anchor_sim + (time.monotonic() - self._anchor_real) * self.speed

    def set_speed(self, speed: float) -> None:
        self._anchor_sim = self.now()
        self._anchor_real = time.monotonic()
        self.speed = speed

    def real_seconds_until(self, t: float) -> float | None:
        """Real seconds until simulated time t (0 when past); None while paused."""
        if self.speed <= 0:
            return None
        return max(0.0, (t - self.now()) / self.speed)


def _reference_id(reference: Any, rtype: str) -> str | None:
    value = reference.get("reference") if isinstance(reference, dict) else None
    prefix = f"{rtype}/"
    return value[len(prefix) :] if isinstance(value, str) and value.startswith(prefix) else None


class EpisodeActivity:
    def __init__(self, store: Store, config: SimConfig) -> None:
        self.store = store
        self.profile = config.profile
        self.seed = config.seed
        self.clock = SimClock(config.activity_speed)
        self.truth = GroundTruth(config.ground_truth_path, keep=config.ground_truth_keep)
        self.changes = ClinicalChanges(store, config.seed)
        self.timetable: Timetable | None = None
        self.roster: list[str] = []
        self.counts: Counter[str] = Counter()
        self.applied_until_s = 0.0
        self.lag_s = 0.0
        self.policy: FeedPolicy | None = None
        self.sender: MllpSender | None = None
        if config.hl7_target is not None:
            host, _, port = config.hl7_target.rpartition(":")
            self.policy = FeedPolicy(config.seed, share=config.hl7_share, delay_s=config.hl7_delay_s)
            self.sender = MllpSender(
                host, int(port), queue_size=config.hl7_queue_size, on_outcome=self._hl7_outcome
            )
        self._run_tag = f"S{int(time.time()) & 0xFFFFFFFF:08x}-"
        self._wake = asyncio.Event()
        self._loop = BackgroundLoop(self.run)

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """The roster is the patients stored now, in storage order; the simulated clock starts at 0."""
        self.roster = self.store.ids("Patient", limit=max(1, self.store.count("Patient")))
        self.timetable = Timetable(len(self.roster), self.seed)
        self.clock = SimClock(self.clock.speed)
        self._wake = asyncio.Event()
        if self.sender is not None:
            self.sender.start()
        self._loop.start()
        log.info(
            "episodes model: %d patients, %d inpatients, speed %g",
            len(self.roster),
            len(self.timetable.inpatients),
            self.clock.speed,
        )

    async def stop(self) -> None:
        await self._loop.stop()
        if self.sender is not None:
            await self.sender.stop()
        self.truth.close()

    def set_speed(self, speed: float) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.clock.set_speed(speed)
        self._wake.set()

    async def run(self) -> None:
        assert self.timetable is not None
        while True:
            due = self.timetable.next_time()
            wait = None if due is None else self.clock.real_seconds_until(due)
            if wait is None or wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                continue
            planned = self.timetable.pop()
            self.lag_s = (self.clock.now() - planned.t) / max(self.clock.speed, 1e-9)
            try:
                self.step(planned)
            except Exception:
                # Data edited through the admin API can be anything; one change that cannot be made
                # must not end the activity: log it, count it, go on.
                self.counts["failed"] += 1
                log.exception(
                    "episodes: %s of %s failed; activity continues", planned.action, planned.episode
                )
            await asyncio.sleep(0)  # let requests in between changes, even when catching up

    # --- one change -------------------------------------------------------------------------------
    def step(self, planned: Planned) -> dict[str, Any] | None:
        """Make one planned change; returns its ground-truth record (None when it had to be skipped)."""
        self.applied_until_s = planned.t
        change = self.changes.apply(planned, self.roster[planned.patient])
        if change is None:
            self.counts["skipped"] += 1
            return None
        at = time.time()
        seq = self.truth.next_seq()
        outbound = self._message(seq, change)
        record = {
            "seq": seq,
            "at": instant_ms(at),
            "t_sim": round(planned.t, 3),
            "patient_id": change.patient_id,
            "resource_type": change.row.type,
            "resource_id": change.row.id,
            "kind": change.kind,
            "category": change.category,
            "action": planned.action,
            "episode": planned.episode,
            "episode_first": planned.step == 0,
            "source": planned.source,
            "hl7": outbound is not None,
            "hl7_type": outbound[0].type if outbound else None,
            "hl7_sent_at": None,
            "digest": read_digest(change.row, self.profile),
        }
        self.truth.add(record)
        if outbound is not None and self.sender is not None:
            self.sender.submit(seq, *outbound)
        self.counts[planned.source] += 1
        self.counts[f"{change.row.type}.{change.kind}"] += 1
        return record

    def _message(self, seq: int, change: Change) -> tuple[Hl7Message, float] | None:
        if self.policy is None:
            return None
        delay = self.policy.draw()  # drawn for every change, so the choices follow the seed
        patient = self.store.get("Patient", change.patient_id)
        if delay is None or patient is None:
            return None
        resource = change.resource
        message = build_message(
            resource,
            change.kind,
            patient=json.loads(patient.json),
            encounter=self._encounter_of(resource),
            control_id=f"{self._run_tag}{seq}",
            now=datetime.now(UTC),
        )
        return (message, delay) if message is not None else None

    def _hl7_outcome(self, seq: int, fields: dict[str, Any]) -> None:
        sent_at = fields.get("hl7_sent_at")
        if isinstance(sent_at, float):
            fields = {**fields, "hl7_sent_at": instant_ms(sent_at)}
        self.truth.amend(seq, fields)

    def _encounter_of(self, resource: dict[str, Any]) -> dict[str, Any] | None:
        rtype = resource["resourceType"]
        if rtype == "Encounter":
            return resource
        if rtype == "Observation":
            eid = _reference_id(resource.get("encounter"), "Encounter")
        elif rtype == "DocumentReference":
            eid = _reference_id(((resource.get("context") or {}).get("encounter") or [None])[0], "Encounter")
        else:
            return None
        row = self.store.get("Encounter", eid) if eid else None
        return json.loads(row.json) if row else None

    # --- reporting --------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        timetable = self.timetable
        due = timetable.next_time() if timetable else None
        sources = ("inpatient", "visit", "background")
        return {
            "model": "episodes",
            "speed": self.clock.speed,
            "sim_time_s": round(self.clock.now(), 3),
            "applied_until_s": round(self.applied_until_s, 3),
            "next_due_s": None if due is None else round(due, 3),
            "lag_s": round(self.lag_s, 3),
            "roster": len(self.roster),
            "inpatients": len(timetable.inpatients) if timetable else 0,
            "pending": timetable.pending() if timetable else 0,
            "total": sum(self.counts[s] for s in sources),
            "changes": {s: self.counts[s] for s in sources},
            "by_type": {k: v for k, v in sorted(self.counts.items()) if "." in k},
            "skipped": self.counts["skipped"],
            "failed": self.counts["failed"],
            "ground_truth": {"last_seq": self.truth.last_seq, "path": self.truth.path},
            "hl7": self.sender.stats() if self.sender else None,
        }
