"""What the episodes activity model costs the simulator: seeding, idling, and keeping up when accelerated.

    .venv/bin/python bench/sim_episodes.py [--patients 5000] [--idle-seconds 20] [--speed 21600] [--hours 24]

1. seeds PATIENTS into a fresh simulator (the Epic profile's ~42 resources each) and starts the model;
2. idle: at speed 1 (real time) measures the process's CPU over IDLE_SECONDS;
3. accelerated: plays HOURS of simulated activity at SPEED and reports changes, wall time, CPU per change
   and the largest lag behind the timetable.
CPU is the whole process (the simulator runs in a thread of it).
"""

from __future__ import annotations

import argparse
import os
import time

from sim_page_throughput import cpu_model

from epic_sim.server import run_simulator


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--speed", type=float, default=21600.0)
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")

    wall, cpu = time.perf_counter(), time.process_time()
    with run_simulator(patients=args.patients, seed=1, activity_model="episodes", activity_speed=1) as sim:
        print(
            f"seed {args.patients} patients and start: {time.perf_counter() - wall:.1f} s wall, "
            f"{time.process_time() - cpu:.1f} s CPU"
        )
        before = sim.admin.get("/admin/activity").json()["total"]
        cpu = time.process_time()
        time.sleep(args.idle_seconds)
        idle_cpu = time.process_time() - cpu
        made = sim.admin.get("/admin/activity").json()["total"] - before
        print(
            f"real time (speed 1): {idle_cpu * 1000:.0f} ms CPU in {args.idle_seconds:.0f} s "
            f"({idle_cpu / args.idle_seconds * 100:.2f} % of a core), {made} changes made"
        )

        sim.admin.put("/admin/activity", json={"speed": 0}).raise_for_status()
        start = sim.admin.get("/admin/activity").json()
        until = start["sim_time_s"] + args.hours * 3600
        wall, cpu, worst_lag = time.perf_counter(), time.process_time(), 0.0
        sim.admin.put("/admin/activity", json={"speed": args.speed}).raise_for_status()
        while True:
            stats = sim.admin.get("/admin/activity").json()
            worst_lag = max(worst_lag, stats["lag_s"])
            if stats["next_due_s"] is None or stats["next_due_s"] > until:
                break
            time.sleep(0.05)
        elapsed, used = time.perf_counter() - wall, time.process_time() - cpu
        changes = stats["total"] - start["total"]
        print(
            f"accelerated (speed {args.speed:g}): {args.hours:g} h simulated in {elapsed:.1f} s, "
            f"{changes} changes ({stats['changes']}), {used / max(changes, 1) * 1000:.2f} ms CPU per change, "
            f"worst lag {worst_lag:.2f} s"
        )


if __name__ == "__main__":
    main()
