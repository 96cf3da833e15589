"""Detection latency of the scan schedule on a model of a hospital's change activity (no Kafka, no HTTP).

    .venv/bin/python bench/schedule_model.py [--patients 5000] [--rate 25] [--hours 10] [--warmup-hours 2]
                                             [--seed 12] [--policy uniform,adaptive]

The workload (seeded, reproducible; the same for every policy):
* inpatients: 3 % of the roster at any time (stays of 2-6 days, admissions keep the share), a change
  every ~30 min each, all day, spread over vitals, labs, notes and encounter updates; an admission
  starts with an Encounter change, a discharge ends with one;
* outpatient visits: each patient about once per 60 days, ~6 changes over ~1 h (appointment status,
  encounter, vitals, a note, appointment and encounter again);
* a background trickle of one change per patient per 200 days (demographics, an amended old result).
Each patient has 6 units (one search each): Patient, Appointment, Encounter, Observation vital-signs,
Observation laboratory, DocumentReference; a scan is one request.

Each policy runs the bridge's own schedule code (bridge.source.schedule: policy, SQLite store with its
index, scheduler with leases and staged writes applied per batch) in simulated time: every second the
scanner takes the `rate` most urgent units (work-conserving), scans them one after another, records
each outcome and applies the batch's writes, as the poll loop does after each commit. A change is
detected by the first scan of its unit that starts after it. Changes of the warm-up are not counted;
after the measured period no new change happens and scanning goes on until every change was
detected or the maximum staleness passed ("missed" counts what was still undetected).

Prints, per policy: detection latency p50/p90/p95/max of all changes and of the first change of each
episode, changes missed, requests spent, peak requests/s; then the ratios, and last the lines
`uniform p50: <s> s` ... `adaptive p95: <s> s`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import resource
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from machine import describe

from bridge.source.schedule.codec import UnitKind
from bridge.source.schedule.policy import Mode, Policy, ScanOutcome
from bridge.source.schedule.scheduler import Scheduler
from bridge.source.schedule.store import ScheduleStore

CONNECTION = "model"
PATIENT = UnitKind("Patient")
APPOINTMENT = UnitKind("Appointment")
ENCOUNTER = UnitKind("Encounter")
VITALS = UnitKind("Observation", "vital-signs")
LABS = UnitKind("Observation", "laboratory")
NOTES = UnitKind("DocumentReference")
KINDS = (PATIENT, APPOINTMENT, ENCOUNTER, VITALS, LABS, NOTES)
WINDOWED = (APPOINTMENT, ENCOUNTER, VITALS, LABS, NOTES)

DAY = 86_400.0
INPATIENT_SHARE = 0.03
INPATIENT_CHANGE_S = 1800.0
STAY_DAYS = (2.0, 6.0)
VISIT_EVERY_DAYS = 60.0
VISIT_S = 3600.0
BACKGROUND_EVERY_DAYS = 200.0
INPATIENT_MIX = ((VITALS, 0.4), (LABS, 0.3), (NOTES, 0.2), (ENCOUNTER, 0.1))
VISIT_CHANGES = (APPOINTMENT, ENCOUNTER, VITALS, NOTES, APPOINTMENT, ENCOUNTER)


@dataclass(frozen=True)
class Change:
    at: float
    patient: int
    kind: UnitKind
    first: bool  # the first change of its episode
    episode: str  # inpatient, visit, background


def pid(i: int) -> str:
    return f"p{i:06d}"


def _pick(rng: random.Random) -> UnitKind:
    r, acc = rng.random(), 0.0
    for kind, p in INPATIENT_MIX:
        acc += p
        if r < acc:
            return kind
    return INPATIENT_MIX[-1][0]


def workload(patients: int, until: float, seed: int) -> list[Change]:
    """Every change of the model from time 0 to `until`, sorted by time."""
    rng = random.Random(seed)
    out: list[Change] = []

    def stay(p: int, start: float, end: float, admitted: bool) -> None:
        t = start
        if admitted:
            out.append(Change(start, p, ENCOUNTER, True, "inpatient"))
        first = not admitted
        while (t := t + rng.expovariate(1 / INPATIENT_CHANGE_S)) < min(end, until):
            out.append(Change(t, p, _pick(rng), first, "inpatient"))
            first = False
        if end < until:
            out.append(Change(end, p, ENCOUNTER, first, "inpatient"))  # discharge

    mean_stay = sum(STAY_DAYS) / 2 * DAY
    current = rng.sample(range(patients), round(patients * INPATIENT_SHARE))
    for p in current:  # already in hospital at time 0, somewhere in their stay
        stay(p, 0.0, rng.uniform(0, rng.uniform(*STAY_DAYS) * DAY), admitted=False)
    t = 0.0
    while (t := t + rng.expovariate(patients * INPATIENT_SHARE / mean_stay)) < until:
        stay(rng.randrange(patients), t, t + rng.uniform(*STAY_DAYS) * DAY, admitted=True)
    t = 0.0
    while (t := t + rng.expovariate(patients / (VISIT_EVERY_DAYS * DAY))) < until:
        p = rng.randrange(patients)
        offsets = [0.0, *sorted(rng.uniform(0, VISIT_S) for _ in VISIT_CHANGES[1:])]
        for i, (kind, dt) in enumerate(zip(VISIT_CHANGES, offsets, strict=True)):
            if t + dt < until:
                out.append(Change(t + dt, p, kind, i == 0, "visit"))
    t = 0.0
    while (t := t + rng.expovariate(patients / (BACKGROUND_EVERY_DAYS * DAY))) < until:
        out.append(Change(t, rng.randrange(patients), rng.choice((PATIENT, LABS)), True, "background"))
    out.sort(key=lambda c: c.at)
    return out


@dataclass
class Result:
    policy: str
    latencies: list[float]
    first_latencies: list[float]
    by_episode: dict[str, list[float]]
    counted: int
    missed: int
    requests: int
    peak_rps: int
    seconds: float


async def _roster(patients: int) -> AsyncIterator[str]:
    for i in range(patients):
        yield pid(i)


async def simulate(mode: Mode, args: argparse.Namespace, changes: list[Change], folder: Path) -> Result:
    policy = Policy(
        mode=mode,
        units_per_patient=len(KINDS),
        max_staleness_s=args.max_staleness_s,
        half_life_s=args.half_life_h * 3600,
        prior_changes=args.prior_changes,
    )
    store = ScheduleStore.open({}, "model._schedule", folder / f"{mode}.db")
    scheduler = Scheduler(store, CONNECTION, KINDS, policy, lambda: float(args.rate), windowed=WINDOWED)
    async for writes in scheduler.sync_roster(_roster(args.patients), 0.0):
        scheduler.applied(writes)

    warmup, end = args.warmup_hours * 3600, (args.warmup_hours + args.hours) * 3600
    pending: dict[tuple[str, UnitKind], deque[Change]] = defaultdict(deque)
    latencies: list[float] = []
    first: list[float] = []
    by_episode: dict[str, list[float]] = defaultdict(list)
    counted = sum(1 for c in changes if warmup <= c.at < end)
    undetected = counted
    per_second: dict[int, int] = defaultdict(int)
    requests, nxt, t = 0, 0, 0.0
    started = time.perf_counter()
    while t < end + policy.max_staleness_s and (t < end or undetected > 0):
        batch = scheduler.next_due(t, args.rate)
        writes = []
        for i, scan in enumerate(batch):
            now = t + i / args.rate
            while nxt < len(changes) and changes[nxt].at <= now:
                c = changes[nxt]
                pending[(pid(c.patient), c.kind)].append(c)
                nxt += 1
            found = pending.get((scan.patient, scan.kind))
            changed = bool(found)
            while found:
                c = found.popleft()
                if warmup <= c.at < end:
                    latencies.append(now - c.at)
                    by_episode[c.episode].append(now - c.at)
                    if c.first:
                        first.append(now - c.at)
                    undetected -= 1
            writes += scheduler.record(scan, ScanOutcome(changed=changed, full=scan.date_from is None), now)
            requests += 1
            per_second[int(now)] += 1
        scheduler.applied(writes)
        t += 1.0
    store.close()
    return Result(
        mode,
        sorted(latencies),
        sorted(first),
        {k: sorted(v) for k, v in by_episode.items()},
        counted,
        undetected,
        requests,
        max(per_second.values(), default=0),
        time.perf_counter() - started,
    )


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def line(values: list[float]) -> str:
    qs = "  ".join(f"p{int(q * 100)} {quantile(values, q):8.0f} s" for q in (0.5, 0.9, 0.95))
    return f"{qs}  max {max(values, default=math.nan):8.0f} s  (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=25, help="requests/s of the budget")
    parser.add_argument("--hours", type=float, default=10.0, help="measured period")
    parser.add_argument("--warmup-hours", type=float, default=2.0)
    parser.add_argument("--max-staleness-s", type=float, default=DAY)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--half-life-h", type=float, default=Policy.half_life_s / 3600)
    parser.add_argument("--prior-changes", type=float, default=Policy.prior_changes)
    parser.add_argument("--policy", default="uniform,adaptive")
    args = parser.parse_args()
    end = (args.warmup_hours + args.hours) * 3600
    changes = workload(args.patients, end, args.seed)
    counted = [c for c in changes if c.at >= args.warmup_hours * 3600]
    kinds = defaultdict(int)
    for c in counted:
        kinds[c.episode] += 1
    print(describe())
    print(
        f"model: {args.patients} patients x {len(KINDS)} units, budget {args.rate} requests/s, "
        f"{args.warmup_hours:g} h warm-up + {args.hours:g} h measured, seed {args.seed}: "
        f"{len(counted)} changes "
        f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}), "
        f"{sum(1 for c in counted if c.first)} episodes"
    )
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.policy.split(","):
            r = asyncio.run(simulate(mode, args, changes, Path(folder)))  # type: ignore[arg-type]
            results[mode] = r
            print(f"\n{mode}: ({r.seconds:.0f} s to simulate)")
            print(f"  all changes         {line(r.latencies)}")
            print(f"  first of an episode {line(r.first_latencies)}")
            for episode, values in sorted(r.by_episode.items()):
                print(f"  {episode:<19} {line(values)}")
            print(f"  missed: {r.missed} of {r.counted}   requests: {r.requests}", end="")
            print(f"   peak requests/s: {r.peak_rps}")
    print(f"\npeak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if "uniform" in results and "adaptive" in results:
        u, a = results["uniform"], results["adaptive"]
        for q in (0.5, 0.9, 0.95):
            ratio = quantile(u.latencies, q) / quantile(a.latencies, q)
            print(f"p{int(q * 100)}: adaptive {ratio:.1f}x better than uniform")
    for mode, r in results.items():
        for q in (0.5, 0.9, 0.95):
            print(f"{mode} p{int(q * 100)}: {quantile(r.latencies, q):.0f} s")


if __name__ == "__main__":
    main()
