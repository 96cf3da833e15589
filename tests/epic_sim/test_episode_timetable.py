"""The episode model's timetable on its own: reproducible from the seed, the model's rates and shapes."""

from __future__ import annotations

from collections import Counter, defaultdict

from epic_sim.episodes.timetable import (
    BACKGROUND_MEAN_S,
    INPATIENT_MEAN_S,
    VISIT_MEAN_S,
    VISIT_SPAN_S,
    VISIT_STEPS,
    Planned,
    Timetable,
)

DAY = 86400.0


def _until(timetable: Timetable, horizon: float) -> list[Planned]:
    planned = []
    while (timetable.next_time() or horizon + 1) <= horizon:
        planned.append(timetable.pop())
    return planned


def test_same_seed_same_sequence_different_seed_another() -> None:
    first = _until(Timetable(2000, seed=5), 2 * DAY)
    again = _until(Timetable(2000, seed=5), 2 * DAY)
    other = _until(Timetable(2000, seed=6), 2 * DAY)
    assert first == again
    assert [(p.patient, p.action) for p in first] != [(p.patient, p.action) for p in other]
    assert Timetable(2000, seed=5).inpatients != Timetable(2000, seed=6).inpatients


def test_inpatients_are_three_percent_and_change_every_half_hour() -> None:
    timetable = Timetable(10_000, seed=1)
    assert len(timetable.inpatients) == 300
    planned = _until(timetable, 2 * DAY)
    per_inpatient = Counter(p.patient for p in planned if p.source == "inpatient")
    assert set(per_inpatient) <= set(timetable.inpatients)
    mean = sum(per_inpatient.values()) / len(timetable.inpatients)
    assert abs(mean - 2 * DAY / INPATIENT_MEAN_S) < 5  # 96 expected, sd of the mean ~0.6
    firsts = [p for p in planned if p.source == "inpatient" and p.step == 0]
    assert {p.action for p in firsts} == {"admit"}
    assert len(firsts) == len(per_inpatient)
    later = Counter(p.action for p in planned if p.source == "inpatient" and p.step > 0)
    assert set(later) == {"vitals", "lab", "note", "note-amend", "encounter-update"}


def test_visits_are_six_changes_within_an_hour_for_outpatients_only() -> None:
    timetable = Timetable(10_000, seed=2)
    planned = _until(timetable, 10 * DAY)
    visits: dict[str, list[Planned]] = defaultdict(list)
    for p in planned:
        if p.source == "visit":
            visits[p.episode].append(p)
    complete = [steps for steps in visits.values() if steps[0].t <= 10 * DAY - VISIT_SPAN_S]
    expected = (10_000 - 300) * 10 * DAY / VISIT_MEAN_S  # ~1617
    assert 0.9 * expected < len(visits) < 1.1 * expected
    for steps in complete:
        assert [s.action for s in steps] == list(VISIT_STEPS)
        assert [s.step for s in steps] == list(range(len(VISIT_STEPS)))
        assert steps[-1].t - steps[0].t <= VISIT_SPAN_S
        assert len({s.patient for s in steps}) == 1
        assert not timetable.is_inpatient(steps[0].patient)
    spans = sorted(steps[-1].t - steps[0].t for steps in complete)
    assert spans[len(spans) // 2] > VISIT_SPAN_S / 2  # spread over the hour, not bunched at its start


def test_background_trickle_rate() -> None:
    planned = _until(Timetable(10_000, seed=3), 20 * DAY)
    background = [p for p in planned if p.source == "background"]
    expected = 10_000 * 20 * DAY / BACKGROUND_MEAN_S  # 1000
    assert 0.88 * expected < len(background) < 1.12 * expected
    assert len({p.episode for p in background}) == len(background)  # one change per episode
    assert {p.action for p in background} == {"demographics", "lab-amend", "note-amend"}


def test_heap_holds_three_arrival_times_plus_visits_in_progress_only() -> None:
    small, large = Timetable(100, seed=4), Timetable(1_000_000, seed=4)
    assert small.pending() == large.pending() == 3  # nothing per patient
    planned = _until(large, 600)
    taken = Counter(p.episode for p in planned if p.source == "visit")
    remaining = sum(len(VISIT_STEPS) - n for n in taken.values())
    assert remaining > 0
    assert large.pending() == 3 + remaining


def test_tiny_and_empty_rosters() -> None:
    assert Timetable(0, seed=0).next_time() is None
    one = Timetable(1, seed=0)
    assert one.inpatients == (0,)
    assert {p.source for p in _until(one, DAY)} <= {"inpatient", "background"}
