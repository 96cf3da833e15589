"""The schedule's policy: pure functions of frozen state (no store, no clock)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import pytest
from test_plan import EPIC, GENERIC

from bridge.config import ConnectionConfig
from bridge.source.plan import plan_resource
from bridge.source.schedule.codec import UnitKind
from bridge.source.schedule.kinds import unit_searches
from bridge.source.schedule.policy import (
    PatientState,
    Policy,
    ScanOutcome,
    after_scan,
    date_window,
    interval,
    new_unit,
    patient_rate,
    prior_rate,
    pulled_in,
    scale,
    unit_rate,
    weight,
    with_change,
)

HOUR = 3600.0
POLICY = Policy(units_per_patient=1, min_interval_s=60, max_staleness_s=86_400)


def test_the_revisit_frequency_follows_the_square_root_of_the_change_rate() -> None:
    now = 10 * HOUR
    quiet = replace(new_unit(POLICY, 0.0), scanned=now - 60)
    busy = replace(quiet, changes=8.0, changes_at=now)
    q_rate, b_rate = (unit_rate(POLICY, u, prior_rate(POLICY), now) for u in (quiet, busy))
    assert b_rate / q_rate > 20
    u = 5.0  # both intervals inside the bounds
    q_int = interval(POLICY, weight(POLICY, quiet, prior_rate(POLICY), now), u)
    b_int = interval(POLICY, weight(POLICY, busy, prior_rate(POLICY), now), u)
    assert POLICY.min_interval_s < b_int < q_int < POLICY.max_staleness_s
    assert q_int / b_int == pytest.approx(math.sqrt(b_rate / q_rate))  # not in proportion to the rate


def test_a_costlier_scan_is_revisited_less_often_by_the_square_root_of_its_cost() -> None:
    unit = replace(new_unit(POLICY, 0.0), scanned=100.0)
    cheap, dear = weight(POLICY, unit, 1e-4, 200.0), weight(POLICY, replace(unit, cost=4.0), 1e-4, 200.0)
    assert cheap / dear == pytest.approx(2.0)


def test_after_a_scan_the_unit_is_due_u_over_w_later_within_the_bounds() -> None:
    unit = replace(new_unit(POLICY, 0.0), scanned=0.0)
    pooled = prior_rate(POLICY)
    after = after_scan(POLICY, unit, ScanOutcome(changed=False), pooled, 5.0, 500.0)
    assert after.scanned == 500.0 and after.weight == weight(POLICY, after, pooled, 500.0)
    assert after.due == pytest.approx(500.0 + 5.0 / after.weight)
    huge = after_scan(POLICY, unit, ScanOutcome(changed=False), pooled, 1e-9, 500.0)
    assert huge.due == 500.0 + POLICY.min_interval_s  # never sooner than the minimum interval
    tiny = after_scan(POLICY, unit, ScanOutcome(changed=False), pooled, 1e12, 500.0)
    assert tiny.due == 500.0 + POLICY.max_staleness_s  # never later than the maximum staleness


def test_uniform_gives_every_unit_the_same_weight() -> None:
    uniform = replace(POLICY, mode="uniform")
    unit = replace(new_unit(uniform, 0.0), scanned=0.0)
    assert weight(uniform, replace(unit, changes=50.0, changes_at=1.0), 1.0, 2.0) == 1.0
    assert weight(uniform, replace(unit, cost=7.0), 1e-9, 2.0) == 1.0


def test_the_patient_rate_rises_with_changes_and_cools_down_with_the_half_life() -> None:
    patient = PatientState(added=0.0)
    idle = patient_rate(POLICY, patient, 2 * 86_400)
    assert patient_rate(POLICY, patient, 0.0) == pytest.approx(prior_rate(POLICY))  # a new patient: warm
    assert idle < prior_rate(POLICY) / 3  # long quiet: colder than a new one
    hot = patient
    for i in range(10):
        hot = with_change(POLICY, hot, 2 * 86_400 + i * 1800)
    now = 2 * 86_400 + 10 * 1800
    assert patient_rate(POLICY, hot, now) > 30 * idle
    half = hot.changes_now(POLICY, now + POLICY.half_life_s)
    assert half == pytest.approx(hot.changes_now(POLICY, now) / 2)
    assert patient_rate(POLICY, hot, now + 3 * 86_400) < 1.2 * idle  # discharged: back to quiet in days


def test_a_first_scan_is_a_baseline_not_a_change() -> None:
    unit = new_unit(POLICY, 0.0)
    first = after_scan(POLICY, unit, ScanOutcome(changed=True), prior_rate(POLICY), 100.0, 10.0)
    assert first.changes == 0.0
    second = after_scan(POLICY, first, ScanOutcome(changed=True), prior_rate(POLICY), 100.0, 20.0)
    assert second.changes == pytest.approx(1.0)


def test_a_failed_scan_learns_nothing_and_is_retried_after_the_minimum_interval() -> None:
    unit = replace(new_unit(POLICY, 0.0), scanned=5.0, due=100.0)
    failed = after_scan(POLICY, unit, ScanOutcome(changed=False, failed=True), 1.0, 100.0, 120.0)
    assert failed == replace(unit, due=120.0 + POLICY.min_interval_s)


def test_the_scale_makes_demand_match_the_budget_and_reserves_the_staleness_floor() -> None:
    # 1000 units of cost 1 and weight 0.01: U = 10 / (B - 1000 / 86400)
    s = scale(POLICY, load=10.0, cost=1000.0, budget_rate=5.0)
    assert s.u == pytest.approx(10.0 / (5.0 - 1000 / 86_400)) and not s.overcommitted
    demand = 1000 * max(0.01 / s.u, 1 / POLICY.max_staleness_s)
    assert demand <= 5.0
    assert scale(POLICY, load=10.0, cost=1000.0, budget_rate=10.0).u == pytest.approx(s.u / 2, rel=0.01)
    starved = scale(POLICY, load=10.0, cost=86_400 * 5.0, budget_rate=5.0)
    assert starved.overcommitted  # cannot scan every unit once per max staleness: said, not hidden


def test_a_change_pulls_in_the_patients_other_units() -> None:
    now = 10 * HOUR
    calm = PatientState(added=0.0)
    sibling = replace(new_unit(POLICY, 0.0), scanned=now - 600, due=now + 20_000)
    sibling = replace(sibling, weight=weight(POLICY, sibling, patient_rate(POLICY, calm, now), now))
    busy = with_change(POLICY, with_change(POLICY, calm, now - 100), now)
    sooner = pulled_in(POLICY, sibling, patient_rate(POLICY, busy, now), 5.0, now)
    assert sooner is not None and now <= sooner.due < sibling.due and sooner.weight > sibling.weight
    assert pulled_in(POLICY, sibling, patient_rate(POLICY, calm, now), 5.0, now) is None  # not hotter
    assert pulled_in(replace(POLICY, mode="uniform"), sibling, 1.0, 5.0, now) is None


def test_incremental_scans_use_a_date_window_and_a_full_scan_comes_back_periodically() -> None:
    unit = new_unit(POLICY, 0.0)
    assert date_window(POLICY, unit, True, 0.0) is None  # first scan: full
    scanned = after_scan(POLICY, unit, ScanOutcome(changed=False, full=True), 1e-5, 100.0, 10.0)
    assert date_window(POLICY, scanned, True, 500.0) == 10.0 - POLICY.date_overlap_s
    assert date_window(POLICY, scanned, False, 500.0) is None  # the resource has no `date`
    assert date_window(POLICY, scanned, True, 10.0 + POLICY.full_scan_interval_s) is None
    windowed = after_scan(POLICY, scanned, ScanOutcome(changed=False, full=False), 1e-5, 100.0, 900.0)
    assert windowed.full == 10.0  # a windowed scan does not reset the full-scan clock


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        Policy(min_interval_s=100, max_staleness_s=50)
    with pytest.raises(ValueError):
        Policy(half_life_s=0)


def test_the_units_are_the_per_patient_searches_windowed_where_date_is_listed(
    make_config: Callable[..., ConnectionConfig],
) -> None:
    on = ["created", "updated"]
    cfg = make_config(
        resources={
            "Patient": {"triggers": on},
            "Observation": {"triggers": on, "categories": ["vital-signs", "laboratory"]},
            "Encounter": {"triggers": on},
        }
    )
    plans = [plan_resource(cfg, EPIC, r) for r in ("Patient", "Observation", "Encounter")]
    searches = unit_searches(plans, EPIC, cfg.source)
    assert set(searches) == {
        UnitKind("Patient"),
        UnitKind("Observation", "vital-signs"),
        UnitKind("Observation", "laboratory"),
        UnitKind("Encounter"),
    }
    assert searches[UnitKind("Observation", "laboratory")].variant == (("category", "laboratory"),)
    assert [k.label for k, s in sorted(searches.items()) if s.windowed] == [
        "Encounter",
        "Observation/laboratory",
        "Observation/vital-signs",
    ]
    off = cfg.source.model_copy(update={"incremental_scans": False})
    assert not any(s.windowed for s in unit_searches(plans, EPIC, off).values())
    generic = [plan_resource(cfg, GENERIC, r) for r in ("Observation", "Encounter")]
    assert unit_searches(generic, GENERIC, cfg.source) == {}  # one _lastUpdated search: no schedule
