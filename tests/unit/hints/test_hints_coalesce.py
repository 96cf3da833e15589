"""Coalescing: one scan request per (patient, resource) while it waits; a pair just handed over waits for
the rest of the window; offsets are held back only by requests still waiting. Flood bounds."""

from __future__ import annotations

import datetime as dt

from bridge.hints.coalesce import Coalescer
from bridge.hints.limits import TokenBucket, take_all
from bridge.hints.model import ScanRequest

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def request(
    patient: str = "p1", resource: str = "Patient", seconds: float = 0, reason: str = "ADT^A08"
) -> ScanRequest:
    return ScanRequest(patient, resource, T0 + dt.timedelta(seconds=seconds), reason)


def test_hints_for_a_waiting_pair_merge_and_keep_the_earliest_time() -> None:
    clock = Clock()
    c = Coalescer(2.0, clock)
    assert c.add(request(seconds=5, reason="later"), (0, 10)) is False
    assert c.add(request(seconds=1, reason="earliest"), (0, 11)) is True
    assert c.add(request(seconds=9), (0, 12)) is True
    assert c.add(request(resource="Encounter"), (0, 12)) is False
    assert len(c) == 2
    first = c.pop_ready()
    assert first == request(seconds=1, reason="earliest")
    assert c.pop_ready() == request(resource="Encounter")
    assert c.pop_ready() is None and len(c) == 0


def test_a_pair_handed_over_waits_for_the_rest_of_the_window_and_gathers_hints() -> None:
    clock = Clock()
    c = Coalescer(2.0, clock)
    c.add(request())
    assert c.pop_ready() is not None
    clock.now += 0.5
    c.add(request(seconds=1))
    c.add(request(seconds=2))
    c.add(request(patient="p2"))  # another patient is not held back
    assert c.next_ready_at() == 100.5
    assert c.pop_ready() == request(patient="p2")
    assert c.pop_ready() is None
    assert c.next_ready_at() == 102.0
    clock.now = 102.0
    assert c.pop_ready() == request(seconds=1)
    clock.now = 105.0  # the window after that hand-over has passed: ready at once
    c.add(request(seconds=3))
    assert c.pop_ready() == request(seconds=3)


def test_zero_window_never_holds_back() -> None:
    clock = Clock()
    c = Coalescer(0.0, clock)
    for n in range(3):
        c.add(request(seconds=n))
        assert c.pop_ready() == request(seconds=n)


def test_lowest_offsets_follow_the_requests_still_waiting() -> None:
    clock = Clock()
    c = Coalescer(2.0, clock)
    c.add(request("p1"), (0, 5))
    c.add(request("p2"), (0, 6))
    c.add(request("p1"), (0, 7))  # merged into the request from offset 5
    c.add(request("p3"), (1, 3))
    assert c.lowest_offsets() == {0: 5, 1: 3}
    assert c.pop_ready() is not None  # p1 (offsets 5 and 7)
    assert c.lowest_offsets() == {0: 6, 1: 3}
    c.pop_ready()
    c.pop_ready()
    assert c.lowest_offsets() == {}


def test_memory_of_handed_pairs_is_forgotten_after_the_window() -> None:
    clock = Clock()
    c = Coalescer(1.0, clock)
    for n in range(1000):
        c.add(request(f"p{n}"))
        c.pop_ready()
    clock.now += 1.0
    c.add(request("fresh"))
    assert len(c._handed) == 0


def test_token_buckets_refuse_without_spending_when_any_is_empty() -> None:
    clock = Clock()
    small, large = TokenBucket(1.0, 2, clock), TokenBucket(100.0, 100, clock)
    assert take_all(small, large) and take_all(small, large)
    assert not take_all(small, large)
    assert take_all(large)
    clock.now += 1.0
    assert take_all(small, large)
    assert not take_all(small, large)
