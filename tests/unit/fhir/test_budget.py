from __future__ import annotations

import asyncio

import pytest

from bridge.fhir.budget import DAY_S, Priority, RequestBudget


class FakeTime:
    """A clock that only moves when the budget sleeps; a sleep lets other tasks run first, at the time it
    started (as a real sleep would), then ends."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        await asyncio.sleep(0)
        self.now += s


def budget(t: FakeTime, rate: float = 10, burst: int = 1, **kw: object) -> RequestBudget:
    return RequestBudget(rate, burst, clock=t.clock, wall=t.clock, sleep=t.sleep, **kw)  # type: ignore[arg-type]


async def test_token_bucket_rate() -> None:
    t = FakeTime()
    rl = budget(t, 10, burst=5)
    for _ in range(5):
        assert await rl.acquire() == 0  # the burst
    for _ in range(20):
        await rl.acquire()
    assert t.now == pytest.approx(2.0, abs=0.01)  # 20 more at 10/s


async def test_throttle_halves_pauses_and_recovers() -> None:
    t = FakeTime()
    rl = budget(t, 10, burst=1, min_rate=1, recovery_s=90)
    await rl.acquire()
    rl.on_throttled(retry_after=5)
    assert rl.rate == pytest.approx(5.0)
    start = t.now
    await rl.acquire(Priority.INTERACTIVE)
    assert t.now - start >= 5.0  # everyone waits out Retry-After, interactive requests too
    for _ in range(4):
        rl.on_throttled()
    assert rl.rate == pytest.approx(1.0)  # floor
    t.now += 45
    assert rl.rate == pytest.approx(5.5)  # halfway back
    t.now += 100
    assert rl.rate == 10  # fully recovered
    assert rl.throttles == 5


async def _queue(rl: RequestBudget, order: list[str], name: str, priority: Priority) -> None:
    await rl.acquire(priority)
    order.append(name)


async def test_strict_priority_across_classes() -> None:
    t = FakeTime()
    rl = budget(t, 10, burst=1)
    order: list[str] = []
    await rl.acquire(Priority.BULK)  # the token of the request in flight
    tasks = [asyncio.create_task(_queue(rl, order, f"bulk{i}", Priority.BULK)) for i in range(3)]
    tasks += [asyncio.create_task(_queue(rl, order, f"sched{i}", Priority.SCHEDULED)) for i in range(3)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(_queue(rl, order, "hint", Priority.HINT))]
    tasks += [asyncio.create_task(_queue(rl, order, "find", Priority.INTERACTIVE))]
    await asyncio.gather(*tasks)
    assert order == ["find", "hint", "sched0", "sched1", "sched2", "bulk0", "bulk1", "bulk2"]
    assert t.now == pytest.approx(0.8, abs=1e-6)  # 8 requests after the first, at 10/s
    assert rl.granted == {Priority.INTERACTIVE: 1, Priority.HINT: 1, Priority.SCHEDULED: 3, Priority.BULK: 4}


async def test_a_find_during_a_sweep_waits_only_for_the_request_in_flight() -> None:
    t = FakeTime()
    rl = budget(t, 5, burst=1)
    order: list[str] = []

    async def sweep() -> None:
        for i in range(20):
            await rl.acquire(Priority.SCHEDULED)
            order.append(f"scan{i}")

    sweeps = [asyncio.create_task(sweep()) for _ in range(3)]  # three scan loops, queued behind each other
    while len(order) < 7:
        await asyncio.sleep(0)
    asked_at, before = t.now, len(order)
    waited = await rl.acquire(Priority.INTERACTIVE)
    order.append("find")
    assert order.index("find") <= before + 1  # at most the one sweep request already granted went first
    assert waited <= 1 / 5 + 1e-9 and t.now - asked_at <= 1 / 5 + 1e-9
    await asyncio.gather(*sweeps)
    assert len(order) == 61  # the sweep was delayed, not dropped


async def test_lower_classes_are_served_when_the_higher_ones_leave_room() -> None:
    t = FakeTime()
    rl = budget(t, 10, burst=1)
    order: list[str] = []
    bulk = asyncio.create_task(_queue(rl, order, "bulk", Priority.BULK))
    for i in range(5):
        await rl.acquire(Priority.INTERACTIVE)
        order.append(f"cmd{i}")
        await t.sleep(0.25)  # commands come slower than the rate: the bulk request gets a token between
    await bulk
    assert order.index("bulk") < 5


async def test_a_cancelled_waiter_takes_no_token() -> None:
    t = FakeTime()
    rl = budget(t, 1, burst=1)
    await rl.acquire()
    waiter = asyncio.create_task(rl.acquire(Priority.SCHEDULED))
    await asyncio.sleep(0)
    assert rl.waiting(Priority.SCHEDULED) == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert rl.waiting(Priority.SCHEDULED) == 0
    await rl.acquire(Priority.BULK)
    assert rl.granted[Priority.SCHEDULED] == 1 and rl.granted[Priority.BULK] == 1
    assert t.now == pytest.approx(1.0)


async def test_day_cap_paces_scans_and_lets_only_interactive_through_once_spent() -> None:
    t = FakeTime(start=10 * DAY_S)  # midnight UTC
    rl = budget(t, 1000, burst=1000, per_day=48)
    seen: list[tuple[Priority, bool]] = []
    rl.observer = lambda p, waited, over: seen.append((p, over))
    for _ in range(2):  # the first hour's share goes at once
        assert await rl.acquire(Priority.SCHEDULED) == 0
    await rl.acquire(Priority.SCHEDULED)  # the third waits for its share of the day: 3/48 of it, less an hour
    assert t.now - 10 * DAY_S == pytest.approx(3 / 48 * DAY_S - 3600)
    for _ in range(45):
        await rl.acquire(Priority.BULK)
    assert rl.day_remaining == 0
    assert t.now - 10 * DAY_S == pytest.approx(DAY_S - 3600)  # spread over the day
    before = t.now
    await rl.acquire(Priority.INTERACTIVE)  # past the cap: commands still go, counted
    assert t.now == before and rl.over_day == 1 and seen[-1] == (Priority.INTERACTIVE, True)
    await rl.acquire(Priority.SCHEDULED)  # waits for the next UTC day
    assert t.now == pytest.approx(11 * DAY_S) and rl.day_remaining == 47
    assert all(not over for p, over in seen[:-2])


async def test_available_rate_follows_the_use_of_the_classes_above() -> None:
    t = FakeTime()
    rl = budget(t, 20, burst=1)
    assert rl.available_rate(Priority.SCHEDULED) == pytest.approx(20)
    for _ in range(600):  # commands at 10/s for a minute
        await rl.acquire(Priority.INTERACTIVE)
        t.now += 0.1
    assert rl.available_rate(Priority.INTERACTIVE) == pytest.approx(20)
    assert rl.available_rate(Priority.SCHEDULED) == pytest.approx(20 - 10 * (1 - 2.718281828**-1), rel=0.05)
    t.now += 600  # the commands stopped: the room comes back
    assert rl.available_rate(Priority.BULK) == pytest.approx(20, rel=0.01)


def test_sustainable_rate_spreads_the_day_cap() -> None:
    t = FakeTime()
    assert budget(t, 10, per_day=86_400 * 20).sustainable_rate() == 10
    assert budget(t, 10, per_day=43_200).sustainable_rate() == pytest.approx(0.5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RequestBudget(0)
    with pytest.raises(ValueError):
        RequestBudget(1, per_day=0)
