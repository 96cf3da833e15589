"""When which patient changes: the episode model's timetable, in simulated seconds, from a seed alone.

The model is fixed (benchmarks compare scheduling policies on it, so it must not be tuned to one):
- inpatients: INPATIENT_SHARE of the roster (at least one patient), each changing every INPATIENT_MEAN_S
  on average, all day; an inpatient's first change is the admission;
- outpatient visits: every other patient about once per VISIT_MEAN_S, a visit being the VISIT_STEPS
  spread over VISIT_SPAN_S;
- a background trickle: every patient about once per BACKGROUND_MEAN_S (demographics, amendments).

All three are Poisson processes. Independent per-patient processes of equal rate add up to one process
of the summed rate whose events fall on a uniformly drawn patient, so the heap holds three arrival
times plus the remaining steps of the visits in progress: neither its size nor the work per event
grows with the roster, and nothing runs between events.

Every draw comes from one generator in the order events are taken, so a seed fixes the whole sequence
(patients, actions, times) whatever the speed at which it is played.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Literal

Source = Literal["inpatient", "visit", "background"]

INPATIENT_SHARE = 0.03
INPATIENT_MEAN_S = 30 * 60.0
VISIT_MEAN_S = 60 * 86400.0
VISIT_SPAN_S = 3600.0
BACKGROUND_MEAN_S = 200 * 86400.0

VISIT_STEPS = (
    "appointment-arrive",
    "encounter-start",
    "vitals",
    "note",
    "encounter-finish",
    "appointment-fulfil",
)
# Relative weights of the actions after an inpatient's admission, and of the background changes.
INPATIENT_ACTIONS = {"vitals": 40, "lab": 25, "note": 15, "note-amend": 10, "encounter-update": 10}
BACKGROUND_ACTIONS = {"demographics": 50, "lab-amend": 30, "note-amend": 20}


@dataclass(frozen=True)
class Planned:
    """One change to make: `t` simulated seconds after the start, to roster patient `patient`."""

    t: float
    source: Source
    patient: int
    episode: str
    step: int  # 0 = the first change of the episode
    action: str


@dataclass
class _Stay:
    changes: int = 0
    notes: int = 0


def inpatient_count(roster_size: int) -> int:
    if roster_size <= 0:
        return 0
    return max(1, round(roster_size * INPATIENT_SHARE))


@dataclass
class Timetable:
    roster_size: int
    seed: int
    inpatients: tuple[int, ...] = field(init=False)
    _inpatient_set: frozenset[int] = field(init=False)
    _rng: random.Random = field(init=False)
    _heap: list[tuple[float, int, Source | None, Planned | None]] = field(init=False, default_factory=list)
    _order: int = field(init=False, default=0)
    _stays: dict[int, _Stay] = field(init=False, default_factory=dict)
    _counts: dict[Source, int] = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"{self.seed}:episodes")
        chosen = self._rng.sample(range(self.roster_size), inpatient_count(self.roster_size))
        self.inpatients = tuple(sorted(chosen))
        self._inpatient_set = frozenset(self.inpatients)
        self._counts = {"inpatient": 0, "visit": 0, "background": 0}
        for source in ("inpatient", "visit", "background"):
            self._arrive_after(0.0, source)

    # --- reading ----------------------------------------------------------------------------------
    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pending(self) -> int:
        """Heap entries: the arrival processes plus the remaining steps of visits in progress."""
        return len(self._heap)

    def is_inpatient(self, patient: int) -> bool:
        return patient in self._inpatient_set

    # --- taking events ----------------------------------------------------------------------------
    def pop(self) -> Planned:
        """The next change in time order (raises IndexError for an empty roster)."""
        t, _, source, planned = heapq.heappop(self._heap)
        if planned is not None:
            return planned
        assert source is not None
        self._arrive_after(t, source)
        if source == "inpatient":
            return self._inpatient_change(t)
        if source == "visit":
            return self._visit(t)
        return self._background_change(t)

    def _push(self, t: float, source: Source | None, planned: Planned | None) -> None:
        self._order += 1
        heapq.heappush(self._heap, (t, self._order, source, planned))

    def _rate(self, source: Source) -> float:
        inpatients = len(self.inpatients)
        if source == "inpatient":
            return inpatients / INPATIENT_MEAN_S
        if source == "visit":
            return (self.roster_size - inpatients) / VISIT_MEAN_S
        return self.roster_size / BACKGROUND_MEAN_S

    def _arrive_after(self, t: float, source: Source) -> None:
        rate = self._rate(source)
        if rate > 0:
            self._push(t + self._rng.expovariate(rate), source, None)

    def _next_episode(self, source: Source) -> str:
        self._counts[source] += 1
        return f"{source}-{self._counts[source]}"

    def _inpatient_change(self, t: float) -> Planned:
        patient = self._rng.choice(self.inpatients)
        stay = self._stays.setdefault(patient, _Stay())
        if stay.changes == 0:
            action = "admit"
        else:
            action = self._choose(INPATIENT_ACTIONS)
            if action == "note-amend" and stay.notes == 0:
                action = "note"
        if action == "note":
            stay.notes += 1
        planned = Planned(t, "inpatient", patient, f"inpatient-{patient}", stay.changes, action)
        stay.changes += 1
        return planned

    def _visit(self, t: float) -> Planned:
        while True:  # inpatients have no outpatient visits; 97 % of draws hit on the first try
            patient = self._rng.randrange(self.roster_size)
            if patient not in self._inpatient_set:
                break
        episode = self._next_episode("visit")
        offsets = [0.0, *sorted(self._rng.uniform(0, VISIT_SPAN_S) for _ in VISIT_STEPS[1:])]
        steps = [
            Planned(t + offset, "visit", patient, episode, step, action)
            for step, (offset, action) in enumerate(zip(offsets, VISIT_STEPS, strict=True))
        ]
        for later in steps[1:]:
            self._push(later.t, None, later)
        return steps[0]

    def _background_change(self, t: float) -> Planned:
        patient = self._rng.randrange(self.roster_size)
        action = self._choose(BACKGROUND_ACTIONS)
        return Planned(t, "background", patient, self._next_episode("background"), 0, action)

    def _choose(self, weighted: dict[str, int]) -> str:
        return self._rng.choices(list(weighted), weights=list(weighted.values()))[0]
