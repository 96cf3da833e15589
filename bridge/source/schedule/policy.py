"""When to scan each unit again: a per-patient change rate and the square-root rule, within bounds.

A unit is one search of one roster patient: (patient, resource type, variant), the variant being e.g.
an Observation category. Epic has no change feed, so the only way to see a change is to scan its
unit, and the request budget is fixed. Where to spend it is the refresh problem of web crawlers
(Cho & Garcia-Molina): with changes arriving at rate λ_j on unit j and a scan costing k_j requests,
the mean time from a change to its detection is smallest for a fixed budget when unit j is revisited
at a frequency proportional to √(λ_j / k_j) (the square-root rule), not uniformly and not in
proportion to λ_j.

* The rate is estimated per **patient**, pooled over the patient's units, because one episode (a
  visit, an admission) touches several resources within the hour: λ̂ = (a0 + C) / (b0 + E), where C
  counts scans that found a change and E is the time the patient has been tracked, both decaying with
  a half-life (a discharged inpatient cools down within a day); a0/b0 is a prior that is also the rate
  of a new patient (warm: new patients are scanned sooner than long-quiet ones). A unit's rate is a
  blend: half the patient's rate shared evenly by its units, half the unit's own (same estimator on
  the unit's own changes), so an admission pulls in all its units while a patient whose vitals change
  hourly does not rescan demographics as often as vitals.
* The weight is w = √(λ / k) and a unit scanned at time s is due again at s + U / w, where the scale
  U = Σ k_j w_j / B makes the demanded rate equal to the budget B. U is recomputed from running totals,
  never by visiting every unit. With ``uniform`` every weight is 1: the same earliest-due-first queue
  then visits every unit in turn, which is round-robin cycles.
* Bounds that always hold: a unit is never scanned again before ``min_interval_s``, and is due at the
  latest ``max_staleness_s`` after its last scan, whatever its weight. The totals reserve the requests
  that the staleness bound needs (Σ k_j / max_staleness) before the adaptive share is spread, so the
  bound can be met whenever the budget allows it at all; when it does not, ``Scale.overcommitted``
  says so.

Everything here is pure: frozen values and functions of them, with time passed in (Unix seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from bridge.config.source import SourceConfig

Mode = Literal["adaptive", "uniform"]

_LN2 = math.log(2.0)
POOLED_SHARE = 0.5  # of a unit's rate that comes from its patient's pooled rate (the rest: its own)
_COST_SMOOTHING = 0.3  # weight of the newest scan in the expected requests of a unit's scan
_MIN_ADAPTIVE_SHARE = 0.1  # of the budget left for the adaptive part even when the floors ask for more


@dataclass(frozen=True)
class Policy:
    mode: Mode = "adaptive"
    min_interval_s: float = 60.0
    max_staleness_s: float = 86_400.0
    half_life_s: float = 6 * 3600.0
    prior_changes: float = 0.05  # a0
    prior_exposure_s: float = 3 * 3600.0  # b0: a0/b0 is the rate of a patient never seen to change
    full_scan_interval_s: float = 86_400.0
    date_overlap_s: float = 86_400.0
    units_per_patient: int = 1  # the pooled rate is shared by this many units

    def __post_init__(self) -> None:
        if not 0 < self.min_interval_s <= self.max_staleness_s:
            raise ValueError("need 0 < min_interval_s <= max_staleness_s")
        if self.half_life_s <= 0 or self.prior_changes <= 0 or self.prior_exposure_s <= 0:
            raise ValueError("half_life_s, prior_changes and prior_exposure_s must be > 0")

    @classmethod
    def from_config(cls, source: SourceConfig, units_per_patient: int) -> Policy:
        return cls(
            mode=source.schedule,
            min_interval_s=source.min_interval_s,
            max_staleness_s=source.max_staleness_s,
            half_life_s=source.change_rate_half_life_s,
            full_scan_interval_s=source.full_scan_interval_s,
            date_overlap_s=source.date_window_overlap_s,
            units_per_patient=units_per_patient,
        )

    def decay(self, elapsed_s: float) -> float:
        return math.exp(-_LN2 * max(0.0, elapsed_s) / self.half_life_s)

    def exposure(self, tracked_s: float) -> float:
        """Decayed time a patient tracked for `tracked_s` has been exposed to change (saturates at
        half_life / ln 2)."""
        return self.half_life_s / _LN2 * (1.0 - self.decay(tracked_s))


@dataclass(frozen=True)
class UnitState:
    """What the schedule keeps per unit (times in Unix seconds)."""

    due: float
    added: float  # when the unit joined the schedule: the start of its exposure
    scanned: float | None = None  # last completed scan
    full: float | None = None  # last scan without a date window
    weight: float = 1.0  # the weight its current due time was computed with
    cost: float = 1.0  # expected requests of one scan (pages)
    changes: float = 0.0  # decayed count of scans that found a change, as of `changes_at`
    changes_at: float = 0.0

    def changes_now(self, policy: Policy, now: float) -> float:
        return self.changes * policy.decay(now - self.changes_at)

    def ready(self, policy: Policy) -> float:
        """The earliest moment the unit may be scanned again (the minimum interval)."""
        return -math.inf if self.scanned is None else self.scanned + policy.min_interval_s

    @property
    def stale_since(self) -> float:
        return self.added if self.scanned is None else self.scanned


@dataclass(frozen=True)
class PatientState:
    """What the schedule keeps per roster patient: its changes pooled over all its units."""

    added: float
    changes: float = 0.0
    changes_at: float = 0.0

    def changes_now(self, policy: Policy, now: float) -> float:
        return self.changes * policy.decay(now - self.changes_at)


@dataclass(frozen=True)
class ScanOutcome:
    """What one scan of a unit found. `changed`: a created or updated resource (a unit's first scan
    is the baseline and is not counted as a change); `requests`: requests it took (pages)."""

    changed: bool
    requests: int = 1
    full: bool = True
    failed: bool = False


@dataclass(frozen=True)
class Scale:
    """The global scale U: a unit of weight w is due U / w after its scan."""

    u: float
    overcommitted: bool  # the budget cannot even scan every unit once per max staleness


def new_unit(policy: Policy, now: float) -> UnitState:
    """A unit that just joined the schedule: due now, weighted by the prior (a new patient's rate)."""
    unit = UnitState(due=now, added=now, changes_at=now)
    return replace(unit, weight=weight(policy, unit, prior_rate(policy), now))


def prior_rate(policy: Policy) -> float:
    return policy.prior_changes / policy.prior_exposure_s


def patient_rate(policy: Policy, patient: PatientState, now: float) -> float:
    """λ̂ of a patient in changes/s, pooled over its units."""
    return (policy.prior_changes + patient.changes_now(policy, now)) / (
        policy.prior_exposure_s + policy.exposure(now - patient.added)
    )


def unit_rate(policy: Policy, unit: UnitState, pooled: float, now: float) -> float:
    """λ̂ of one unit: half its patient's pooled rate shared by the patient's units, half its own."""
    n = max(1, policy.units_per_patient)
    own = (policy.prior_changes / n + unit.changes_now(policy, now)) / (
        policy.prior_exposure_s + policy.exposure(now - unit.added)
    )
    return POOLED_SHARE * pooled / n + (1.0 - POOLED_SHARE) * own


def weight(policy: Policy, unit: UnitState, pooled: float, now: float) -> float:
    """w = √(λ̂ / k) (1 in uniform mode): how often this unit deserves a scan, per unit of scale."""
    if policy.mode == "uniform":
        return 1.0
    return math.sqrt(unit_rate(policy, unit, pooled, now) / max(unit.cost, 1.0))


def scale(policy: Policy, load: float, cost: float, budget_rate: float) -> Scale:
    """U from the totals over all units: `load` = Σ k_j w_j, `cost` = Σ k_j, `budget_rate` = B.

    The floor Σ k_j / max_staleness is set aside first, so the demanded rate Σ k_j max(w_j / U,
    1 / max_staleness) stays within B."""
    floor = cost / policy.max_staleness_s
    adaptive = budget_rate - floor
    overcommitted = adaptive < _MIN_ADAPTIVE_SHARE * budget_rate
    adaptive = max(adaptive, _MIN_ADAPTIVE_SHARE * budget_rate)
    return Scale(load / adaptive if load > 0 else policy.min_interval_s, overcommitted)


def interval(policy: Policy, w: float, u: float) -> float:
    return min(policy.max_staleness_s, max(policy.min_interval_s, u / w))


def counts_as_change(unit: UnitState, outcome: ScanOutcome) -> bool:
    """Whether a scan's outcome is a change for the estimate (a unit's first scan is its baseline)."""
    return outcome.changed and not outcome.failed and unit.scanned is not None


def with_change(policy: Policy, patient: PatientState, now: float) -> PatientState:
    """The patient once one of its units was seen to change at `now`."""
    return PatientState(patient.added, patient.changes_now(policy, now) + 1.0, now)


def after_scan(
    policy: Policy, unit: UnitState, outcome: ScanOutcome, pooled: float, u: float, now: float
) -> UnitState:
    """The unit once a scan of it ended at `now`; `pooled` is its patient's rate including this scan."""
    if outcome.failed:  # nothing learnt: try again after the minimum interval
        return replace(unit, due=now + policy.min_interval_s)
    changes = unit.changes_now(policy, now) + (1.0 if counts_as_change(unit, outcome) else 0.0)
    cost = (1 - _COST_SMOOTHING) * unit.cost + _COST_SMOOTHING * max(1, outcome.requests)
    scanned = UnitState(
        unit.due, unit.added, now, now if outcome.full else unit.full, unit.weight, cost, changes, now
    )
    w = weight(policy, scanned, pooled, now)
    return replace(scanned, weight=w, due=now + interval(policy, w, u))


def pulled_in(policy: Policy, sibling: UnitState, pooled: float, u: float, now: float) -> UnitState | None:
    """A sibling of a unit that just found a change: due sooner if its patient is now hotter than its
    due time assumed (an episode touches several resources), else None (left as it is)."""
    if policy.mode == "uniform" or sibling.scanned is None:
        return None
    w = weight(policy, sibling, pooled, now)
    if w <= sibling.weight * 1.25:
        return None
    due = max(sibling.scanned + interval(policy, w, u), sibling.ready(policy), now)
    if due >= sibling.due:
        return None
    return replace(sibling, weight=w, due=due)


def date_window(policy: Policy, unit: UnitState, windowed: bool, now: float) -> float | None:
    """The `date` lower bound of the unit's next scan (Unix seconds), or None for a full scan: the
    first scan, a resource without `date`, or when the last full scan is older than the full-scan
    interval (the scan that catches edits to older data)."""
    if not windowed or unit.scanned is None or unit.full is None:
        return None
    if now - unit.full >= policy.full_scan_interval_s:
        return None
    return unit.scanned - policy.date_overlap_s
