"""How one resource type is polled, decided from the server's CapabilityStatement and the config.

The server silently ignores parameters it does not support (Epic does), so a plan only ever holds
parameters the CapabilityStatement lists; what cannot be planned that way is refused up front with a
reason instead of being sent and quietly returning the wrong data.

* ``unanchored``: ``Type?_lastUpdated=ge<since>`` across the whole server (generic FHIR servers);
* ``per-patient``: one search per roster patient (``patient=<id>``, Patient itself by ``_id``), one
  per category where the server needs one (Epic Observation), with ``_lastUpdated`` where supported
  and an optional ``date`` window;
* ``read``: Patient read by id per roster patient, when ``_id`` search is not listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bridge.config.models import ConnectionConfig, ResourceConfig
from bridge.config.source import EPIC_OBSERVATION_CATEGORIES
from bridge.errors import BridgeError
from bridge.fhir.capabilities import Capabilities, Profile

Mode = Literal["unanchored", "per-patient", "read"]
Param = tuple[str, str]


class PlanError(BridgeError):
    """The server cannot be polled for this resource without sending unsupported parameters."""


@dataclass(frozen=True)
class PollPlan:
    resource_type: str
    task: str  # lowercase resource type: the cursor's task name and the transactional.id part
    mode: Mode
    # one search per variant (per patient in per-patient mode), e.g. one per Observation category
    variants: tuple[tuple[Param, ...], ...]
    patient_param: str | None  # "patient" or "_id" (per-patient); None otherwise
    last_updated: bool  # send _lastUpdated=ge<bound>
    date_window: bool  # may send date=ge<day> on incremental cycles
    count: int | None  # _count to send, None where not listed

    @property
    def uses_roster(self) -> bool:
        return self.mode != "unanchored"

    def params(
        self, variant: Sequence[Param], patient: str | None, since: str | None, date_from: str | None
    ) -> list[Param]:
        """The query of one search; every name in it was checked against the CapabilityStatement."""
        out: list[Param] = []
        if patient is not None and self.patient_param is not None:
            out.append((self.patient_param, patient))
        out.extend(variant)
        if since is not None and self.last_updated:
            out.append(("_lastUpdated", f"ge{since}"))
        if date_from is not None and self.date_window:
            out.append(("date", f"ge{date_from}"))
        if self.count is not None:
            out.append(("_count", str(self.count)))
        return out


def _supports(caps: Capabilities, rtype: str, param: str) -> bool:
    return caps.supports_search_param(rtype, param)


def _categories(rtype: str, rcfg: ResourceConfig, profile: Profile) -> list[str]:
    if rcfg.categories:
        return list(rcfg.categories)
    if rtype == "Observation" and profile == "epic":
        return list(EPIC_OBSERVATION_CATEGORIES)
    return []


def plan_resource(cfg: ConnectionConfig, caps: Capabilities, rtype: str) -> PollPlan:
    rcfg = cfg.resources[rtype]  # type: ignore[index]
    profile = caps.profile(cfg.server_profile)
    task = rtype.lower()
    if not caps.supports_resource(rtype):
        raise PlanError(f"{rtype}: the server's CapabilityStatement does not list this resource")
    count = cfg.source.page_size if _supports(caps, rtype, "_count") else None
    can_search = caps.supports_search(rtype)
    last_updated = can_search and _supports(caps, rtype, "_lastUpdated")
    date_window = cfg.source.date_window_days is not None and _supports(caps, rtype, "date")

    categories = _categories(rtype, rcfg, profile)
    if categories and not _supports(caps, rtype, "category"):
        raise PlanError(f"{rtype}: categories are configured but the server does not list `category`")

    # Generic servers: one unanchored _lastUpdated search covers everything that changed.
    if profile == "generic" and last_updated:
        variant: tuple[Param, ...] = (("category", ",".join(categories)),) if categories else ()
        return PollPlan(rtype, task, "unanchored", (variant,), None, True, False, count)

    if rtype == "Patient":
        # Epic forbids unanchored Patient searches: read each roster patient by _id.
        if can_search and _supports(caps, rtype, "_id"):
            return PollPlan(rtype, task, "per-patient", ((),), "_id", False, False, count)
        if caps.supports_read(rtype):
            return PollPlan(rtype, task, "read", ((),), None, False, False, None)
        raise PlanError("Patient: the server supports neither read nor search by _id")

    if not can_search:
        raise PlanError(f"{rtype}: the server does not support search on it")
    anchor = next((p for p in ("patient", "subject") if _supports(caps, rtype, p)), None)
    if anchor is None:
        raise PlanError(f"{rtype}: the server lists neither `patient` nor `subject` to search by patient")
    if rtype == "Observation" and profile == "epic" and not categories:
        raise PlanError("Observation: Epic needs a category on every search; configure categories")
    variants = tuple((("category", c),) for c in categories) if categories else ((),)
    return PollPlan(rtype, task, "per-patient", variants, anchor, last_updated, date_window, count)
