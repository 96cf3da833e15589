"""Which search parameters each profile supports, Epic's required combinations, and the SQL plan.

Epic: patient-anchored searches, unsupported parameters silently ignored (reported in an
informational OperationOutcome entry, code 59100), `_lastUpdated` only on DocumentReference,
no `_sort`, `_count` 1-999. Generic: plain FHIR, patient optional, `_lastUpdated`/`_sort` everywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from epic_sim import outcomes
from epic_sim.config import Profile
from epic_sim.timefmt import date_range

SEARCHABLE_TYPES = ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference")

# parameter -> FHIR search type (for the CapabilityStatement)
PARAM_TYPES = {
    "_id": "token",
    "identifier": "token",
    "family": "string",
    "given": "string",
    "birthdate": "date",
    "gender": "token",
    "telecom": "token",
    "phone": "token",
    "email": "token",
    "patient": "reference",
    "subject": "reference",
    "category": "token",
    "code": "token",
    "date": "date",
    "status": "token",
    "_lastUpdated": "date",
    "_count": "number",
    "_sort": "string",
}

EPIC_PARAMS: dict[str, tuple[str, ...]] = {
    "Patient": (
        "_id",
        "identifier",
        "family",
        "given",
        "birthdate",
        "gender",
        "telecom",
        "phone",
        "email",
        "_count",
    ),
    "Observation": ("patient", "subject", "category", "code", "date", "_count"),
    "Encounter": ("patient", "subject", "date", "identifier", "_count"),
    "Appointment": ("patient", "date", "identifier", "status", "_count"),
    "DocumentReference": ("patient", "subject", "category", "date", "_lastUpdated", "_count"),
}

GENERIC_PARAMS: dict[str, tuple[str, ...]] = {
    rtype: tuple(dict.fromkeys((*params, "_id", "status", "_lastUpdated", "_sort")))
    for rtype, params in EPIC_PARAMS.items()
}

# `_sort` keys accepted by the generic profile -> column
SORT_COLUMNS = {
    "_id": "id",
    "_lastUpdated": "last_updated",
    "date": "date",
    "birthdate": "birthdate",
    "family": "family",
    "status": "status",
}

# Parameters that never count as search filters.
CONTROL_PARAMS = frozenset({"sessionID", "_getpages"})

EPIC_MAX_COUNT = 999
PAGE_LIMIT = 1000
GENERIC_DEFAULT_COUNT = 100


def supported_params(profile: Profile, rtype: str) -> tuple[str, ...]:
    table = EPIC_PARAMS if profile == "epic" else GENERIC_PARAMS
    return table.get(rtype, ())


@dataclass
class SearchPlan:
    rtype: str
    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (column, descending)
    page_size: int = PAGE_LIMIT
    count_given: bool = False
    informational: list[dict[str, Any]] = field(default_factory=list)
    key: str = ""

    def digest(self) -> bytes:
        return hashlib.blake2b(self.key.encode(), digest_size=16).digest()


class SearchError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _bad(text: str, *, epic_code: str | None = None, code: str = "required") -> SearchError:
    return SearchError(400, outcomes.error(code, text, epic_code=epic_code))


def _split_token(value: str) -> tuple[str | None, str]:
    if "|" in value:
        system, code = value.split("|", 1)
        return (system or None), code
    return None, value


def _add_date(plan: SearchPlan, column: str, values: list[str], name: str) -> None:
    for raw in values:
        prefix, value = ("eq", raw)
        if raw[:2] in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"):
            prefix, value = raw[:2], raw[2:]
        bounds = date_range(value)
        if bounds is None:
            raise _bad(f"Invalid date value for {name}: {raw}", code="invalid")
        low, high = bounds
        if prefix == "eq":
            plan.where.append(f"{column} >= ? AND {column} < ?")
            plan.params += [low, high]
        elif prefix == "ne":
            plan.where.append(f"NOT ({column} >= ? AND {column} < ?)")
            plan.params += [low, high]
        elif prefix in ("ge",):
            plan.where.append(f"{column} >= ?")
            plan.params.append(low)
        elif prefix in ("gt", "sa"):
            plan.where.append(f"{column} >= ?")
            plan.params.append(high)
        elif prefix == "le":
            plan.where.append(f"{column} < ?")
            plan.params.append(high)
        else:  # lt, eb
            plan.where.append(f"{column} < ?")
            plan.params.append(low)


def _add_in(plan: SearchPlan, column: str, values: list[str]) -> None:
    for raw in values:
        options = [_split_token(v)[1] for v in raw.split(",") if v]
        plan.where.append(f"{column} IN ({','.join('?' * len(options))})")
        plan.params += options


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _add_filter(plan: SearchPlan, name: str, values: list[str]) -> None:
    rtype = plan.rtype
    if name in ("patient", "subject"):
        for raw in values:
            plan.where.append("patient = ?")
            plan.params.append(raw.rsplit("/", 1)[-1])
    elif name == "_id":
        _add_in(plan, "id", values)
    elif name == "identifier":
        for raw in values:
            system, value = _split_token(raw)
            sub = "SELECT seq FROM idents WHERE type=? AND value=?"
            args: list[Any] = [rtype, value]
            if system:
                sub += " AND system=?"
                args.append(system)
            plan.where.append(f"seq IN ({sub})")
            plan.params += args
    elif name in ("category", "status", "gender"):
        _add_in(plan, name, values)
    elif name == "code":
        for raw in values:
            parts = []
            for option in raw.split(","):
                system, code = _split_token(option)
                if system:
                    parts.append("(code = ? AND code_system = ?)")
                    plan.params += [code, system]
                else:
                    parts.append("code = ?")
                    plan.params.append(code)
            plan.where.append("(" + " OR ".join(parts) + ")")
    elif name == "date":
        _add_date(plan, "date", values, name)
    elif name == "birthdate":
        _add_date(plan, "birthdate", values, name)
    elif name == "_lastUpdated":
        _add_date(plan, "last_updated", values, name)
    elif name == "family":
        for raw in values:  # fuzzy: case-insensitive prefix (a range, so the index serves it)
            plan.where.append("family >= ? AND family < ?")
            low = raw.lower()
            plan.params += [low, low + "\uffff"]
    elif name == "given":
        for raw in values:  # fuzzy: case-insensitive prefix of any given name
            plan.where.append("(' ' || given) LIKE ? ESCAPE '\\'")
            plan.params.append(f"% {_like_escape(raw.lower())}%")
    elif name in ("telecom", "phone", "email"):
        for raw in values:
            _, value = _split_token(raw)
            value = value.lower()
            if name == "phone" or (name == "telecom" and "@" not in value):
                value = "".join(ch for ch in value if ch.isdigit())
            plan.where.append("telecom LIKE ? ESCAPE '\\'")
            plan.params.append(f"%|{_like_escape(value)}|%")


def _ignored(name: str, rtype: str) -> dict[str, Any]:
    return outcomes.issue(
        "information",
        "processing",
        f"The search parameter {name} is not supported on {rtype} and was ignored.",
        epic_code=outcomes.PARAM_IGNORED,
        diagnostics=name,
    )


def _check_epic_requirements(rtype: str, present: set[str]) -> None:
    if rtype == "Patient":
        has_contact = bool(present & {"telecom", "phone", "email"})
        if not (
            "_id" in present
            or "identifier" in present
            or {"given", "family", "birthdate"} <= present
            or ({"given", "family", "gender"} <= present and has_contact)
        ):
            raise _bad(
                "Patient search requires _id, identifier, given+family+birthdate, "
                "or given+family+gender+phone/email.",
                epic_code=outcomes.NEEDS_DEMOGRAPHICS,
            )
        return
    if not present & {"patient", "subject"}:
        raise _bad(f"A patient is required to search {rtype} (patient or subject parameter).")
    if rtype == "Observation" and not present & {"category", "code"}:
        raise _bad("Must have either code or category")


def build_plan(
    profile: Profile, rtype: str, query: list[tuple[str, str]], *, strict: bool = False
) -> SearchPlan:
    """Turn the received query parameters into a plan, or raise SearchError."""
    plan = SearchPlan(rtype)
    supported = set(supported_params(profile, rtype))
    grouped: dict[str, list[str]] = {}
    for name, value in query:
        if name in CONTROL_PARAMS:
            continue
        if name not in supported:
            if strict:
                raise _bad(f"Unknown search parameter {name} for {rtype}", code="not-supported")
            if profile == "epic" and not any(i.get("diagnostics") == name for i in plan.informational):
                plan.informational.append(_ignored(name, rtype))
            continue
        grouped.setdefault(name, []).append(value)

    counts = grouped.pop("_count", None)
    if counts:
        limit = EPIC_MAX_COUNT if profile == "epic" else PAGE_LIMIT
        try:
            count = int(counts[-1])
        except ValueError:
            count = 0
        if 1 <= count <= limit:
            plan.page_size, plan.count_given = count, True
        elif profile == "epic":
            plan.informational.append(_ignored("_count", rtype))
        else:
            raise _bad(f"_count must be between 1 and {limit}", code="invalid")
    elif profile == "generic":
        plan.page_size = GENERIC_DEFAULT_COUNT

    for sort_value in grouped.pop("_sort", []):
        for key in sort_value.split(","):
            desc = key.startswith("-")
            column = SORT_COLUMNS.get(key.lstrip("-"))
            if column is None:
                raise _bad(f"Unsupported _sort key {key}", code="not-supported")
            plan.sort.append((column, desc))

    present = {n for n, v in grouped.items() if any(x != "" for x in v)}
    if profile == "epic":
        _check_epic_requirements(rtype, present)
    for name, values in grouped.items():
        values = [v for v in values if v != ""]
        if values:
            _add_filter(plan, name, values)
    plan.key = "&".join(f"{n}={v}" for n, vs in sorted(grouped.items()) for v in vs) + f"#{plan.page_size}"
    plan.key = f"{rtype}?{plan.key}"
    return plan
