"""Memory of the scan schedule against the roster size: 10,000 vs 1,000,000 scheduled patients.

    .venv/bin/python bench/schedule_memory.py [--sizes 10000,1000000] [--scans 50000]

For each size, in a process of its own (so its peak RSS belongs to that size only), the bridge's own
schedule code (bridge.source.schedule):
1. merges a roster of N patients into an empty schedule (streamed in id order, 6 units per patient:
   Patient, Appointment, Encounter, Observation x 2 categories, DocumentReference), each batch of
   writes applied to the on-disk cache as after its commit (no Kafka: the cache and its due-time
   index are what hold the schedule in the process);
2. runs the due-queue loop: batches of 25 units taken earliest-due-first, each scan recorded (3 % of
   the patients change often, the rest rarely) and the batch's writes applied;
3. merges the roster again (nothing to change: the same walk a periodic roster sync does).
Prints, per size: the time of each step, the schedule's file size, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from machine import describe

from bridge.source.schedule.codec import UnitKind
from bridge.source.schedule.policy import Policy, ScanOutcome
from bridge.source.schedule.scheduler import Scheduler
from bridge.source.schedule.store import ScheduleStore

KINDS = (
    UnitKind("Patient"),
    UnitKind("Appointment"),
    UnitKind("Encounter"),
    UnitKind("Observation", "vital-signs"),
    UnitKind("Observation", "laboratory"),
    UnitKind("DocumentReference"),
)
BATCH = 25


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def roster(n: int) -> AsyncIterator[str]:
    for i in range(n):
        yield f"e{i:08d}"


async def sync(scheduler: Scheduler, n: int, now: float) -> int:
    writes = 0
    async for batch in scheduler.sync_roster(roster(n), now, batch=5000):
        scheduler.applied(batch)
        writes += len(batch)
    return writes


async def child(n: int, scans: int, folder: Path) -> dict[str, float]:
    rng = random.Random(n)
    store = ScheduleStore.open({}, "bench._schedule", folder / "schedule.db")
    scheduler = Scheduler(store, "bench", KINDS, Policy(units_per_patient=len(KINDS)), lambda: 25.0)
    out: dict[str, float] = {"patients": n}
    started = time.perf_counter()
    out["sync_writes"] = await sync(scheduler, n, 0.0)
    out["sync_s"] = time.perf_counter() - started
    out["rss_after_sync_mb"] = peak_rss_mb()
    busy = n * 0.03
    started, now, done = time.perf_counter(), 1.0, 0
    while done < scans:
        batch = scheduler.next_due(now, BATCH)
        writes = []
        for i, scan in enumerate(batch):
            changed = (int(scan.patient[1:]) < busy and rng.random() < 0.3) or rng.random() < 0.001
            writes += scheduler.record(scan, ScanOutcome(changed=changed), now + i / BATCH)
        scheduler.applied(writes)
        done += len(batch)
        now += 1.0
    out["scans"] = done
    out["scan_s"] = time.perf_counter() - started
    started = time.perf_counter()
    out["resync_writes"] = await sync(scheduler, n, now)
    out["resync_s"] = time.perf_counter() - started
    stats = scheduler.stats(now)
    out["units"] = stats.queue.units
    store.close()
    out["db_mb"] = sum(f.stat().st_size for f in folder.iterdir()) / 1024 / 1024
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--scans", type=int, default=50_000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        result = asyncio.run(child(args.child, args.scans, Path(args.folder)))
        print(json.dumps(result))
        return
    print(describe())
    print(f"{len(KINDS)} units per patient, due-queue loop of {args.scans} scans in batches of {BATCH}")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(size),
                "--scans",
                str(args.scans),
                "--folder",
                folder,
            ]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"{int(r['patients']):>9} patients ({int(r['units'])} units): roster merge {r['sync_s']:.0f} s "
            f"({int(r['sync_writes'])} writes), {int(r['scans'])} scans {r['scan_s']:.1f} s "
            f"({r['scans'] / r['scan_s']:.0f} scans/s), re-merge {r['resync_s']:.0f} s, "
            f"file {r['db_mb']:.0f} MB, peak RSS {r['peak_rss_mb']:.0f} MB "
            f"(after the merge {r['rss_after_sync_mb']:.0f} MB)"
        )
    if len(rows) >= 2:
        ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        print(f"peak RSS ratio, largest / smallest roster: {ratio:.2f}")


if __name__ == "__main__":
    main()
