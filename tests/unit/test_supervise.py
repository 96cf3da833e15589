"""A supervised task that fails is restarted with a doubling delay and reported until it runs again."""

from __future__ import annotations

import asyncio
import itertools

from bridge.supervise import Health, supervise


async def test_a_failing_task_restarts_with_backoff_and_is_reported_until_it_recovers() -> None:
    stop = asyncio.Event()
    health = Health()
    runs: list[float] = []
    failures: list[tuple[str, str]] = []
    loop = asyncio.get_running_loop()

    async def run() -> None:
        runs.append(loop.time())
        if len(runs) <= 3:
            raise ValueError(f"broken {len(runs)}")
        assert health.problems() == ["patient: ValueError: broken 3"]  # still reported while it restarts
        await asyncio.sleep(0.3)  # runs long enough to count as healthy again

    await supervise(
        "patient",
        run,
        stop,
        health=health,
        on_failure=lambda task, exc: failures.append((task, str(exc))),
        min_delay_s=0.05,
        healthy_after_s=0.2,
    )
    assert failures == [("patient", "broken 1"), ("patient", "broken 2"), ("patient", "broken 3")]
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert [round(min(gap, d), 3) for gap, d in zip(gaps, (0.05, 0.1, 0.2), strict=True)] == [0.05, 0.1, 0.2]
    assert health.problems() == []


async def test_a_stop_request_ends_the_restarts() -> None:
    stop = asyncio.Event()
    calls = 0

    async def run() -> None:
        nonlocal calls
        calls += 1
        stop.set()
        raise RuntimeError("fails as it is being stopped")

    await asyncio.wait_for(supervise("sink", run, stop, min_delay_s=10), 5)
    assert calls == 1
