from __future__ import annotations

import pytest

from bridge.fhir.ratelimit import AdaptiveRateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.now += s


async def test_token_bucket_rate() -> None:
    t = FakeTime()
    rl = AdaptiveRateLimiter(10, burst=5, clock=t.clock, sleep=t.sleep)
    for _ in range(5):
        assert await rl.acquire() == 0  # the burst
    for _ in range(20):
        await rl.acquire()
    assert t.now == pytest.approx(2.0, abs=0.01)  # 20 more at 10/s


async def test_throttle_halves_pauses_and_recovers() -> None:
    t = FakeTime()
    rl = AdaptiveRateLimiter(10, burst=1, min_rate=1, recovery_s=90, clock=t.clock, sleep=t.sleep)
    await rl.acquire()
    rl.on_throttled(retry_after=5)
    assert rl.rate == pytest.approx(5.0)
    start = t.now
    await rl.acquire()
    assert t.now - start >= 5.0  # everyone waits out Retry-After
    rl.on_throttled()
    rl.on_throttled()
    rl.on_throttled()
    rl.on_throttled()
    assert rl.rate == pytest.approx(1.0)  # floor
    t.now += 45
    assert rl.rate == pytest.approx(5.5)  # halfway back
    t.now += 100
    assert rl.rate == 10  # fully recovered
    assert rl.throttles == 5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        AdaptiveRateLimiter(0)
