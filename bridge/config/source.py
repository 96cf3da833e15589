"""Source-side tuning of one connection (``"source": {...}`` in its config); every field has a default."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The Observation categories Epic documents; Epic needs one (or a code) on every Observation search.
# The scan schedule (bridge/source/schedule) is built but the poll loop does not consult it yet.
NOT_USED_YET = "(the scan schedule, not used by the poll loop yet) "

EPIC_OBSERVATION_CATEGORIES = (
    "vital-signs",
    "laboratory",
    "social-history",
    "core-characteristics",
    "survey",
    "sdoh",
    "imaging",
)


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    page_size: int = Field(
        default=200, ge=1, le=999, description="_count sent on searches (only where the server lists _count)"
    )
    batch_max_resources: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="resources per Kafka transaction at most; bounds memory and the redo after a crash",
    )
    batch_max_seconds: float = Field(
        default=5.0, gt=0, description="commit a batch at least this often while a cycle runs"
    )
    last_updated_overlap_s: float = Field(
        default=300.0,
        ge=0,
        description="a _lastUpdated cursor re-reads this much before the last cycle's start (clock skew, "
        "late commits on the server); what was already seen is recognised by fingerprint and skipped",
    )
    date_window_days: float | None = Field(
        default=None,
        gt=0,
        description="incremental per-patient scans only ask for resources whose `date` is in the last N "
        "days (where the resource supports `date`); None scans everything every cycle",
    )
    full_scan_interval_s: float = Field(
        default=86_400.0,
        gt=0,
        description="with a date window: scan without it this often, to catch changes to older resources",
    )
    patient_retries: int = Field(
        default=2, ge=0, le=10, description="extra passes over patients that failed, at the end of a cycle"
    )
    patient_retry_delay_s: float = Field(
        default=2.0, ge=0, description="first delay before such a pass; doubles on each pass"
    )
    max_lagging_patients: int = Field(
        default=10_000,
        ge=0,
        description="patients whose failed scan keeps their own older _lastUpdated bound for the next "
        "cycle; beyond this many, the whole cycle keeps the older bound",
    )
    schedule: Literal["adaptive", "uniform"] = Field(
        default="adaptive",
        description=NOT_USED_YET
        + "per-patient scans: `adaptive` revisits each (patient, resource, category) at a rate "
        "set by how often its patient was seen to change (square-root rule); `uniform` visits all in turn",
    )
    min_interval_s: float = Field(
        default=60.0,
        ge=1,
        description=NOT_USED_YET + "a unit (patient x resource x category) is never scanned more often",
    )
    max_staleness_s: float = Field(
        default=86_400.0,
        gt=0,
        description=NOT_USED_YET
        + "every unit is scanned at least this often, however quiet (the budget must allow it: "
        "see docs/source.md)",
    )
    change_rate_half_life_s: float = Field(
        default=21_600.0,
        gt=0,
        description=NOT_USED_YET
        + "half-life of the change history behind a patient's rate: how fast a patient who "
        "stopped changing (a discharge) goes back to being scanned like a quiet one",
    )
    incremental_scans: bool = Field(
        default=True,
        description=NOT_USED_YET
        + "scheduled scans ask only for resources whose `date` is recent (where the resource "
        "supports `date`), with a full scan of each unit every full_scan_interval_s",
    )
    date_window_overlap_s: float = Field(
        default=86_400.0,
        ge=0,
        description=NOT_USED_YET
        + "an incremental scan asks for `date` from the unit's previous scan minus this (data "
        "recorded late, clock skew)",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_interval_s > self.max_staleness_s:
            raise ValueError("min_interval_s must not exceed max_staleness_s")
        return self
