"""The units of a connection's schedule: one per search the per-patient plans make for a patient."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bridge.config.source import SourceConfig
from bridge.fhir.capabilities import Capabilities
from bridge.source.plan import Param, PollPlan
from bridge.source.schedule.codec import UnitKind


@dataclass(frozen=True)
class UnitSearch:
    """How to scan one kind of unit: its plan and the variant's parameters (e.g. its category)."""

    plan: PollPlan
    variant: tuple[Param, ...]
    windowed: bool  # incremental scans send `date=ge...` (the server lists `date` for the resource)


def variant_name(variant: tuple[Param, ...]) -> str:
    return ",".join(value for _, value in variant)


def unit_searches(
    plans: Iterable[PollPlan], caps: Capabilities, source: SourceConfig
) -> dict[UnitKind, UnitSearch]:
    """The units per patient of the per-patient plans (unanchored plans need no schedule)."""
    out: dict[UnitKind, UnitSearch] = {}
    for plan in plans:
        if not plan.uses_roster:
            continue
        windowed = (
            source.incremental_scans
            and plan.mode == "per-patient"
            and caps.supports_search_param(plan.resource_type, "date")
        )
        for variant in plan.variants:
            out[UnitKind(plan.resource_type, variant_name(variant))] = UnitSearch(plan, variant, windowed)
    return out
