"""The connection's request budget against the real simulator: a FIND sent during a sweep is served
ahead of the sweep's queued requests, and the simulator never sees more than the budget per second,
even with a standalone tool running beside the bridge."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from connection_support import BridgeSide, backend_connection

from bridge.connection import Connection
from bridge.fhir.budget import Priority

RATE = 10  # requests/s of the connection's budget; the bridge runs at 90 % of it, a tool at 10 %


def fhir_requests(sim: Any, since: int = 0) -> list[dict[str, Any]]:
    return [r for r in sim.requests(since) if "/api/FHIR/R4/" in r["path"]]


def most_in_one_second(times: list[float]) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_a_find_goes_ahead_of_a_sweep_and_the_budget_holds(
    epic_sim_factory: Any, bridge_side: BridgeSide
) -> None:
    sim = epic_sim_factory(profile="epic", patients=12, seed=5, short_page_rate=0)
    patients = sim.sim.store.ids("Patient", limit=12)
    cfg = backend_connection(
        sim, bridge_side, "bridge-budget", rate_limit={"requests_per_second": RATE, "burst": 1}
    )
    tool_cfg = cfg.model_copy(update={"name": "bridge-budget-tool"})
    async with await Connection.open(cfg) as bridge, await Connection.open(tool_cfg, tool=True) as tool:
        await bridge.fhir.capabilities()  # the token and the CapabilityStatement, before measuring
        await tool.fhir.capabilities()
        mark = sim.requests()[-1]["seq"]
        scanner, sink = bridge.fhir, bridge.fhir_client(priority=Priority.INTERACTIVE)
        checker = tool.fhir_client(priority=Priority.INTERACTIVE)

        async def sweep(lane: int) -> None:  # a scan loop: one search after another, as `scheduled`
            for pid in patients[lane::3] * 2:
                async for _ in scanner.search("Observation", [("patient", pid), ("category", "vital-signs")]):
                    pass

        async def tool_reads() -> None:
            for pid in patients[:5]:
                await checker.read("Patient", pid)

        sweeps = [asyncio.create_task(sweep(lane)) for lane in range(3)]
        beside = asyncio.create_task(tool_reads())
        await asyncio.sleep(1.0)
        queued = scanner.budget.waiting(Priority.SCHEDULED)
        sent_at = time.time()
        found = [r async for r in sink.search("Patient", [("_id", patients[0])])]
        served_in = time.time() - sent_at
        await asyncio.gather(*sweeps, beside)

    assert [r["id"] for r in found] == [patients[0]]
    assert queued >= 2  # the sweep had requests waiting when the FIND came
    log = fhir_requests(sim, mark)
    [find] = [r for r in log if r["path"].endswith("/Patient") and r["query"].get("_id") == [patients[0]]]
    overtaken = [r for r in log if sent_at <= r["time"] < find["time"] and "/Observation" in r["path"]]
    assert len(overtaken) <= 1  # only the sweep request already on its way
    assert served_in < 2 / (RATE * 0.9) + 0.5
    sweep_times = [r["time"] for r in log if "/Observation" in r["path"]]
    assert len(sweep_times) == 24
    assert any(t > find["time"] for t in sweep_times)  # the sweep was delayed, not dropped
    # The bridge (9/s) and the tool (1/s) together: never more than the budget in any second (one more
    # for the jitter of arrival times), and no more than the budget on average.
    times = [r["time"] for r in log]
    assert most_in_one_second(times) <= RATE + 1
    assert len(times) / (max(times) - min(times)) <= RATE * 1.05
