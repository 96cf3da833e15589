"""Start-up configuration of one simulator instance."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

Profile = Literal["epic", "generic"]

FHIR_PREFIX = "/interconnect-fhir-oauth/api/FHIR/R4"
STU3_PREFIX = "/interconnect-fhir-oauth/api/FHIR/STU3"
TOKEN_PATH = "/interconnect-fhir-oauth/oauth2/token"  # noqa: S105 (a path, not a secret)
AUTHORIZE_PATH = "/interconnect-fhir-oauth/oauth2/authorize"
EPIC_PATH_PREFIX = "/interconnect-fhir-oauth/"


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 8070
    profile: Profile = "epic"
    patients: int = 20
    seed: int = 0
    # None: a temporary file removed when the app shuts down; ":memory:" is accepted too.
    db_path: str | None = None
    activity_rate: float = 0.0
    token_lifetime_s: int = 3600
    clients: list[dict[str, Any]] = field(default_factory=list)
    # Initial fault rules, same shape as the body of PUT /admin/faults.
    faults: list[dict[str, Any]] = field(default_factory=list)
    # Share of search pages served short (post-filtered); None = 0.15 for epic, 0 for generic.
    short_page_rate: float | None = None
    # Share of 200 search bundles carrying a 59204 warning OperationOutcome entry.
    warning_rate: float = 0.0
    # Partial answers for chosen clients/resource types (epic_sim.partial.PartialRule fields).
    partial_answers: list[dict[str, Any]] = field(default_factory=list)
    # Resource types whose creates keep only identifiers of Epic's own systems (urn:oid:1.2.840.114350...).
    drop_unknown_identifiers: list[str] = field(default_factory=list)
    # Seeded clinical dates are spread around this day (keeps the data set deterministic).
    anchor_date: str = "2026-06-01"
    # Base URL used in links and for the OAuth audience; defaults to http://host:port.
    public_url: str | None = None
    # Seconds the server's clock runs ahead (negative: behind) of real time: drives the OAuth time checks
    # and the Date header, to exercise clients' clock-skew handling.
    clock_offset_s: float = 0.0
    max_sessions: int = 20_000
    request_log_size: int = 100_000

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}{FHIR_PREFIX}/"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}{TOKEN_PATH}"

    @property
    def authorize_url(self) -> str:
        return f"{self.base_url}{AUTHORIZE_PATH}"

    def clock(self) -> float:
        return time.time() + self.clock_offset_s

    @property
    def effective_short_page_rate(self) -> float:
        if self.short_page_rate is not None:
            return self.short_page_rate
        return 0.15 if self.profile == "epic" else 0.0
