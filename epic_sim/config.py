"""Start-up configuration of one simulator instance."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

Profile = Literal["epic", "generic"]
ActivityModel = Literal["rate", "episodes"]

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
    # "rate": random changes at activity_rate; "episodes": inpatients, visits and a background trickle
    # (epic_sim/episodes), logged to the ground truth and optionally fed as HL7v2.
    activity_model: ActivityModel = "rate"
    # Episodes model: every rate times this factor (60 = an hour of activity per minute); 0 = paused.
    activity_speed: float = 1.0
    # Episodes model: JSON-lines file receiving one line per change (and per HL7 outcome).
    ground_truth_path: str | None = None
    ground_truth_keep: int = 200_000  # records kept in memory for GET /admin/ground-truth
    # Episodes model: "host:port" of an MLLP listener receiving the HL7v2 feed; None = no feed.
    hl7_target: str | None = None
    hl7_share: float = 1.0  # share of changes that get a message
    hl7_delay_s: tuple[float, float] = (1.0, 3.0)  # uniform delay between a change and its message
    hl7_queue_size: int = 10_000  # messages waiting at most; the oldest is dropped beyond
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

    def __post_init__(self) -> None:
        problems = episode_option_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

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


def episode_option_problems(config: SimConfig) -> list[str]:
    """Contradictory or out-of-range activity settings, as messages naming the option."""
    problems = []
    episodes = config.activity_model == "episodes"
    if config.activity_model not in ("rate", "episodes"):
        problems.append(f"activity_model must be 'rate' or 'episodes', not {config.activity_model!r}")
    if episodes and config.activity_rate:
        problems.append("activity_rate drives the rate model; the episodes model is set by activity_speed")
    if not episodes:
        for name in ("ground_truth_path", "hl7_target"):
            if getattr(config, name) is not None:
                problems.append(f"{name} needs activity_model 'episodes'")
    if config.activity_speed < 0:
        problems.append("activity_speed must be >= 0")
    if not 0 <= config.hl7_share <= 1:
        problems.append("hl7_share must be between 0 and 1")
    low, high = config.hl7_delay_s
    if not 0 <= low <= high:
        problems.append("hl7_delay_s must be (low, high) with 0 <= low <= high")
    if config.hl7_queue_size < 1:
        problems.append("hl7_queue_size must be >= 1")
    if config.hl7_target is not None:
        host, _, port = config.hl7_target.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"hl7_target must be host:port, not {config.hl7_target!r}")
    return problems
